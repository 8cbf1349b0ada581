"""What the control plane does when a node, process or security fault is added or removed.

Traffic faults (l4, l7) need nothing here: they reach the agents in their snapshots.
Node and process faults go through the node's provider; a provider that cannot do
one says so (`ProviderNotSupported`) and the fault is not added. A partition on the
local provider is enforced by the ztunnels (loopback has no per-node firewall
without root), so it is mesh traffic that is cut there; other providers partition
the node's network too.

A stopped node comes back like a machine that reboots with its services enabled, in
the order `meshlab up` joins a node: the supervisor, then the ztunnel it had (it
rejoins with the token and root on the node's disk) until it serves, then the
capture rules of a transparent node (lost with a container's network namespace),
then the L7 proxies until they serve, then everything else that ran.
"""

from __future__ import annotations

import signal
from typing import Any

from lab import capture
from lab.controlplane import reach, readiness
from lab.errors import LabError, ProviderNotSupported, ProvisionError
from lab.faults.store import Fault

ZTUNNEL = "ztunnel"
PROXY_ROLES = ["waypoint", "sidecar"]
READY_TIMEOUT = 30.0


async def apply(lab: Any, state: dict[str, Any], fault: Fault) -> None:
    """Do what adding `fault` takes (sets `fault.note`/`fault.effect`); raises LabError when it cannot be done."""
    kind = fault.kind
    if kind == "partition":
        fault.note = await _partition(lab, state, fault, heal=False)
    elif kind in ("pause_node", "stop_node"):
        node = fault.target["name"]  # type: ignore[index]
        provider = lab.provider_of(node, state)
        if kind == "pause_node":
            await provider.pause_node(node)
            fault.note = f"{provider.name} provider"
        else:
            await provider.stop_node(node)
            fault.note = f"{provider.name} provider: every process of the node stopped; removal starts them again"
    elif kind in ("kill_agent", "pause_agent"):
        node = fault.target["name"]  # type: ignore[index]
        sig = signal.SIGKILL if kind == "kill_agent" else signal.SIGSTOP
        await lab.provider_of(node, state).signal_process(node, ZTUNNEL, sig)
        fault.note = f"{signal.Signals(sig).name} to {node}/{ZTUNNEL}"
    elif kind == "crash_workload":
        name = fault.target["name"]  # type: ignore[index]
        node = state["workloads"][name]["node"]
        await lab.provider_of(node, state).signal_process(node, name, signal.SIGKILL)
        fault.note = f"SIGKILL to {node}/{name}"
    elif kind in ("expire_cert", "revoke", "foreign_ca"):
        name = fault.target["name"]  # type: ignore[index]
        fault.effect = {"identity": state["workloads"][name]["identity"]}
        fault.note = {"expire_cert": "the CA issues an expired certificate, its proxy presents it; peers' TLS "
                                     "verification fails until the fault ends",
                      "revoke": "the CA refuses the identity, its ztunnel drops it, peers refuse it",
                      "foreign_ca": "a throwaway CA the lab does not trust issues its certificate; peers refuse "
                                    "it and it refuses them until the fault ends"}[kind]


async def revert(lab: Any, state: dict[str, Any], fault: Fault) -> None:
    """Undo `fault` (removal or expiry); raises LabError when the provider fails."""
    kind = fault.kind
    if kind == "partition":
        await _partition(lab, state, fault, heal=True)
    elif kind == "pause_node":
        node = fault.target["name"]  # type: ignore[index]
        await lab.provider_of(node, state).resume_node(node)
    elif kind == "stop_node":
        await start_node(lab, state, fault.target["name"])  # type: ignore[index]
    elif kind == "pause_agent":
        node = fault.target["name"]  # type: ignore[index]
        await lab.provider_of(node, state).signal_process(node, ZTUNNEL, signal.SIGCONT)


async def start_node(lab: Any, state: dict[str, Any], node: str, timeout: float = READY_TIMEOUT) -> list[str]:
    """Start a stopped node and bring back what ran on it, in join order; returns the processes restored.

    Every step is tried even when one before it failed (a node half back is worse than one with a
    slow ztunnel); the failures are raised together at the end.
    """
    provider = lab.provider_of(node, state)
    await provider.start_node(node)
    problems: list[str] = []
    routes = reach.routes(state)
    restored = await provider.restore_processes(node, [ZTUNNEL])
    if restored and await readiness.wait_ready([state["nodes"][node]["address"]], timeout, routes):
        tail = await provider.logs(node, ZTUNNEL, tail=5)
        problems.append(f"the ztunnel of {node} did not serve within {timeout:.0f}s after the node started:\n"
                        + "\n".join(f"    | {line}" for line in tail.splitlines()[-5:]))
    if capture.node_capture(state, node) == "transparent":  # the ztunnel serves: iptables may send it traffic
        try:
            await capture.install(provider, node, capture.capture_spec(state, node))
        except LabError as e:
            problems.append(str(e))
    proxies = await provider.restore_processes(node, PROXY_ROLES)
    if proxies:
        waypoints = [w["address"] for w in state.get("waypoints", {}).values() if w.get("node") == node]
        sidecars = [w["sidecarAddress"] for name, w in state["workloads"].items()
                    if w["node"] == node and f"sidecar-{name}" in proxies]
        not_ready = await readiness.wait_ready([a for a in waypoints + sidecars if a], timeout, routes)
        if not_ready:
            problems.append(f"{node}: L7 proxies at {', '.join(not_ready)} did not serve within {timeout:.0f}s")
    rest = await provider.restore_processes(node)
    if problems:
        raise ProvisionError("; ".join(problems))
    return restored + proxies + rest


async def restore_partitions(lab: Any, state: dict[str, Any], node: str, active: list[Fault]) -> None:
    """Put back the partitions of `node` that a stop took away (docker: its iptables rules went with the
    container's network namespace; re-applying one heals it first, so this is safe where they stayed)."""
    for fault in active:
        target = fault.target or {}
        nodes = ({target["source"]["name"], target["destination"]["name"]} if target.get("type") == "edge"
                 else {target.get("name")})
        if fault.kind == "partition" and node in nodes:
            await _partition(lab, state, fault, heal=False)


async def _partition(lab: Any, state: dict[str, Any], fault: Fault, heal: bool) -> str:
    """Partition (or heal) through every non-local provider involved; the ztunnels do it on local nodes."""
    target = fault.target or {}
    pairs: list[tuple[str, str | None]]
    if target.get("type") == "edge":
        pairs = [(target["source"]["name"], target["destination"]["name"])]
    else:
        pairs = [(target["name"], None)]
    done = []
    for node, peer in pairs:
        providers = {state["nodes"][n]["provider"] for n in (node, peer) if n}
        if providers == {"local"}:
            continue
        provider = lab.provider_of(node, state)
        try:
            if heal:
                await provider.heal_partition(node, peer)
            else:
                await provider.partition(node, peer, "out" if fault.direction == "upstream" else "both")
            done.append(provider.name)
        except ProviderNotSupported:
            if heal:
                continue
            raise
        except LabError:
            raise
    return ("ztunnels refuse HBONE across it" + (f"; {', '.join(done)} provider network rules" if done else ""))
