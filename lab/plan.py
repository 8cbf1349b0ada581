"""Turns a topology into what each node must run: pure data, no I/O.

The plan is what `meshlab up` reconciles a lab towards: node specs, the
supervised processes of each node, and the addresses of workloads and of the
service VIPs. What each node is told about the mesh is derived from the lab's
state by `lab.mesh`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from lab.addressing import (cluster_vip, docker_node_address, docker_sidecar_address, docker_workload_address,
                            inbound_capture, node_address, service_vip, sidecar_address, sidecar_capture_ports,
                            workload_address)
from lab.errors import LabError
from lab.providers.base import NodeSpec, ProcessSpec
from lab.topology.model import Topology, Workload

RESOLVER_PORT = 15053
READY_PORT = 15021


@dataclass(frozen=True)
class WorkloadPlacement:
    workload: Workload
    node: str
    address: str
    port: int  # the workload port of its service's first port; 0 for a client
    inbound_capture: str = ""  # where plaintext callers reach it through its node's ztunnel (or its sidecar)
    sidecar: str = ""  # where its sidecar listens for its outbound traffic, in a sidecar namespace
    # transparent capture: the ports iptables sends its outbound and inbound traffic to its sidecar on
    sidecar_ports: tuple[int, int] | None = None


@dataclass
class LabPlan:
    topology: Topology
    block: str
    nodes: list[NodeSpec]
    placements: list[WorkloadPlacement]
    processes: dict[str, list[ProcessSpec]] = field(default_factory=dict)  # node -> specs
    vips: dict[str, dict[str, str]] = field(default_factory=dict)  # "name.ns" -> node -> VIP

    def node_provider(self, node: str) -> str:
        return self.topology.node(node).provider or self.topology.provider

    def placement(self, workload: str) -> WorkloadPlacement:
        return next(p for p in self.placements if p.workload.name == workload)


def _workload_port(topology: Topology, w: Workload) -> int:
    if w.service is None:
        return 0
    return topology.service(w.service, w.namespace).ports[0].workload_port


def _provider_of(topology: Topology, node: str) -> str:
    return topology.node(node).provider or topology.provider


def _transparent(topology: Topology, node: str, docker_subnet: str | None) -> bool:
    """Whether the node captures with iptables: a docker node (on its lab network), an ssh node that asks."""
    kind = _provider_of(topology, node)
    if kind == "docker":
        return bool(docker_subnet)
    from lab.capture import capture_of

    return capture_of(kind, topology.node(node).settings) == "transparent"


def place_workloads(topology: Topology, block: str, docker_subnet: str | None = None) -> list[WorkloadPlacement]:
    """Give every workload an address: on its node's /24 (local), on the lab network (docker); topology order."""
    index = {n.name: i for i, n in enumerate(topology.nodes)}
    slots: dict[str, int] = {}
    docker_slot = 0
    placements = []
    for w in topology.workloads:
        slot = slots.get(w.node, 0)
        slots[w.node] = slot + 1
        ports = None
        if docker_subnet and _provider_of(topology, w.node) == "docker":
            address = docker_workload_address(docker_subnet, docker_slot)
            sidecar = docker_sidecar_address(docker_subnet, docker_slot)
            ports = sidecar_capture_ports(slot)
            docker_slot += 1
            capture = ""  # transparent capture: iptables sends plaintext callers of its address to its proxy
        else:
            address = workload_address(block, index[w.node], slot)
            sidecar = sidecar_address(block, index[w.node], slot)
            capture = inbound_capture(block, index[w.node], slot)
            if _transparent(topology, w.node, docker_subnet):  # an ssh node: loopback addresses, iptables
                ports, capture = sidecar_capture_ports(slot), ""
        placements.append(WorkloadPlacement(w, w.node, address, _workload_port(topology, w), capture, sidecar,
                                            ports))
    return placements


def workload_env(topology: Topology, p: WorkloadPlacement, node_addr: str) -> dict[str, str]:
    """The environment contract of a workload process (docs/architecture.md)."""
    w = p.workload
    env = {
        "MESH_BIND_ADDR": p.address,
        "MESH_PORT": str(p.port),
        "MESH_RESOLVER": f"{node_addr}:{RESOLVER_PORT}",
        "MESH_NAMESPACE": w.namespace,
        "MESH_SERVICE": w.service or "",
        "MESH_APP": w.app,
        "MESH_VERSION": w.version,
        "MESH_SERVICE_ACCOUNT": w.service_account,
        "MESH_TRUST_DOMAIN": topology.trust_domain,
    }
    if p.sidecar and topology.namespace(w.namespace).mode == "sidecar":
        env["MESH_SIDECAR"] = p.sidecar  # injected: the workload starts with its sidecar
    if w.service:
        ports = topology.service(w.service, w.namespace).ports
        env["MESH_PORTS"] = ",".join(f"{sp.name}={sp.workload_port}" for sp in ports)
    env.update(w.run.env)
    return env


def workload_process(topology: Topology, p: WorkloadPlacement, node_addr: str,
                     agent: tuple[str, ...]) -> ProcessSpec:
    """The supervised process that runs one workload."""
    run = p.workload.run
    if run.demo == "loadgen":
        argv: tuple[str, ...] = (*agent, "loadgen", *run.args)
    elif run.demo is not None:
        argv = (*agent, "demo", run.demo, *run.args)
    elif isinstance(run.command, str):
        argv = ("sh", "-c", run.command)
    else:
        argv = tuple(run.command or ())
    # A bounded load generator finishes on its own: don't restart it when it does.
    restart = "on-failure" if run.demo == "loadgen" else "always"
    return ProcessSpec(
        name=p.workload.name,
        argv=argv,
        env=workload_env(topology, p, node_addr),
        restart=restart,
        ready_tcp=(p.address, p.port) if p.port else None,
        labels={"role": "workload", "namespace": p.workload.namespace, **p.workload.labels},
    )


def ztunnel_process(node: NodeSpec, control_plane: str, agent: tuple[str, ...]) -> ProcessSpec:
    """The node's ztunnel: bootstrap files are relative to the node's folder, where processes run."""
    return ProcessSpec(
        name="ztunnel",
        argv=(*agent, "ztunnel", "--node", node.name, "--address", node.address, "--cp", control_plane,
              "--token-file", "bootstrap/token", "--root-file", "bootstrap/root-cert.pem"),
        restart="always",
        ready_tcp=(node.address, READY_PORT),
        labels={"role": "ztunnel"},
    )


def ssh_node_address(node: str, settings: dict[str, Any]) -> str:
    """An ssh node's address: where other nodes reach its ztunnel (ssh.address, or ssh.host when an IP)."""
    from lab.providers.sshconn import node_address as ssh_address, parse_target

    address = ssh_address(parse_target(node, settings))  # ProvisionError naming the node and the field
    if address is None:
        raise LabError(f"node {node}: ssh.host {settings['ssh']['host']!r} is a name, not an address: set "
                            "ssh.address to the IPv4 address other nodes reach this host on")
    return address


def plan_lab(topology: Topology, block: str, lab: str,
             agent_command: Callable[[str], tuple[str, ...]], docker_subnet: str | None = None) -> LabPlan:
    """The whole plan of a lab; `agent_command(node)` says how the agent zipapp runs there.

    `docker_subnet` is the lab network of its docker nodes (lab.addressing); the provider is told it
    as the nodes' `docker: {subnet}` setting.
    """
    placements = place_workloads(topology, block, docker_subnet)
    nodes = []
    processes: dict[str, list[ProcessSpec]] = {}
    for i, n in enumerate(topology.nodes):
        settings = dict(n.settings)
        if docker_subnet and _provider_of(topology, n.name) == "docker":
            addr = docker_node_address(docker_subnet, i)
            settings["docker"] = {**(settings.get("docker") or {}), "subnet": docker_subnet}
        elif _provider_of(topology, n.name) == "ssh":
            addr = ssh_node_address(n.name, settings)
        else:
            addr = node_address(block, i)
        mine = [p for p in placements if p.node == n.name]
        # A docker node's eth0 carries its workloads' addresses and their sidecars' (bound in sidecar mode).
        extra = tuple(p.sidecar for p in mine if p.sidecar_ports and _provider_of(topology, n.name) == "docker")
        nodes.append(NodeSpec(lab=lab, name=n.name, index=i, address=addr,
                              workload_addresses=tuple(p.address for p in mine) + extra, settings=settings))
        processes[n.name] = [workload_process(topology, p, addr, agent_command(n.name)) for p in mine]
    # Explicit capture: a VIP per node (where its ztunnel listens); transparent (docker, ssh): one cluster VIP.
    vips = {f"{s.name}.{s.namespace}": {n.name: cluster_vip(k) if _transparent(topology, n.name, docker_subnet)
                                        else service_vip(block, i, k)
                                        for i, n in enumerate(topology.nodes)}
            for k, s in enumerate(topology.services)}
    return LabPlan(topology, block, nodes, placements, processes, vips)
