"""Per-edge traffic for the UI: scrape every agent's `/metrics`, fold Istio's series into edges, keep rates.

An edge is (source workload, destination workload, destination service). Each
connection or request is reported twice in Istio's model (reporter `source` and
`destination`); an edge takes the destination's report when there is one (it
saw what arrived) and the source's otherwise (a destination outside the mesh).
Rates are differences between two scrapes.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

METRICS_PORT = 15020
TCP_COUNTERS = {
    "istio_tcp_connections_opened_total": "connectionsOpened",
    "istio_tcp_connections_closed_total": "connectionsClosed",
    "istio_tcp_sent_bytes_total": "bytesSent",
    "istio_tcp_received_bytes_total": "bytesReceived",
}

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

    def to_json(self, rates: dict[str, float]) -> dict[str, Any]:
        requests = sum(self.codes.values())
        errors = sum(n for c, n in self.codes.items() if c.startswith("5") or c == "0")
        return {"source": self.source, "destination": self.destination, "service": self.service,
                "reporter": self.reporter, "security": self.security, **{k: v for k, v in self.totals.items()},
                "requests": requests, "codes": dict(self.codes),
                "errorRate": errors / requests if requests else 0.0,
                "p50": quantile(self.buckets, 0.5), "p99": quantile(self.buckets, 0.99), "rates": rates}


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
    """Every agent's exposition text folded into edges (destination reports preferred)."""
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
                elif s.name == "istio_requests_total":
                    edge.codes[s.labels.get("response_code", "0")] += s.value
                elif s.name == "istio_request_duration_milliseconds_bucket":
                    edge.buckets[float(s.labels["le"])] += s.value
    edges = dict(by_reporter["source"])
    edges.update(by_reporter["waypoint"])
    edges.update(by_reporter["destination"])
    return edges


def _scrape(address: str) -> str:
    try:
        with urllib.request.urlopen(f"http://{address}:{METRICS_PORT}/metrics", timeout=2) as r:
            return r.read().decode()
    except (OSError, ValueError):
        return ""


class TrafficView:
    """Scrapes on demand and remembers the previous scrape to give rates."""

    def __init__(self) -> None:
        self._last: tuple[float, dict[EdgeKey, dict[str, float]]] | None = None

    async def snapshot(self, addresses: list[str]) -> dict[str, Any]:
        texts = await asyncio.gather(*(asyncio.to_thread(_scrape, a) for a in addresses))
        now = time.monotonic()
        edges = fold([t for t in texts if t])
        counters = {k: {**e.totals, "requests": sum(e.codes.values())} for k, e in edges.items()}
        out = []
        for key, edge in sorted(edges.items()):
            rates: dict[str, float] = {}
            if self._last and now > self._last[0]:
                before = self._last[1].get(key, {})
                dt = now - self._last[0]
                rates = {f"{k}PerSecond": max(0.0, (v - before.get(k, 0.0)) / dt) for k, v in counters[key].items()}
            out.append(edge.to_json(rates))
        self._last = (now, counters)
        return {"time": time.time(), "edges": out, "scraped": sum(1 for t in texts if t), "agents": len(addresses)}
