"""Per-edge traffic: edges from the lab API, laid out in call order, with a rate history kept client-side."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

OUTSIDE = "outside"  # a source the mesh does not know: a caller outside the mesh (the load generator)
HISTORY = 60  # samples kept per edge (one a second)

EdgeKey = tuple[str, str, str]


@dataclass(frozen=True)
class EdgeRow:
    """One edge (source workload → destination workload of a service) with its totals and rates."""

    source: str
    destination: str
    service: str
    security: str  # mutual_tls | none | unknown
    connections_per_s: float
    bytes_per_s: float
    requests_per_s: float
    error_rate: float
    p50: float | None
    p99: float | None
    connections: float
    bytes_total: float

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> EdgeRow:
        """An edge of the lab API's `/v1/traffic` answer."""
        rates = doc.get("rates") or {}
        source = doc.get("source") or "unknown"
        return cls(OUTSIDE if source == "unknown" else source, doc.get("destination") or "unknown",
                   doc.get("service", ""), doc.get("security") or "unknown",
                   float(rates.get("connectionsOpenedPerSecond", 0.0)),
                   float(rates.get("bytesSentPerSecond", 0.0)) + float(rates.get("bytesReceivedPerSecond", 0.0)),
                   float(rates.get("requestsPerSecond", 0.0)), float(doc.get("errorRate") or 0.0),
                   doc.get("p50"), doc.get("p99"), float(doc.get("connectionsOpened", 0.0)),
                   float(doc.get("bytesSent", 0.0)) + float(doc.get("bytesReceived", 0.0)))

    @property
    def key(self) -> EdgeKey:
        return (self.source, self.destination, self.service)

    @property
    def mtls(self) -> bool:
        return self.security == "mutual_tls"

    @property
    def has_l7(self) -> bool:
        """Whether an L7 proxy reported requests on this edge (then rps, errors and latency mean something)."""
        return self.requests_per_s > 0 or self.p50 is not None


def edges_of(traffic: dict[str, Any]) -> list[EdgeRow]:
    """The edges of a `/v1/traffic` answer."""
    return [EdgeRow.from_json(e) for e in traffic.get("edges", [])]


@dataclass(frozen=True)
class CallRow:
    """An edge placed in call order: `prefix` draws the tree (├─▶, └─▶) under the edge that calls it."""

    edge: EdgeRow
    depth: int
    prefix: str

    @property
    def label(self) -> str:
        if self.depth == 0:
            return f"{self.edge.source} ─▶ {self.edge.destination}"
        return f"{self.prefix}{self.edge.destination}"


def call_order(edges: list[EdgeRow]) -> list[CallRow]:
    """Edges as call trees: from each entry edge (its source calls but is never called) down what it calls."""
    calls: dict[str, list[EdgeRow]] = {}
    for e in sorted(edges, key=lambda e: (e.destination, e.source, e.service)):
        calls.setdefault(e.source, []).append(e)
    called = {e.destination for e in edges}
    rows: list[CallRow] = []
    placed: set[EdgeKey] = set()

    def walk(edge: EdgeRow, depth: int, stems: str, last: bool, path: frozenset[str]) -> None:
        prefix = "" if depth == 0 else stems + ("└─▶ " if last else "├─▶ ")
        rows.append(CallRow(edge, depth, prefix))
        placed.add(edge.key)
        below = stems + ("    " if last else "│   ") if depth > 0 else ""
        children = [c for c in calls.get(edge.destination, []) if c.destination not in path]
        for i, child in enumerate(children):
            walk(child, depth + 1, below, i == len(children) - 1, path | {child.destination})

    entries = [e for e in sorted(edges, key=lambda e: (e.source != OUTSIDE, e.source, e.destination))
               if e.source not in called]
    for e in entries:
        walk(e, 0, "", True, frozenset({e.source, e.destination}))
    for e in sorted(edges, key=lambda e: e.key):  # edges only reachable through a cycle
        if e.key not in placed:
            walk(e, 0, "", True, frozenset({e.source, e.destination}))
    return rows


class RateHistory:
    """The last HISTORY samples of each edge's rates and of the totals, one sample per poll."""

    def __init__(self, length: int = HISTORY) -> None:
        self.length = length
        self.clear()

    def clear(self) -> None:
        """Forget every sample."""
        self.connections: dict[EdgeKey, deque[float]] = {}
        self.bytes: dict[EdgeKey, deque[float]] = {}
        self.total_connections: deque[float] = deque(maxlen=self.length)
        self.total_bytes: deque[float] = deque(maxlen=self.length)
        self.total_requests: deque[float] = deque(maxlen=self.length)

    def add(self, edges: list[EdgeRow]) -> None:
        """One poll's edges; an edge missing from it counts as idle."""
        seen = {e.key for e in edges}
        for e in edges:
            self.connections.setdefault(e.key, deque(maxlen=self.length)).append(e.connections_per_s)
            self.bytes.setdefault(e.key, deque(maxlen=self.length)).append(e.bytes_per_s)
        for key in set(self.connections) - seen:
            self.connections[key].append(0.0)
            self.bytes[key].append(0.0)
        self.total_connections.append(sum(e.connections_per_s for e in edges))
        self.total_bytes.append(sum(e.bytes_per_s for e in edges))
        self.total_requests.append(sum(e.requests_per_s for e in edges))

    def edge_connections(self, key: EdgeKey) -> list[float]:
        return list(self.connections.get(key, ()))

    def edge_bytes(self, key: EdgeKey) -> list[float]:
        return list(self.bytes.get(key, ()))
