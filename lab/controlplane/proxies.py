"""Starting, stopping and waiting for the lab's L7 proxies (waypoints, sidecars) and restarting workloads.

The control plane does this live, on a running lab, through the providers of the
nodes (the same supervisors `meshlab up` used). Waiting means: the proxy's agent
has ACKed the newest config version and its `/healthz/ready` answers 200 (config
applied, certificate in hand, listeners bound).
"""

from __future__ import annotations

import asyncio
from typing import Any

from lab.controlplane import readiness
from lab.controlplane.bootstrap import AGENT_CHANNEL_PORT, node_channel_address
from lab.dataplane import proxy_process_name, sidecar_agent, sidecar_process, waypoint_agent, waypoint_process
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
                                env: dict[str, dict[str, str]]) -> list[str]:
        """Restart workloads one after another (a rolling restart), each with its env changes; returns them."""
        async def work(lab: Lab) -> list[str]:
            done = []
            for name in workloads:
                node = state["workloads"][name]["node"]
                await lab.provider_of(node, state).restart_process(node, name, env.get(name, {}))
                done.append(name)
            return done
        return await self._run(state, work)


def waypoint_process_of(entry: dict[str, Any]) -> tuple[str, str]:
    return entry["node"], proxy_process_name(waypoint_agent(entry))


def sidecar_process_of(state: dict[str, Any], workload: str) -> tuple[str, str]:
    return state["workloads"][workload]["node"], proxy_process_name(sidecar_agent(workload))


async def wait_proxies_ready(addresses: list[str], timeout: float, what: str) -> None:
    """Wait for the proxies at `addresses` to answer ready; LabError naming those that did not."""
    not_ready = await readiness.wait_ready(addresses, timeout)
    if not_ready:
        raise LabError(f"{what} at {', '.join(not_ready)} not ready after {timeout:.0f}s "
                       f"(see `meshlab logs NODE/PROCESS`)")
