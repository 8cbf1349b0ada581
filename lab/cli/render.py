"""Human-readable output of the CLI: progress lines, status tables, load reports."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from lab.topology.model import Topology


class Progress:
    """Prints what `up` is doing as it happens, with the time since start."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.started = time.monotonic()

    def __call__(self, what: str, message: str) -> None:
        if self.enabled:
            print(f"[{time.monotonic() - self.started:6.2f}s] {what:<9} {message}", file=sys.stderr, flush=True)


def topology_summary(topo: Topology) -> str:
    return (f"lab '{topo.name}', {len(topo.nodes)} nodes, {len(topo.namespaces)} namespaces, "
            f"{len(topo.services)} services, {len(topo.workloads)} workloads, provider {topo.provider}")


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def up_summary(doc: dict[str, Any]) -> str:
    lines = [f"lab {doc['lab']} is {doc['status']} ({doc.get('upSeconds', 0):.2f}s); "
             f"try `meshlab status` and `meshlab load productpage`" if "productpage" in str(doc["services"])
             else f"lab {doc['lab']} is {doc['status']} ({doc.get('upSeconds', 0):.2f}s); try `meshlab status`"]
    return "\n".join(lines)


def down_summary(doc: dict[str, Any]) -> str:
    lines = [f"lab {doc['lab']} removed: {len(doc['nodes'])} node(s)"]
    lines += [f"  removed leftover {x}" for x in doc["leftovers"]]
    lines += [f"  error: {e}" for e in doc["errors"]]
    return "\n".join(lines)


def status_table(doc: dict[str, Any]) -> str:
    cp = doc.get("controlPlane") or {}
    out = [f"lab {doc['lab']}  status {doc['status']}  block {doc['block']}  trust domain {doc['trustDomain']}",
           f"topology {doc['topology']}",
           f"control plane {cp.get('state', '?')}" + (f" (pid {cp['pid']})" if cp.get("pid") else
                                                       " (run `meshlab up` again to restart it)"), ""]
    out.append(table(["NODE", "PROVIDER", "ADDRESS", "STATE"],
                     [[n, v["provider"], v["address"], _node_state(v)] for n, v in doc["nodes"].items()]))
    out.append("")
    out.append(table(["NAMESPACE", "MODE", "WAYPOINT"],
                     [[n, v["mode"], "yes" if v["waypoint"] else "no"] for n, v in doc["namespaces"].items()]))
    out.append("")
    procs = {(node, p["name"]): p for node, v in doc["nodes"].items() for p in v.get("processes", [])}
    rows = []
    for name, w in doc["workloads"].items():
        p = procs.pop((w["node"], name), None)
        addr = f"{w['address']}:{w['port']}" if w["port"] else w["address"]
        rows.append([name, w["namespace"], w["service"] or "-", w["version"], w["node"], addr,
                     _state(p), p["pid"] if p else "", p["restarts"] if p else "",
                     p["exitCode"] if p and p["exitCode"] is not None else ""])
    for (node, name), p in sorted(procs.items()):  # processes that are not workloads (agents, later proxies)
        rows.append([name, "-", "-", "-", node, "", _state(p), p["pid"], p["restarts"],
                     p["exitCode"] if p["exitCode"] is not None else ""])
    out.append(table(["WORKLOAD", "NAMESPACE", "SERVICE", "VERSION", "NODE", "ADDRESS", "STATE", "PID",
                      "RESTARTS", "LAST EXIT"], rows))
    errors = [f"{n}: {v['error']}" for n, v in doc["nodes"].items() if v.get("error")]
    if errors:
        out += ["", *errors]
    return "\n".join(out)


def _node_state(v: dict[str, Any]) -> str:
    """The node's state; for an ssh node also its connection and capture."""
    text = str(v.get("state", "?"))
    conn = v.get("connection")
    if conn:
        reconnects = conn.get("reconnects") or 0
        text += f", ssh {conn.get('state', '?')}" + (f" ({reconnects} reconnects)" if reconnects else "")
        if conn.get("state") != "connected" and conn.get("error"):
            text += f": {conn['error']}"
    if v.get("captureCapability"):
        text += f", capture {v.get('capture')} (transparent {'possible' if v['captureCapability'] == 'transparent' else 'not possible'}: {v.get('captureReason')})"
    return text


def _state(p: dict[str, Any] | None) -> str:
    if p is None:
        return "missing"
    return f"{p['state']}{'' if p['ready'] or p['state'] != 'running' else ' (not ready)'}"


def load_report(doc: dict[str, Any]) -> str:
    """The load generator's JSON result as fortio-like text."""
    from agents.loadgen import format_report

    return format_report(doc)


async def show_logs(lab: str, process: str, tail: int, follow: bool) -> int:
    """Print the log of `[node/]process`; with `follow`, keep printing what is appended."""
    from lab.errors import LabError
    from lab.handle import Lab

    handle = Lab(lab)
    doc = handle.state.load()
    node, _, name = process.rpartition("/")
    if not node:
        if name not in doc["workloads"]:
            raise LabError(f"no workload '{name}' in lab '{lab}'; name a process as NODE/PROCESS "
                           f"(workloads: {', '.join(doc['workloads'])})")
        node = doc["workloads"][name]["node"]
    if node not in doc["nodes"]:
        raise LabError(f"no node '{node}' in lab '{lab}' (nodes: {', '.join(doc['nodes'])})")
    provider = handle.provider_of(node, doc)
    try:
        text = await provider.logs(node, name, tail=tail)
        print(text, end="" if text.endswith("\n") or not text else "\n")
        seen = text.splitlines()
        while follow:  # logs only grow: print the lines after the last one we saw
            await asyncio.sleep(0.5)
            lines = (await provider.logs(node, name, tail=max(tail, 200))).splitlines()
            start = _after(lines, seen[-1] if seen else None)
            for line in lines[start:]:
                print(line, flush=True)
            seen = lines or seen
    except KeyboardInterrupt:
        pass
    finally:
        await handle.close()
    return 0


def _after(lines: list[str], last: str | None) -> int:
    if last is None:
        return 0
    for i in range(len(lines) - 1, -1, -1):
        if lines[i] == last:
            return i + 1
    return 0
