"""Record a running lab's API answers for the TUI's deterministic tests: `python -m tests.tui.record LAB OUT.json`.

The traffic samples are folded by the lab's own `TrafficView` from every agent's metrics — the ztunnels, and
the waypoints and sidecars too (`/v1/traffic` scrapes the node addresses only, where the ztunnels serve their
metrics; the L7 proxies serve theirs on their own addresses). So the recording shows what `/v1/traffic` answers
once it scrapes every agent: the L7 figures (req/s, error rate, codes, p50/p99) of a waypoint's edges.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from lab.client import LabClient
from lab.controlplane.telemetry import TrafficView

SAMPLES = 40


def agent_and_access_lines(text: str, access: int = 12) -> str:
    """Every line of an agent's log that is not an access-log entry, and the last `access` entries."""
    lines = text.splitlines()
    entries = [ln for ln in lines if ln.lstrip().startswith("{")]
    return "\n".join([ln for ln in lines if not ln.lstrip().startswith("{")] + entries[-access:]) + "\n"


def agent_addresses(nodes: dict[str, Any]) -> list[str]:
    """Where every agent serves its metrics: node addresses (ztunnels), waypoint and sidecar addresses."""
    addresses = [n["address"] for n in nodes["nodes"].values()]
    addresses += [w["address"] for w in (nodes.get("waypoints") or {}).values()]
    sidecars = {ns for ns, d in nodes["namespaces"].items() if d.get("mode") == "sidecar"}
    addresses += [w["sidecarAddress"] for w in nodes["workloads"].values()
                  if w.get("namespace") in sidecars and w.get("sidecarAddress")]
    return addresses


def config_dumps(client: LabClient) -> dict[str, Any]:
    """The config dump of every agent proxy-status lists, keyed as `RecordedLab.config_dump` looks them up."""
    return {f"{a['agent']}@{a['node']}": client.config_dump(a["agent"], a["node"])
            for a in client.proxy_status()["agents"]}


def record(lab: str, samples: int = SAMPLES) -> dict[str, Any]:
    """Answers of every read-only route, and `samples` traffic answers one second apart."""
    client = LabClient(lab)
    nodes = client.nodes()
    view, addresses = TrafficView(), agent_addresses(nodes)
    asyncio.run(view.snapshot(addresses))
    traffic = []
    for _ in range(samples):
        time.sleep(1.0)
        traffic.append(asyncio.run(view.snapshot(addresses)))
    nodes = client.nodes()
    return {
        "recordedAt": time.time(),
        "nodes": nodes,
        "proxyStatus": client.proxy_status(),
        "traffic": traffic,
        "loads": client.loads(),
        "config": client.get_config(),
        "certs": client.certs(),
        "usage": client.usage(),
        "events": client.events(),
        "faults": client.faults(),
        "configDumps": config_dumps(client),
        "faultKinds": client.fault_kinds(),
        "logs": {node: agent_and_access_lines(client.logs(node, "ztunnel", tail=5000)["text"])
                 for node in nodes["nodes"]},
    }


if __name__ == "__main__":
    Path(sys.argv[2]).write_text(json.dumps(record(sys.argv[1]), indent=1, sort_keys=True) + "\n")
