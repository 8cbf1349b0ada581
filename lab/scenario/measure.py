"""What a check measures, from what the lab API answered (pure: the runner fetches, this folds).

Edges. The control plane's traffic view (`lab.controlplane.telemetry.TrafficView`) folds every
agent's metrics into per-edge totals since each agent started. The runner keeps a view of its own
over the same agents as the lab API's `/v1/traffic` (ztunnels, waypoints, sidecars) and reads it
right before and after a step; an edge's figures for the step are the differences (`interval`), so
a check sees only the step's own traffic, and p50/p99 are estimated over exactly that time, whoever
else (the TUI) scrapes the lab meanwhile. A check's SRC and DST each match a workload by its name, its service or its
app label (`reviews` matches reviews-v1, -v2 and -v3), DST also by the edge's service; `*` matches
anything. Several matching edges are summed; p50/p99 are the slowest matching edge's; `security`
is the one value all active matching edges share (else `mixed(...)`), or `no traffic`.

Usage. RSS in MiB (2^20 bytes) and CPU seconds, summed over the processes of a role.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lab.scenario.checks import Measured, Quantity

PROXY_ROLES = ("ztunnel", "sidecar", "waypoint")
MIB = 1024 * 1024
COUNTERS = ("requests", "errors", "connectionsOpened")


@dataclass
class Facts:
    """Everything a step's checks may look at; usage and certs are fetched only when a check asks."""

    load: dict[str, Any] | None = None  # the last load run's report
    result: dict[str, Any] | None = None  # the step's answer
    edges: list[dict[str, Any]] | None = None  # the step's interval (see `interval`)
    workloads: dict[str, Any] = field(default_factory=dict)  # the lab state's workloads
    usage: Callable[[], list[dict[str, Any]]] = list
    certs: Callable[[], list[dict[str, Any]]] = list


def interval(before: dict[str, Any] | None, after: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-edge figures of the time between two `/v1/traffic` answers (before None: everything so far)."""
    previous = {(e["source"], e["destination"], e["service"]): e for e in (before or {}).get("edges", [])}
    out = []
    for e in after.get("edges", []):
        old = previous.get((e["source"], e["destination"], e["service"]), {})
        delta = {k: max(0.0, float(e.get(k) or 0) - float(old.get(k) or 0)) for k in COUNTERS}
        old_codes = old.get("codes") or {}
        codes = {c: n - old_codes.get(c, 0) for c, n in (e.get("codes") or {}).items() if n - old_codes.get(c, 0) > 0}
        out.append({"source": e["source"], "destination": e["destination"], "service": e["service"],
                    "security": e.get("security", "unknown"), "requests": delta["requests"],
                    "errors": delta["errors"], "connections": delta["connectionsOpened"], "codes": codes,
                    "p50": e.get("p50") if delta["requests"] else None,
                    "p99": e.get("p99") if delta["requests"] else None})
    return out


def side_matches(name: str, workload: str, workloads: dict[str, Any], service: str | None = None) -> bool:
    """Whether an edge end (a workload, and for the destination its service FQDN) is the one a check names."""
    if name in ("*", workload):
        return True
    w = workloads.get(workload) or {}
    if name in (w.get("service"), w.get("app")):
        return True
    return service is not None and name in (service, service.split(".")[0])


def measure(q: Quantity, facts: Facts) -> Measured:
    """The value of quantity `q` in `facts`."""
    if q.subject == "edge":
        return _edge(q, facts)
    if q.subject == "load":
        return _load(q, facts.load)
    if q.subject == "usage":
        return _usage(q, facts.usage())
    if q.subject == "certs":
        return Measured(float(sum(1 for c in facts.certs() if identity_matches(q.args[0], c["identity"]))))
    return _result(q, facts.result)


def _edge(q: Quantity, facts: Facts) -> Measured:
    src, dst = q.args
    matched = [e for e in facts.edges or []
               if side_matches(src, e["source"], facts.workloads)
               and side_matches(dst, e["destination"], facts.workloads, e["service"])]
    active = [e for e in matched if e["requests"] or e["connections"]]
    requests = sum(e["requests"] for e in active)
    none = f"no traffic on {src}->{dst}"
    if q.metric == "security":
        kinds = sorted({e["security"] for e in active})
        return Measured(None if not kinds else kinds[0] if len(kinds) == 1 else f"mixed({','.join(kinds)})",
                        missing=none)
    if q.metric in ("requests", "connections"):
        return Measured(sum(e[q.metric] for e in active))
    if q.metric == "errors":
        return Measured(sum(e["errors"] for e in active), requests)
    if q.metric == "error_rate":
        return Measured(sum(e["errors"] for e in active) / requests if requests else None,
                        missing=f"no requests on {src}->{dst} (L7 figures need a waypoint or sidecars)")
    if q.metric.startswith("codes."):
        return Measured(sum(_code_count(e["codes"], q.metric[6:]) for e in active), requests)
    values = [e[q.metric[:3]] for e in active if e[q.metric[:3]] is not None]  # p50_ms, p99_ms
    return Measured(max(values) if values else None, unit="ms",
                    missing=f"no requests on {src}->{dst} (L7 figures need a waypoint or sidecars)")


def _code_count(codes: dict[str, float], code: str) -> float:
    if code.endswith("xx"):
        return sum(n for c, n in codes.items() if c.startswith(code[0]))
    return float(codes.get(code, 0))


def _load(q: Quantity, load: dict[str, Any] | None) -> Measured:
    if load is None:
        return Measured(None, missing="no load run yet")
    group, _, key = q.metric.partition(".")
    if not key:
        return Measured(float(load.get(group) or 0))
    if group == "latency_ms":
        found = (load.get("latency_ms") or {}).get(key)
        return Measured(found, unit="ms",
                        missing=f"no latency '{key}' (have: {', '.join(load.get('latency_ms') or {})})")
    counts = load.get(group) or {}
    value = _code_count(counts, key) if group == "codes" else float(counts.get(key, 0))
    return Measured(value, float(load.get("count") or 0))


def _usage(q: Quantity, processes: list[dict[str, Any]]) -> Measured:
    role = q.args[0]
    roles = PROXY_ROLES if role == "proxies" else (role,)
    mine = [p for p in processes if p.get("role") in roles]
    if q.metric == "count":
        return Measured(float(len(mine)))
    if not mine:
        return Measured(None, missing=f"no {role} process runs")
    if q.metric == "rss_mb":
        return Measured(sum(p["rssBytes"] for p in mine) / MIB, unit="MiB")
    return Measured(sum(p["cpuSeconds"] for p in mine), unit="s")


def identity_matches(name: str, identity: str) -> bool:
    """A SPIFFE ID named in full, by its `ns/NS/sa/SA` tail, or by its service account."""
    return identity == name or identity.endswith("/" + name) or identity.endswith("/sa/" + name)


def _result(q: Quantity, result: dict[str, Any] | None) -> Measured:
    value: Any = result
    for part in q.metric.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, (list, tuple, dict)):
        return Measured(float(len(value)))
    if isinstance(value, bool):
        return Measured(float(value))
    if isinstance(value, (int, float)):
        return Measured(float(value))
    return Measured(value if isinstance(value, str) else None, missing=f"the step's answer has no '{q.metric}'")
