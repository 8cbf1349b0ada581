"""Record a running lab's API answers for the TUI's deterministic tests: `python -m tests.tui.record LAB OUT.json`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from lab.client import LabClient

SAMPLES = 40


def agent_and_access_lines(text: str, access: int = 12) -> str:
    """Every line of an agent's log that is not an access-log entry, and the last `access` entries."""
    lines = text.splitlines()
    entries = [ln for ln in lines if ln.lstrip().startswith("{")]
    return "\n".join([ln for ln in lines if not ln.lstrip().startswith("{")] + entries[-access:]) + "\n"


def record(lab: str, samples: int = SAMPLES) -> dict[str, Any]:
    """Answers of every read-only route, and `samples` traffic answers one second apart."""
    client = LabClient(lab)
    client.traffic()
    traffic = []
    for _ in range(samples):
        time.sleep(1.0)
        traffic.append(client.traffic())
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
        "logs": {node: agent_and_access_lines(client.logs(node, "ztunnel", tail=5000)["text"])
                 for node in nodes["nodes"]},
    }


if __name__ == "__main__":
    Path(sys.argv[2]).write_text(json.dumps(record(sys.argv[1]), indent=1, sort_keys=True) + "\n")
