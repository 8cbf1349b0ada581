"""Starting, stopping and waiting for the lab's L7 proxies (waypoints, sidecars) and restarting workloads.

The control plane does this live, on a running lab, through the providers of the
nodes (the same supervisors `meshlab up` used). Waiting means: the proxy's agent
has ACKed the newest config version and its `/healthz/ready` answers 200 (config
applied, certificate in hand, listeners bound).
"""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from lab import capture
from lab.controlplane import reach, readiness
from lab.controlplane.telemetry import scrape
from lab.controlplane.bootstrap import AGENT_CHANNEL_PORT, node_channel_address
from lab.dataplane import (proxy_process_name, sidecar_agent, sidecar_process, sidecar_workloads, waypoint_agent,
                           waypoint_process, waypoints)
from lab.errors import LabError
from lab.handle import Lab


class ProxyControl:
    """Process operations on a lab's nodes for the control plane (one provider handle per call)."""

    def __init__(self, lab: str) -> None:
        self.lab = lab

    async def _run(self, state: dict[str, Any], work: Any) -> Any:
        lab = Lab(self.lab)
        try:
            return await work(lab)
        finally:
            await lab.close()

    async def start_waypoint(self, state: dict[str, Any], entry: dict[str, Any]) -> None:
        async def work(lab: Lab) -> None:
            provider = lab.provider_of(entry["node"], state)
            if _on_docker(state, entry["node"]):  # its address goes on the node's eth0 before it binds it
                await capture.set_proxy_address(provider, entry["node"], entry["address"])
            cp = f"{node_channel_address(state, entry['node'])}:{AGENT_CHANNEL_PORT}"
            await provider.start_process(entry["node"],
                                         waypoint_process(entry, cp, provider.agent_command(entry["node"])))
        await self._run(state, work)

    async def start_sidecars(self, state: dict[str, Any], workloads: list[str]) -> None:
        async def work(lab: Lab) -> None:
            async def one(name: str) -> None:
                node = state["workloads"][name]["node"]
                provider = lab.provider_of(node, state)
                cp = f"{node_channel_address(state, node)}:{AGENT_CHANNEL_PORT}"
                await provider.start_process(node, sidecar_process(state, name, cp, provider.agent_command(node)))
            await asyncio.gather(*(one(w) for w in workloads))
        await self._run(state, work)

    async def stop_waypoint(self, state: dict[str, Any], entry: dict[str, Any]) -> None:
        """Stop a waypoint, then take its address off a docker node's eth0."""
        await self.stop(state, [waypoint_process_of(entry)])
        if _on_docker(state, entry["node"]):
            async def work(lab: Lab) -> None:
                await capture.set_proxy_address(lab.provider_of(entry["node"], state), entry["node"],
                                                entry["address"], present=False)
            await self._run(state, work)

    async def stop(self, state: dict[str, Any], processes: list[tuple[str, str]]) -> None:
        """Stop (node, process name) pairs; a process already gone is fine."""
        async def work(lab: Lab) -> None:
            async def one(node: str, name: str) -> None:
                try:
                    await lab.provider_of(node, state).stop_process(node, name)
                except LabError as e:
                    if "no process" not in str(e).lower():
                        raise
            await asyncio.gather(*(one(node, name) for node, name in processes))
        await self._run(state, work)

    async def restart_workloads(self, state: dict[str, Any], workloads: list[str],
                                env: dict[str, dict[str, str]], timeout: float = 30.0) -> list[str]:
        """Restart workloads with their env changes and wait until they serve again; returns them.

        Each workload is its own deployment of one replica, and deployments roll independently:
        all restart at once.
        """
        async def work(lab: Lab) -> list[str]:
            async def one(name: str) -> None:
                node = state["workloads"][name]["node"]
                await lab.provider_of(node, state).restart_process(node, name, env.get(name, {}))
            await asyncio.gather(*(one(w) for w in workloads))
            nodes = {state["workloads"][w]["node"] for w in workloads}
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                listed = await asyncio.gather(*(lab.provider_of(n, state).list_processes(n) for n in nodes))
                waiting = {p.name for ps in listed for p in ps if p.name in workloads and not p.ready}
                if not waiting or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.1)
            if waiting:
                raise LabError(f"workloads not serving {timeout:.0f}s after their restart: {', '.join(sorted(waiting))}")
            return list(workloads)
        return await self._run(state, work)


def _on_docker(state: dict[str, Any], node: str) -> bool:
    return state["nodes"][node].get("provider") == "docker"


def waypoint_process_of(entry: dict[str, Any]) -> tuple[str, str]:
    return entry["node"], proxy_process_name(waypoint_agent(entry))


def sidecar_process_of(state: dict[str, Any], workload: str) -> tuple[str, str]:
    return state["workloads"][workload]["node"], proxy_process_name(sidecar_agent(workload))


async def wait_proxies_ready(addresses: list[str], timeout: float, what: str,
                             routes: reach.Routes | None = None) -> None:
    """Wait for the proxies at `addresses` to answer ready; LabError naming those that did not."""
    not_ready = await readiness.wait_ready(addresses, timeout, routes)
    if not_ready:
        raise LabError(f"{what} at {', '.join(not_ready)} not ready after {timeout:.0f}s "
                       f"(see `meshlab logs NODE/PROCESS`)")


def agent_addresses(state: dict[str, Any]) -> list[str]:
    """Where every data-plane agent of the lab serves its metrics: ztunnels, waypoints, sidecars."""
    addresses = [n["address"] for n in state["nodes"].values()]
    addresses += [w["address"] for w in waypoints(state).values()]
    addresses += [state["workloads"][w]["sidecarAddress"] for w in sidecar_workloads(state)]
    return addresses


def _failures_at(address: str, routes: reach.Routes | None = None) -> int:
    """Failed requests and connections one agent has counted: 5xx or no response at L7, flagged closes at L4."""
    failed = 0.0
    for family in text_string_to_metric_families(scrape(address, routes)):
        for s in family.samples:
            if s.labels.get("reporter") not in ("source", "waypoint"):
                continue  # each failure once: from the side that saw the client's request
            if s.name == "istio_requests_total" and (s.labels.get("response_code", "0")[:1] in ("5", "0")):
                failed += s.value
            elif s.name == "istio_tcp_connections_closed_total" and s.labels.get("response_flags", "-") != "-":
                failed += s.value
    return int(failed)


async def mesh_failures(*states: dict[str, Any]) -> dict[str, int]:
    """address -> failures counted so far, for every agent of the lab in any of `states` (read before and after
    a change, with the old and the new state, so proxies on their way in or out are read too)."""
    addresses = sorted({a for state in states for a in agent_addresses(state)})
    routes = {a: via for state in states for a, via in reach.routes(state).items()}
    counts = await asyncio.gather(*(asyncio.to_thread(_failures_at, a, routes) for a in addresses))
    return dict(zip(addresses, counts))


def failures_between(before: dict[str, int], after: dict[str, int]) -> int:
    """Failures counted between two readings (agents that appeared count from zero, vanished ones not at all)."""
    return sum(max(0, count - before.get(address, 0)) for address, count in after.items())
