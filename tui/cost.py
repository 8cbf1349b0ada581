"""Resource cost of the mesh: RSS and CPU per process from `/v1/usage`, totals by role, CPU % between polls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ProcessCost:
    """What one process on a node costs now."""

    node: str
    process: str
    role: str
    rss_bytes: int
    cpu_seconds: float
    cpu_percent: float | None  # since the previous sample; None on the first


@dataclass(frozen=True)
class RoleTotal:
    """What all processes of one role (ztunnel, workload, load, ...) cost together."""

    role: str
    processes: int
    rss_bytes: int
    cpu_seconds: float
    cpu_percent: float | None


class CostMeter:
    """Turns successive `/v1/usage` answers into per-process costs with CPU %."""

    def __init__(self) -> None:
        self._last: tuple[float, dict[tuple[str, str], float]] | None = None

    def sample(self, usage: dict[str, Any], now: float) -> tuple[list[ProcessCost], list[str]]:
        """Costs of every process, and the errors of nodes that did not answer."""
        before = self._last
        rows, errors, cpu = [], [], {}
        for p in usage.get("processes", []):
            if "error" in p:
                errors.append(f"{p.get('node', '?')}: {p['error']}")
                continue
            key = (p["node"], p["process"])
            cpu[key] = float(p.get("cpuSeconds", 0.0))
            pct = None
            if before and now > before[0] and key in before[1]:
                pct = max(0.0, (cpu[key] - before[1][key]) / (now - before[0]) * 100)
            rows.append(ProcessCost(p["node"], p["process"], p.get("role") or "?", int(p.get("rssBytes", 0)),
                                    cpu[key], pct))
        self._last = (now, cpu)
        return rows, errors


def totals_by_role(rows: list[ProcessCost]) -> list[RoleTotal]:
    """Sum of RSS, CPU seconds and CPU % per role, the mesh's own proxies first."""
    roles: dict[str, list[ProcessCost]] = {}
    for r in rows:
        roles.setdefault(r.role, []).append(r)
    order = {"ztunnel": 0, "waypoint": 1, "sidecar": 2, "workload": 3, "load": 4}
    out = []
    for role, procs in sorted(roles.items(), key=lambda kv: (order.get(kv[0], 9), kv[0])):
        pcts = [p.cpu_percent for p in procs if p.cpu_percent is not None]
        out.append(RoleTotal(role, len(procs), sum(p.rss_bytes for p in procs), sum(p.cpu_seconds for p in procs),
                             sum(pcts) if pcts else None))
    return out
