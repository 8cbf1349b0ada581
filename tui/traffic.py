"""Per-edge traffic: edges from the lab API, laid out in call order, with a rate history kept client-side."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Any

OUTSIDE = "outside"  # a source the mesh does not know: a caller outside the mesh (the load generator)
HISTORY = 60  # samples kept per edge (one a second)
WINDOW = 10  # samples the error rate and the response codes are counted over (10 s at one poll a second)

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
    requests: float = 0.0  # L7 totals since the reporting proxy started
    errors: float = 0.0
    codes: tuple[tuple[str, float], ...] = ()  # (response code, requests) totals

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> EdgeRow:
        """An edge of the lab API's `/v1/traffic` answer."""
        rates = doc.get("rates") or {}
        source = doc.get("source") or "unknown"
        codes = tuple(sorted((str(c), float(n)) for c, n in (doc.get("codes") or {}).items()))
        return cls(OUTSIDE if source == "unknown" else source, doc.get("destination") or "unknown",
                   doc.get("service", ""), doc.get("security") or "unknown",
                   float(rates.get("connectionsOpenedPerSecond", 0.0)),
                   float(rates.get("bytesSentPerSecond", 0.0)) + float(rates.get("bytesReceivedPerSecond", 0.0)),
                   float(rates.get("requestsPerSecond", 0.0)), float(doc.get("errorRate") or 0.0),
                   doc.get("p50"), doc.get("p99"), float(doc.get("connectionsOpened", 0.0)),
                   float(doc.get("bytesSent", 0.0)) + float(doc.get("bytesReceived", 0.0)),
                   float(doc.get("requests") or 0.0), float(doc.get("errors") or 0.0), codes)

    @property
    def key(self) -> EdgeKey:
        return (self.source, self.destination, self.service)

    @property
    def mtls(self) -> bool:
        return self.security == "mutual_tls"

    @property
    def has_l7(self) -> bool:
        """Whether an L7 proxy reported requests on this edge (then rps, errors and latency mean something)."""
        return self.requests_per_s > 0 or self.requests > 0 or self.p50 is not None

    def merged(self, other: EdgeRow) -> EdgeRow:
        """This edge with `other`'s requests added (its latency is this edge's: the requests that were answered)."""
        rps = self.requests_per_s + other.requests_per_s
        error_rate = ((self.error_rate * self.requests_per_s + other.error_rate * other.requests_per_s) / rps
                      if rps else max(self.error_rate, other.error_rate))
        codes: dict[str, float] = dict(self.codes)
        for c, n in other.codes:
            codes[c] = codes.get(c, 0.0) + n
        return replace(self, connections_per_s=self.connections_per_s + other.connections_per_s,
                       bytes_per_s=self.bytes_per_s + other.bytes_per_s, requests_per_s=rps, error_rate=error_rate,
                       p50=self.p50 if self.p50 is not None else other.p50,
                       p99=self.p99 if self.p99 is not None else other.p99,
                       requests=self.requests + other.requests, errors=self.errors + other.errors,
                       codes=tuple(sorted(codes.items())))

    @property
    def service_name(self) -> str:
        """reviews.bookinfo.svc.cluster.local → reviews."""
        return self.service.split(".")[0]


def edges_of(traffic: dict[str, Any]) -> list[EdgeRow]:
    """The edges of a `/v1/traffic` answer, requests that reached no workload folded in (`fold_unanswered`)."""
    return fold_unanswered([EdgeRow.from_json(e) for e in traffic.get("edges", [])])


def fold_unanswered(edges: list[EdgeRow]) -> list[EdgeRow]:
    """Requests an L7 proxy answered itself (a fault's abort, no healthy endpoint) reach no workload, so their
    destination is `unknown`. They belong to the caller's edge to that service: folded into it when the caller
    reaches the service's workloads over one L7 edge (reviews-v2 → ratings-v1 then shows the aborts' error rate),
    kept apart otherwise."""
    known: dict[tuple[str, str], list[EdgeRow]] = {}
    for e in edges:
        if e.destination != "unknown" and e.has_l7:
            known.setdefault((e.source, e.service), []).append(e)
    out = [e for e in edges if e.destination != "unknown"]
    for e in edges:
        if e.destination != "unknown":
            continue
        into = known.get((e.source, e.service), [])
        if len(into) == 1 and e.has_l7:
            out[out.index(into[0])] = into[0].merged(e)
        else:
            out.append(e)
    return out


@dataclass(frozen=True)
class CallRow:
    """An edge placed in call order: `prefix` draws the tree (├─▶, └─▶) under the edge that calls it."""

    edge: EdgeRow
    depth: int
    prefix: str
    via: str = ""  # for an edge into a waypoint: the service it carries, ' (details)'

    @property
    def label(self) -> str:
        if self.depth == 0:
            return f"{self.edge.source} ─▶ {self.edge.destination}{self.via}"
        return f"{self.prefix}{self.edge.destination}{self.via}"


def call_order(edges: list[EdgeRow], waypoints: frozenset[str] = frozenset()) -> list[CallRow]:
    """Edges as call trees: from each entry edge (its source calls but is never called) down what it calls.

    An edge into a waypoint (a name in `waypoints`) says which service it carries: `waypoint (details)`."""
    calls: dict[str, list[EdgeRow]] = {}
    for e in sorted(edges, key=lambda e: (e.destination, e.source, e.service)):
        calls.setdefault(e.source, []).append(e)
    called = {e.destination for e in edges}
    rows: list[CallRow] = []
    placed: set[EdgeKey] = set()

    def walk(edge: EdgeRow, depth: int, stems: str, last: bool, path: frozenset[str]) -> None:
        prefix = "" if depth == 0 else stems + ("└─▶ " if last else "├─▶ ")
        rows.append(CallRow(edge, depth, prefix, f" ({edge.service_name})" if edge.destination in waypoints else ""))
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


@dataclass(frozen=True)
class WindowFigures:
    """An edge's L7 figures over the last WINDOW samples: steadier than one poll's."""

    requests: float
    error_rate: float
    codes: tuple[tuple[str, float], ...]  # (code, share of requests), most frequent first


class RateHistory:
    """The last HISTORY samples of each edge's rates and of the totals, one sample per poll."""

    def __init__(self, length: int = HISTORY) -> None:
        self.length = length
        self.clear()

    def clear(self) -> None:
        """Forget every sample."""
        self.connections: dict[EdgeKey, deque[float]] = {}
        self.bytes: dict[EdgeKey, deque[float]] = {}
        self.requests: dict[EdgeKey, deque[float]] = {}
        self.totals: dict[EdgeKey, deque[EdgeRow]] = {}  # the edges as polled, for counts over a window
        self.total_connections: deque[float] = deque(maxlen=self.length)
        self.total_bytes: deque[float] = deque(maxlen=self.length)
        self.total_requests: deque[float] = deque(maxlen=self.length)

    def add(self, edges: list[EdgeRow]) -> None:
        """One poll's edges; an edge missing from it counts as idle."""
        seen = {e.key for e in edges}
        for e in edges:
            self.connections.setdefault(e.key, deque(maxlen=self.length)).append(e.connections_per_s)
            self.bytes.setdefault(e.key, deque(maxlen=self.length)).append(e.bytes_per_s)
            self.requests.setdefault(e.key, deque(maxlen=self.length)).append(e.requests_per_s)
            polled = self.totals.setdefault(e.key, deque(maxlen=WINDOW + 1))
            if polled and e.requests < polled[-1].requests:  # the reporting proxy restarted: its counts began again
                polled.clear()
            polled.append(e)
        for key in set(self.connections) - seen:
            self.connections[key].append(0.0)
            self.bytes[key].append(0.0)
            self.requests[key].append(0.0)
        self.total_connections.append(sum(e.connections_per_s for e in edges))
        self.total_bytes.append(sum(e.bytes_per_s for e in edges))
        self.total_requests.append(sum(e.requests_per_s for e in edges))

    def edge_connections(self, key: EdgeKey) -> list[float]:
        return list(self.connections.get(key, ()))

    def edge_bytes(self, key: EdgeKey) -> list[float]:
        return list(self.bytes.get(key, ()))

    def edge_requests(self, key: EdgeKey) -> list[float]:
        return list(self.requests.get(key, ()))

    def window(self, edge: EdgeRow) -> WindowFigures:
        """Requests, error rate and response codes of `edge` over the last WINDOW polls (the latest poll's figures
        while there is only one)."""
        polled = self.totals.get(edge.key)
        first = polled[0] if polled and len(polled) > 1 else None
        if first is None or edge.requests <= first.requests:
            return WindowFigures(0.0, edge.error_rate, share(dict(edge.codes)))
        before = dict(first.codes)
        codes = {c: n - before.get(c, 0.0) for c, n in edge.codes}
        requests = edge.requests - first.requests
        return WindowFigures(requests, max(0.0, edge.errors - first.errors) / requests,
                             share({c: n for c, n in codes.items() if n > 0}))


def share(codes: dict[str, float]) -> tuple[tuple[str, float], ...]:
    """Response codes with their share of all requests, most frequent first."""
    total = sum(codes.values())
    if total <= 0:
        return ()
    return tuple(sorted(((c, n / total) for c, n in codes.items()), key=lambda cn: (-cn[1], cn[0])))
