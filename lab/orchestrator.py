"""Lab lifecycle: `up` reconciles a lab towards its topology, `down` and `clean` remove it, `status` reads it.

`up` is idempotent, like `containerlab deploy`: a second `up` of the same lab
adopts the running nodes, starts what is missing, restarts what changed and
stops what the topology no longer has. The state folder is written before
anything is started, so `down` can always find what a lab made, and
`down`/`clean` fall back to the processes' tags when the state is gone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from lab import capture, dataplane, mesh
from lab.addressing import BlockClaim, allocate_block, block_in_use, docker_candidates, docker_gateway
from lab.ca import DEFAULT_TTL, LabCA
from lab.client import LabClient
from lab.controlplane import reach, readiness
from lab.controlplane.bootstrap import AGENT_CHANNEL_PORT, channel_addresses, node_channel_address, node_tokens
from lab.handle import Lab, load_origin
from lab.controlplane.launch import ensure_control_plane, running_pid
from lab.errors import LabError, ProvisionError
from lab.plan import RESOLVER_PORT, LabPlan, plan_lab, ztunnel_process
from lab.providers import proctags, provider_class, provider_names
from lab.providers.base import NodeInfo, NodeSpec, Provider, ProcessStatus
from lab.state import LabState, atomic_write, lab_dir, labs_dir, list_labs
from lab.topology.model import Topology
from lab.zipapp import build_agent_zipapp

Progress = Callable[[str, str], None]  # (what, message), e.g. ("node", "node-1 ready")

READY_TIMEOUT = 30.0


def _noop(what: str, message: str) -> None:
    pass


def used_blocks(except_lab: str) -> set[str]:
    """Address blocks held by the other labs under MESHLAB_HOME."""
    used = set()
    for name in list_labs():
        if name == except_lab:
            continue
        try:
            used.add(LabState(name).load()["block"])
        except (LabError, KeyError):
            continue
    return used


def used_docker_subnets(except_lab: str) -> set[str]:
    """Lab network subnets held by the other labs under MESHLAB_HOME."""
    used = set()
    for name in list_labs():
        if name == except_lab:
            continue
        try:
            used.add(LabState(name).load()["docker"]["subnet"])
        except (LabError, KeyError, TypeError):
            continue
    return used


async def docker_subnet(topology: Topology, previous: dict[str, Any] | None, lab: str) -> str | None:
    """The lab network of the lab's docker nodes (None without any): asked for, kept, or a free /24."""
    nodes = [n for n in topology.nodes if (n.provider or topology.provider) == "docker"]
    if not nodes:
        return None
    for n in nodes:
        requested = (n.settings.get("docker") or {}).get("subnet")
        if requested:
            try:
                return str(ipaddress.IPv4Network(str(requested), strict=False))
            except ValueError:
                raise LabError(f"node {n.name}: docker subnet must be an IPv4 network like 10.210.7.0/24, "
                               f"not {requested!r}") from None
    kept = ((previous or {}).get("docker") or {}).get("subnet")
    if kept:
        return str(kept)
    from lab.providers.docker import free_subnet

    return await free_subnet(docker_candidates(), used_docker_subnets(lab))


def _state_document(plan: LabPlan, source: str, status: str, previous: dict[str, Any] | None) -> dict[str, Any]:
    topo = plan.topology
    return {
        "lab": plan.nodes[0].lab if plan.nodes else topo.name,
        "status": status,
        "topology": source,
        "block": plan.block,
        "trustDomain": topo.trust_domain,
        "createdAt": (previous or {}).get("createdAt", time.time()),
        "updatedAt": time.time(),
        "nodes": {n.name: {"provider": plan.node_provider(n.name), "address": n.address, "index": n.index,
                           "capture": capture.capture_of(plan.node_provider(n.name), n.settings)}
                  for n in plan.nodes},
        "namespaces": {ns.name: {"mode": ns.mode, "waypoint": ns.waypoint} for ns in topo.namespaces},
        "services": {f"{s.name}.{s.namespace}": {
            "name": s.name, "namespace": s.namespace, "hostname": s.hostname(),
            "ports": [{"name": sp.name, "port": sp.port, "targetPort": sp.workload_port, "protocol": sp.protocol}
                      for sp in s.ports],
            "vips": plan.vips[f"{s.name}.{s.namespace}"], "selector": s.selector} for s in topo.services},
        "workloads": {p.workload.name: {"node": p.node, "address": p.address, "port": p.port,
                                        "namespace": p.workload.namespace, "service": p.workload.service,
                                        "app": p.workload.app, "version": p.workload.version,
                                        "serviceAccount": p.workload.service_account,
                                        "identity": p.workload.identity(topo.trust_domain),
                                        "labels": dict(p.workload.labels),
                                        "ports": _workload_ports(topo, p.workload),
                                        "inboundCapture": p.inbound_capture,
                                        "sidecarAddress": p.sidecar,
                                        "sidecarPorts": _sidecar_ports(p.sidecar_ports)}
                      for p in plan.placements},
    }


def _sidecar_ports(ports: tuple[int, int] | None) -> dict[str, int] | None:
    """Where iptables sends a workload's traffic to its sidecar (transparent capture), None with explicit."""
    return {"outbound": ports[0], "inbound": ports[1]} if ports else None


def _workload_ports(topo: Topology, w: Any) -> list[int]:
    if w.service is None:
        return []
    return [sp.workload_port for sp in topo.service(w.service, w.namespace).ports]


def _block_taken(block: str) -> bool:
    """A block some other lab on this machine serves: its control plane (.0.1) or its first node (.1.1)."""
    return block_in_use(block, [(1, AGENT_CHANNEL_PORT), (257, RESOLVER_PORT)])


async def up(topology: Topology, *, provider: str | None = None, progress: Progress = _noop,
             timeout: float = READY_TIMEOUT, cert_ttl: float | None = None) -> dict[str, Any]:
    """Bring the lab of `topology` up (or reconcile it) and wait until every workload is ready."""
    started = time.monotonic()
    if provider:
        topology = replace(topology, provider=provider)
    lab = Lab(topology.name)
    previous = lab.state.load() if lab.state.exists() else None
    claim = BlockClaim()
    block = (previous or {}).get("block") or topology.address_block
    if block:
        return await _up(lab, topology, block, previous, claim, progress, timeout, cert_ttl, started)
    # A new block: claimed until this lab serves on it, so that a concurrent `up` picks another.
    await asyncio.to_thread(claim.acquire)
    try:
        block = allocate_block(used_blocks(lab.name), _block_taken)
        return await _up(lab, topology, block, previous, claim, progress, timeout, cert_ttl, started)
    finally:
        claim.release()


async def _up(lab: Lab, topology: Topology, block: str, previous: dict[str, Any] | None, claim: BlockClaim,
              progress: Progress, timeout: float, cert_ttl: float | None, started: float) -> dict[str, Any]:
    subnet = await docker_subnet(topology, previous, lab.name)
    lab.dir.mkdir(parents=True, exist_ok=True)
    (lab.dir / "logs").mkdir(exist_ok=True)
    pyz = build_agent_zipapp(lab.dir / "agents.pyz")

    def node_kind(node: str) -> str:
        return topology.node(node).provider or topology.provider

    plan = plan_lab(topology, block, lab.name, lambda n: lab.provider(node_kind(n)).agent_command(n), subnet)
    ttl = int(cert_ttl or (previous or {}).get("certTtlSeconds") or DEFAULT_TTL.total_seconds())

    def document(status: str) -> dict[str, Any]:
        doc = _state_document(plan, topology.source, status, previous)
        doc["certTtlSeconds"] = ttl
        if subnet:
            doc["docker"] = {"subnet": subnet, "gateway": docker_gateway(subnet)}
        doc["waypoints"] = waypoints
        return doc

    waypoints: dict[str, Any] = {}
    waypoints = _plan_waypoints(document("provisioning"), previous)
    plan.nodes = [_with_waypoint_addresses(spec, waypoints, plan.node_provider(spec.name)) for spec in plan.nodes]

    doc = document("provisioning")
    lab.state.save(doc)
    if Path(topology.source).is_file():
        shutil.copyfile(topology.source, lab.dir / "topology.yaml")
    try:
        await _remove_stale_nodes(lab, plan, previous, progress)
        # The control plane binds its agent addresses with IP_FREEBIND: it can start while the nodes
        # (and a docker lab network, whose gateway it listens on) are being made.
        client, *infos = await asyncio.gather(
            _start_control_plane(lab, doc, progress),
            *(_create_node(lab, plan, spec.name, pyz, progress) for spec in plan.nodes))
        claim.release()  # the lab serves on its block now: another `up` sees it taken
        tokens = node_tokens(lab.dir, [n.name for n in plan.nodes])
        await asyncio.gather(*(_join_node(lab, plan, doc, client, spec.name, info, tokens[spec.name], progress,
                                          timeout) for spec, info in zip(plan.nodes, infos)))
        await _wait_ready(lab, plan, progress, timeout)
    except BaseException:
        lab.state.save(document("degraded"))
        await lab.close()
        raise
    doc = document("running")
    doc["upSeconds"] = round(time.monotonic() - started, 3)
    lab.state.save(doc)
    await lab.close()
    progress("lab", f"{lab.name} is up: {len(plan.nodes)} nodes, {len(plan.placements)} workloads "
                    f"in {doc['upSeconds']:.2f}s")
    return doc


def _plan_waypoints(doc: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """The lab's waypoints: those it had (enabled live, kept where they were) and those the topology asks for."""
    doc["waypoints"] = {key: w for key, w in ((previous or {}).get("waypoints") or {}).items()
                        if w["namespace"] in doc["namespaces"] and w["node"] in doc["nodes"]
                        and (w.get("service") is None or f"{w['service']}.{w['namespace']}" in doc["services"])}
    for namespace, ns in doc["namespaces"].items():
        if ns.get("waypoint"):
            dataplane.add_waypoint(doc, namespace)
    return doc["waypoints"]


def _with_waypoint_addresses(spec: NodeSpec, waypoints: dict[str, Any], provider: str) -> NodeSpec:
    """A docker node's spec with its waypoints' addresses on eth0 too (the provider makes the set exact)."""
    if provider != "docker":
        return spec
    mine = tuple(w["address"] for w in waypoints.values() if w["node"] == spec.name)
    return replace(spec, workload_addresses=spec.workload_addresses + mine)


def _proxy_names(doc: dict[str, Any], node: str) -> set[str]:
    """The process names of the L7 proxies the node should run."""
    names = {dataplane.proxy_process_name(dataplane.waypoint_agent(w))
             for w in dataplane.waypoints(doc).values() if w["node"] == node}
    return names | {dataplane.proxy_process_name(dataplane.sidecar_agent(w))
                    for w in dataplane.sidecar_workloads(doc, node)}


async def _start_proxies(provider: Provider, doc: dict[str, Any], node: str, cp: str, timeout: float,
                         progress: Progress) -> None:
    """Start the node's waypoints and sidecars, and wait until they serve (before the workloads start)."""
    agent = provider.agent_command(node)
    here = [w for w in dataplane.waypoints(doc).values() if w["node"] == node]
    sidecars = dataplane.sidecar_workloads(doc, node)
    specs = [dataplane.waypoint_process(w, cp, agent) for w in here]
    specs += [dataplane.sidecar_process(doc, w, cp, agent) for w in sidecars]
    if not specs:
        return
    await asyncio.gather(*(provider.start_process(node, spec) for spec in specs))
    addresses = [w["address"] for w in here] + [doc["workloads"][w]["sidecarAddress"] for w in sidecars]
    not_ready = await readiness.wait_ready(addresses, timeout, reach.routes(doc))
    if not_ready:
        raise ProvisionError(f"{node}: L7 proxies at {', '.join(not_ready)} not ready within {timeout:.0f}s "
                             f"(see `meshlab logs {node}/<proxy>`)")
    for w in here:
        progress("waypoint", f"{node}: waypoint {w['namespace']}/{w['name']} ready ({w['address']}:15008)")
    if sidecars:
        progress("sidecar", f"{node}: {len(sidecars)} sidecars ready")


async def _remove_stale_nodes(lab: Lab, plan: LabPlan, previous: dict[str, Any] | None,
                              progress: Progress) -> None:
    wanted = {n.name for n in plan.nodes}
    for name, node in ((previous or {}).get("nodes") or {}).items():
        if name not in wanted:
            await lab.provider(node["provider"]).destroy_node(name)
            progress("node", f"{name} removed (no longer in the topology)")


async def _start_control_plane(lab: Lab, doc: dict[str, Any], progress: Progress) -> LabClient:
    """Make sure the lab's CA exists and its control plane runs and knows the current state."""
    await asyncio.to_thread(LabCA.load_or_create, lab.dir / "ca", doc["trustDomain"])
    client, started = await ensure_control_plane(lab.name, lab.dir)
    if started:
        progress("control", f"control plane started (agent channel on {', '.join(channel_addresses(doc))}, "
                            f"port {AGENT_CHANNEL_PORT})")
    else:
        version = (await asyncio.to_thread(client.reload))["version"]
        progress("control", f"control plane running; config version {version} pushed")
    return client


async def _create_node(lab: Lab, plan: LabPlan, node: str, pyz: Path, progress: Progress) -> NodeInfo:
    """Create (or adopt) one node: its supervisor answers when this returns."""
    provider = lab.provider(plan.node_provider(node))
    spec = next(n for n in plan.nodes if n.name == node)
    info = await provider.create_node(spec, pyz)
    progress("node", f"{node} ready at {info.address} ({provider.name})")
    return info


async def _join_node(lab: Lab, plan: LabPlan, doc: dict[str, Any], client: LabClient, node: str, info: NodeInfo,
                     token: str, progress: Progress, timeout: float) -> None:
    """Start a node's ztunnel, hand it the resolver table and reconcile its workloads."""
    provider = lab.provider(plan.node_provider(node))
    spec = next(n for n in plan.nodes if n.name == node)
    cp = node_channel_address(doc, node)
    if provider.name == "docker" and info.details.get("gateway") not in (None, cp):
        raise ProvisionError(f"node {node}: its lab network's gateway is {info.details['gateway']}, not {cp}; "
                             f"`meshlab down {lab.name}` and `up` again")
    await _install_bootstrap(lab, provider, node, token)
    agent = provider.agent_command(node)
    # An ssh node's agents reach the control plane through a reverse forward on their own host.
    endpoint = getattr(provider, "channel_endpoint", None)
    ztunnel = ztunnel_process(spec, endpoint(node) if endpoint else f"{cp}:{AGENT_CHANNEL_PORT}", agent)
    await provider.start_process(node, ztunnel)
    if node in readiness.ambient_nodes(doc):
        # Ambient workloads here: the ztunnel must serve (config applied, certificates in hand) before them.
        answer = await asyncio.to_thread(client.wait_synced, timeout, [f"ztunnel/{node}"])
        if not answer["synced"] or await readiness.wait_ready([spec.address], timeout, reach.routes(doc)):
            tail = await provider.logs(node, "ztunnel", tail=5)
            raise ProvisionError(f"ztunnel of {node} not ready within {timeout:.0f}s:\n"
                                 + "\n".join(f"    | {line}" for line in tail.splitlines()[-5:]))
        progress("ztunnel", f"{node}: ztunnel ready (HBONE {spec.address}:15008)")
    if capture.node_capture(doc, node) == "transparent":  # the ztunnel serves: now iptables may send it traffic
        await capture.install(provider, node, capture.capture_spec(doc, node))
    await _start_proxies(provider, doc, node, f"{cp}:{AGENT_CHANNEL_PORT}", timeout, progress)
    await provider.push_config(node, "resolver", mesh.resolver_table(doc, node))
    wanted = {p.name: p for p in plan.processes[node]}
    for running in await provider.list_processes(node):
        proxy = running.labels.get("role") in ("waypoint", "sidecar")
        if proxy and running.name not in _proxy_names(doc, node):
            await provider.stop_process(node, running.name)
            progress(running.labels["role"], f"{running.name} stopped (no longer wanted)")
        if running.name not in wanted and running.labels.get("role") == "workload":
            await provider.stop_process(node, running.name)
            progress("workload", f"{running.name} stopped (no longer in the topology)")
    await asyncio.gather(*(provider.start_process(node, p) for p in wanted.values()))


async def _install_bootstrap(lab: Lab, provider: Provider, node: str, token: str) -> None:
    """Copy what a node's agents need to join the mesh: the lab root and the node's bootstrap token."""
    folder = lab.dir / "bootstrap" / node
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "token", token, mode=0o600)
    await provider.copy_file(node, lab.dir / "ca" / "root-cert.pem", "bootstrap/root-cert.pem")
    await provider.copy_file(node, folder / "token", "bootstrap/token")


async def _wait_ready(lab: Lab, plan: LabPlan, progress: Progress, timeout: float) -> None:
    """Poll every node until all its workloads are ready; on timeout say which are not and why."""
    deadline = time.monotonic() + timeout
    pending = {(p.node, p.workload.name) for p in plan.placements}
    last: dict[tuple[str, str], ProcessStatus] = {}
    while pending:
        for node in sorted({n for n, _ in pending}):
            provider = lab.provider(plan.node_provider(node))
            for st in await provider.list_processes(node):
                key = (node, st.name)
                last[key] = st
                if key in pending and st.ready:
                    pending.discard(key)
                    progress("workload", f"{st.name} ready on {node}")
        if not pending:
            return
        if time.monotonic() > deadline:
            raise ProvisionError(await _not_ready_report(lab, plan, pending, last, timeout))
        await asyncio.sleep(0.05)


async def _not_ready_report(lab: Lab, plan: LabPlan, pending: set[tuple[str, str]],
                            last: dict[tuple[str, str], ProcessStatus], timeout: float) -> str:
    lines = [f"{len(pending)} workload(s) not ready after {timeout:.0f}s:"]
    for node, name in sorted(pending):
        st = last.get((node, name))
        what = f"{st.state}, restarts {st.restarts}, last exit code {st.exit_code}" if st else "not started"
        lines.append(f"  {name} on {node}: {what}")
        tail = await lab.provider(plan.node_provider(node)).logs(node, name, tail=5)
        lines += [f"    | {line}" for line in tail.splitlines()[-5:]]
    return "\n".join(lines)


async def status(name: str) -> dict[str, Any]:
    """The lab's state with what its nodes report now: node state, processes, restarts."""
    lab = Lab(name)
    doc = lab.state.load()
    pid = running_pid(lab.dir)
    doc["controlPlane"] = {"state": "running" if pid else "stopped", "pid": pid}
    try:
        for node, entry in doc["nodes"].items():
            provider = lab.provider_of(node, doc)
            try:
                info = await provider.node_info(node)
                entry["state"] = info.state
                for key in ("connection", "capture", "captureCapability", "captureReason", "agentsVia"):  # ssh nodes
                    if key in info.details:
                        entry[key] = info.details[key]
                # A stopped or paused node answers nothing: its state says so, with no processes to list.
                entry["processes"] = ([_process_json(p) for p in await provider.list_processes(node)]
                                      if info.state not in ("stopped", "paused") else [])
            except LabError as e:
                entry["state"], entry["error"], entry["processes"] = "unreachable", str(e), []
    finally:
        await lab.close()
    return doc


def _process_json(p: ProcessStatus) -> dict[str, Any]:
    return {"name": p.name, "state": p.state, "pid": p.pid, "ready": p.ready, "restarts": p.restarts,
            "exitCode": p.exit_code, "startedAt": p.started_at, "labels": p.labels}


async def down(name: str) -> dict[str, Any]:
    """Remove everything the lab started, also when its state or its supervisors are gone."""
    lab = Lab(name)
    errors: list[str] = []
    destroyed: list[str] = []
    if lab.state.exists():
        try:
            doc = lab.state.load()
            for node in doc.get("nodes", {}):
                try:
                    await lab.provider_of(node, doc).destroy_node(node)
                    destroyed.append(node)
                except LabError as e:
                    errors.append(f"{node}: {e}")
        except LabError as e:
            errors.append(str(e))
    await lab.close()
    control_plane = await asyncio.to_thread(_stop_control_plane, lab.dir)
    leftovers = await clean_tagged(name)
    shutil.rmtree(lab.dir, ignore_errors=True)
    return {"lab": name, "nodes": destroyed, "controlPlane": control_plane, "leftovers": leftovers,
            "errors": errors}


def _stop_control_plane(lab_path: Path, grace: float = 5.0) -> str:
    """SIGTERM the lab's control plane and wait for it; what is left is killed by tag afterwards."""
    pid = running_pid(lab_path)
    if pid is None:
        return "not running"
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return "not running"
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and proctags.tags_of(pid) is not None:  # gone (or reaped) once untagged
        time.sleep(0.05)
    return "stopped" if proctags.tags_of(pid) is None else "did not stop in time"


async def clean_tagged(name: str | None) -> list[str]:
    """Ask every provider to remove what carries the tags of lab `name` (or of any lab)."""
    removed: list[str] = []
    for kind in provider_names():
        removed += await provider_class(kind).clean(name)
    return removed


async def clean(name: str | None = None) -> dict[str, Any]:
    """Remove leftovers of one lab, or of every lab, by their tags; then their folders."""
    removed = await clean_tagged(name)
    folders = [name] if name else [p.name for p in labs_dir().iterdir()] if labs_dir().is_dir() else []
    for lab in folders:
        if lab_dir(lab).exists():
            shutil.rmtree(lab_dir(lab), ignore_errors=True)
            removed.append(f"folder {lab_dir(lab)}")
    return {"removed": removed}


async def exec_load(name: str, target: str, source: str | None, args: list[str]) -> dict[str, Any]:
    """Run the load generator on a node of the lab, as the workload `source` (or on node `source`)."""
    lab = Lab(name)
    doc = lab.state.load()
    node, env = load_origin(doc, source)
    provider = lab.provider_of(node, doc)
    try:
        argv = [*provider.agent_command(node), "loadgen", target, "--json", *args]
        result = await provider.exec(node, argv, env=env, timeout=3700)
    finally:
        await lab.close()
    if result.exit_code != 0:
        raise LabError(f"load generator failed on {node} (exit {result.exit_code}): "
                       f"{(result.stderr or result.stdout).strip()}")
    try:
        return json.loads(result.stdout)
    except ValueError:
        raise LabError(f"load generator printed no JSON: {result.stdout[:200]!r}") from None
