"""Per-edge traffic for the UI: scrape every agent's `/metrics`, fold Istio's series into edges, keep rates.

An edge is (source workload, destination workload, destination service). Each
connection or request is reported twice in Istio's model (reporter `source` and
`destination`); an edge takes the destination's report when there is one (it
saw what arrived) and the source's otherwise (a destination outside the mesh).
The TCP series and the L7 series of an edge are chosen apart, since different
proxies report them (in ambient mode the ztunnels report TCP, the waypoint L7):
each from `destination`, else `waypoint`, else `source` among the reporters
that have such series for the edge.
Rates are differences between two scrapes.

Errors, for `errorRate`: a request counts as an error when its response code is
5xx, or 0 (no response was sent), or when its response flags name an upstream or
routing failure (`FAILURE_FLAGS`: UO, UH, UF, NR, NC, UT, URX, UC, UPE) whatever
its code, so a 404 with NR is an error. Other 4xx are not errors: a 403 from
RBAC is policy doing its job, a 400 with DPE is the client's mistake. Like the
request rate, the error rate and the latency percentiles (p50/p99, estimated from
the histogram buckets as Prometheus' histogram_quantile does) cover the time
since the previous scrape when requests arrived in it, else everything counted.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from lab.controlplane import reach

METRICS_PORT = 15020
TCP_COUNTERS = {
    "istio_tcp_connections_opened_total": "connectionsOpened",
    "istio_tcp_connections_closed_total": "connectionsClosed",
    "istio_tcp_sent_bytes_total": "bytesSent",
    "istio_tcp_received_bytes_total": "bytesReceived",
}

FAILURE_FLAGS = frozenset({"UO", "UH", "UF", "NR", "NC", "UT", "URX", "UC", "UPE"})
PREFERENCE = ("destination", "waypoint", "source")  # whose report an edge takes, for TCP and L7 apart

EdgeKey = tuple[str, str, str]  # (source workload, destination workload, destination service)


@dataclass
class Edge:
    source: str
    destination: str
    service: str
    reporter: str = ""
    security: str = "unknown"
    totals: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    codes: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    buckets: dict[float, float] = field(default_factory=lambda: defaultdict(float))  # latency le (ms) -> count
    errors: float = 0.0  # requests that count as errors (see the module docstring)
    tcp: bool = False  # whether TCP series were folded in
    l7: bool = False  # whether L7 series were folded in

    def to_json(self, rates: dict[str, float], latency: dict[float, float] | None = None,
                error_rate: float | None = None) -> dict[str, Any]:
        """The edge for the lab API; `latency` (bucket deltas) and `error_rate` cover the last interval."""
        requests = sum(self.codes.values())
        buckets = latency if latency else self.buckets
        if error_rate is None:
            error_rate = self.errors / requests if requests else 0.0
        return {"source": self.source, "destination": self.destination, "service": self.service,
                "reporter": self.reporter, "security": self.security, **{k: v for k, v in self.totals.items()},
                "requests": requests, "errors": self.errors, "codes": dict(self.codes), "errorRate": error_rate,
                "p50": quantile(buckets, 0.5), "p99": quantile(buckets, 0.99), "rates": rates}


def is_error(code: str, flags: str) -> bool:
    """Whether one request counts as an error (see the module docstring)."""
    if code.startswith("5") or code == "0":
        return True
    return flags not in ("", "-") and not FAILURE_FLAGS.isdisjoint(flags.split(","))


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """A quantile (ms) from cumulative histogram buckets, interpolated like Prometheus' histogram_quantile."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank, prev_bound, prev_count = q * total, 0.0, 0.0
    for b in bounds:
        if buckets[b] >= rank:
            if b == float("inf"):
                return prev_bound
            span = buckets[b] - prev_count
            return prev_bound + (b - prev_bound) * ((rank - prev_count) / span if span else 1.0)
        prev_bound, prev_count = b, buckets[b]
    return prev_bound


def fold(texts: list[str]) -> dict[EdgeKey, Edge]:
    """Every agent's exposition text folded into edges (TCP and L7 series each from the preferred reporter)."""
    by_reporter: dict[str, dict[EdgeKey, Edge]] = {"destination": {}, "source": {}, "waypoint": {}}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                reporter = s.labels.get("reporter", "")
                if reporter not in by_reporter:
                    continue
                key = (s.labels.get("source_workload", "unknown"), s.labels.get("destination_workload", "unknown"),
                       s.labels.get("destination_service", "unknown"))
                edge = by_reporter[reporter].setdefault(key, Edge(*key, reporter=reporter))
                edge.security = s.labels.get("connection_security_policy", edge.security)
                if s.name in TCP_COUNTERS:
                    edge.totals[TCP_COUNTERS[s.name]] += s.value
                    edge.tcp = True
                elif s.name == "istio_requests_total":
                    code = s.labels.get("response_code", "0")
                    edge.codes[code] += s.value
                    if is_error(code, s.labels.get("response_flags", "-")):
                        edge.errors += s.value
                    edge.l7 = True
                elif s.name == "istio_request_duration_milliseconds_bucket":
                    edge.buckets[float(s.labels["le"])] += s.value
                    edge.l7 = True
    edges: dict[EdgeKey, Edge] = {}
    for key in {k for reports in by_reporter.values() for k in reports}:
        reports = [by_reporter[r][key] for r in by_reporter if key in by_reporter[r]]
        tcp = next((by_reporter[r][key] for r in PREFERENCE if key in by_reporter[r] and by_reporter[r][key].tcp),
                   None)
        l7 = next((by_reporter[r][key] for r in PREFERENCE if key in by_reporter[r] and by_reporter[r][key].l7),
                  None)
        edge = Edge(*key, reporter=(l7 or tcp or reports[0]).reporter,
                    security=(tcp or l7 or reports[0]).security)
        if tcp is not None:
            edge.totals, edge.tcp = tcp.totals, True
        if l7 is not None:
            edge.codes, edge.buckets, edge.errors, edge.l7 = l7.codes, l7.buckets, l7.errors, True
        edges[key] = edge
    return attribute_local_replies(edges)


def attribute_local_replies(edges: dict[EdgeKey, Edge]) -> dict[EdgeKey, Edge]:
    """Count a proxy's own answers (fault aborts, overflow, no healthy upstream) in the edge they cut short.

    Envoy reports a request that never reached a workload with destination workload
    `unknown`. When a source reaches that service through exactly one destination workload,
    those answers belong to that edge: an abort of 50 % on ratings shows as a 50 % error
    rate of reviews -> ratings, as a learner expects, instead of a separate 100 % row.
    """
    for key in [k for k, e in edges.items() if k[1] == "unknown" and e.l7 and k[0] != "unknown"]:
        siblings = [k for k in edges if k[0] == key[0] and k[2] == key[2] and k[1] != "unknown"]
        if len(siblings) != 1:
            continue
        local, target = edges.pop(key), edges[siblings[0]]
        for code, count in local.codes.items():
            target.codes[code] = target.codes.get(code, 0.0) + count
        for bound, count in local.buckets.items():
            target.buckets[bound] = target.buckets.get(bound, 0.0) + count
        target.errors += local.errors
        target.l7 = True
    return edges


def scrape(address: str, routes: reach.Routes | None = None) -> str:
    """One agent's `/metrics` text ("" when it does not answer), through its ssh node where `routes` says so."""
    try:
        status, body = reach.get(address, METRICS_PORT, "/metrics", 2, routes)
    except (OSError, ValueError):
        return ""
    return body.decode(errors="replace") if status == 200 else ""


class TrafficView:
    """Scrapes on demand and remembers the previous scrape to give rates."""

    def __init__(self) -> None:
        self._last: tuple[float, dict[EdgeKey, dict[str, float]]] | None = None
        self._buckets: dict[EdgeKey, dict[float, float]] = {}  # latency buckets at the last scrape

    async def snapshot(self, addresses: list[str], routes: reach.Routes | None = None) -> dict[str, Any]:
        """Scrape the agents at `addresses` (through their ssh node where `routes` says so) and fold the edges."""
        texts = await asyncio.gather(*(asyncio.to_thread(scrape, a, routes) for a in addresses))
        now = time.monotonic()
        edges = fold([t for t in texts if t])
        counters = {k: {**e.totals, "requests": sum(e.codes.values()), "errors": e.errors}
                    for k, e in edges.items()}
        out = []
        for key, edge in sorted(edges.items()):
            rates: dict[str, float] = {}
            latency: dict[float, float] | None = None
            error_rate: float | None = None
            if self._last and now > self._last[0]:
                before = self._last[1].get(key, {})
                dt = now - self._last[0]
                deltas = {k: max(0.0, v - before.get(k, 0.0)) for k, v in counters[key].items()}
                rates = {f"{k}PerSecond": v / dt for k, v in deltas.items()}
                if deltas.get("requests"):
                    error_rate = deltas.get("errors", 0.0) / deltas["requests"]
                    previous = self._buckets.get(key, {})
                    if all(n >= previous.get(le, 0.0) for le, n in edge.buckets.items()):
                        latency = {le: n - previous.get(le, 0.0) for le, n in edge.buckets.items()}
                    # else the agent restarted (its counters began again): the totals are the interval's best guess
            out.append(edge.to_json(rates, latency, error_rate))
        self._last = (now, counters)
        self._buckets = {key: dict(edge.buckets) for key, edge in edges.items()}
        return {"time": time.time(), "edges": out, "scraped": sum(1 for t in texts if t), "agents": len(addresses)}
