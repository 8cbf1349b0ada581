"""Waiting for ztunnels to be ready to serve: config applied and a certificate for every local ambient identity."""

from __future__ import annotations

import asyncio
import time

from lab.controlplane import reach

READY_PORT = 15021


def _ready(address: str, routes: reach.Routes | None) -> bool:
    try:
        return reach.get(address, READY_PORT, "/healthz/ready", 1, routes)[0] == 200
    except (OSError, ValueError):
        return False


async def wait_ready(addresses: list[str], timeout: float, routes: reach.Routes | None = None) -> list[str]:
    """Poll each address's `/healthz/ready` until all answer 200; returns those that never did.

    `routes` (`reach.routes(state)`) says which agents the lab reaches through their ssh node."""
    pending = list(addresses)
    deadline = time.monotonic() + timeout
    while pending:
        results = await asyncio.gather(*(asyncio.to_thread(_ready, a, routes) for a in pending))
        pending = [a for a, ok in zip(pending, results) if not ok]
        if not pending or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    return pending


def ambient_nodes(state: dict) -> list[str]:
    """Nodes that host a workload of an ambient namespace: their ztunnels must be ready before traffic."""
    ambient = {ns for ns, v in state["namespaces"].items() if v["mode"] == "ambient"}
    return sorted({w["node"] for w in state["workloads"].values() if w["namespace"] in ambient})
