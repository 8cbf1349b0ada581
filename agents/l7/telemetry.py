"""L7 telemetry of a waypoint or sidecar: Istio's request metrics, their Prometheus exposition, the access log.

Every request the L7 engine answers (proxied or a local reply) ends as one `RequestRecord`
given to `L7Telemetry.record`. That adds one to `istio_requests_total` and one observation
to each of the three histograms, all under the same label values: the ztunnel's label set
(`agents.ztunnel.telemetry.LABELS`, with `request_protocol="http"`) plus `response_code`
and `grpc_response_status` (always "": gRPC is not parsed here). A local reply that never
reached a destination workload (403 RBAC, 404 NR, 503 UH...) has destination workload
labels "unknown", as Envoy reports them.

Buckets are Istio's defaults: durations use Envoy's default histogram bounds (ms); request
and response sizes (bodies, in bytes) use Istio's exponential size buckets 1, 10, ... 10^7.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from agents.ztunnel.telemetry import LABELS as TCP_LABELS
from agents.ztunnel.telemetry import LOG_RING, UNKNOWN, Peer, escape_help, escape_label

LABELS = TCP_LABELS + ("response_code", "grpc_response_status")
REQUESTS = "istio_requests_total"
DURATION = "istio_request_duration_milliseconds"
REQUEST_BYTES = "istio_request_bytes"
RESPONSE_BYTES = "istio_response_bytes"
DURATION_BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
                    1800000, 3600000)
SIZE_BUCKETS = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000)
HISTOGRAMS = {DURATION: DURATION_BUCKETS, REQUEST_BYTES: SIZE_BUCKETS, RESPONSE_BYTES: SIZE_BUCKETS}
HELP = {
    REQUESTS: "Total requests handled by an Istio proxy",
    DURATION: "Duration of requests in milliseconds",
    REQUEST_BYTES: "Size of HTTP request bodies in bytes",
    RESPONSE_BYTES: "Size of HTTP response bodies in bytes",
}
LabelValues = tuple[str, ...]
_BOUNDS = (DURATION_BUCKETS, SIZE_BUCKETS, SIZE_BUCKETS)  # of the histograms in `record`'s order


def peer_of_endpoint(endpoint: Mapping[str, Any] | None) -> Peer:
    """What the labels say about a destination endpoint (the engine's endpoint dicts)."""
    if not endpoint:
        return Peer()
    name = endpoint.get("workload") or UNKNOWN
    app, version = endpoint.get("app") or "", endpoint.get("version") or ""
    return Peer(name, endpoint.get("namespace") or UNKNOWN, app or UNKNOWN, version or UNKNOWN, app or name,
                version or "latest")


@dataclass(slots=True)
class RequestRecord:
    """One request from its head to the last response byte: the metrics' labels and the access log line."""

    reporter: str
    method: str = ""
    path: str = ""
    authority: str = ""
    protocol: str = "HTTP/1.1"
    request_id: str = ""
    source: Peer = field(default_factory=Peer)
    source_principal: str | None = None
    source_address: str = ""
    security: str = "none"
    destination: Peer = field(default_factory=Peer)
    destination_principal: str | None = None
    service_host: str = UNKNOWN  # destination_service: the FQDN
    service_name: str = UNKNOWN
    service_namespace: str = UNKNOWN
    code: int = 0  # 0: no response was sent (the downstream went away, or a reset after headers)
    flags: list[str] = field(default_factory=list)  # Envoy's response flags, e.g. ["UO"]
    upstream_host: str | None = None
    upstream_cluster: str | None = None
    route_name: str | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    attempts: int = 0
    detail: str | None = None  # why a local reply was sent, for the log line
    start: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)

    @property
    def response_flags(self) -> str:
        """Envoy's %RESPONSE_FLAGS%: comma-separated, "-" for none."""
        return ",".join(self.flags) if self.flags else "-"

    def labels(self) -> LabelValues:
        """The label values in `LABELS` order."""
        s, d, cluster = self.source, self.destination, UNKNOWN
        return (self.reporter, s.workload, s.namespace, self.source_principal or UNKNOWN, s.app, s.version,
                s.canonical_service, s.canonical_revision, cluster,
                d.workload, d.namespace, self.destination_principal or UNKNOWN, d.app, d.version,
                self.service_host, self.service_name, self.service_namespace, d.canonical_service,
                d.canonical_revision, cluster, "http", self.response_flags, self.security, str(self.code), "")

    def log_entry(self, duration_ms: float) -> dict[str, Any]:
        """The access log line (JSON object) of this request."""
        return {
            "start_time": datetime.fromtimestamp(self.start, UTC).isoformat(timespec="milliseconds"),
            "reporter": self.reporter, "method": self.method, "path": self.path, "authority": self.authority,
            "protocol": self.protocol, "response_code": self.code, "response_flags": self.response_flags,
            "duration_ms": round(duration_ms, 3), "upstream_host": self.upstream_host,
            "upstream_cluster": self.upstream_cluster, "route_name": self.route_name,
            "bytes_received": self.request_bytes, "bytes_sent": self.response_bytes,
            "request_id": self.request_id, "attempts": self.attempts,
            "source": {"workload": self.source.workload, "namespace": self.source.namespace,
                       "principal": self.source_principal, "address": self.source_address},
            "destination": {"workload": self.destination.workload, "namespace": self.destination.namespace,
                            "principal": self.destination_principal, "service": self.service_host},
            "connection_security_policy": self.security, "detail": self.detail,
        }


class _Histogram:
    """One histogram series: per-bucket counts (not cumulative), sum and count."""

    __slots__ = ("counts", "sum", "count")

    def __init__(self, size: int) -> None:
        self.counts = [0] * (size + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0


class L7Telemetry:
    """The request metrics and access log of one L7 proxy process (event loop thread only)."""

    def __init__(self, out: TextIO | None = None, *, log: bool = True) -> None:
        self.out = out if out is not None else sys.stdout
        self.log = log  # False: keep the ring, write no lines (benchmarks)
        self.requests: dict[LabelValues, int] = {}
        self.histograms: dict[str, dict[LabelValues, _Histogram]] = {name: {} for name in HISTOGRAMS}
        self.logs: deque[dict[str, Any]] = deque(maxlen=LOG_RING)
        self._flush_pending = False
        self._series: dict[LabelValues, tuple[_Histogram, ...]] = {}  # per label set: duration, request, response

    def record(self, rec: RequestRecord) -> None:
        """Count one finished request and write its access log line."""
        duration = (time.perf_counter() - rec.started) * 1000.0
        labels = rec.labels()
        self.requests[labels] = self.requests.get(labels, 0) + 1
        series = self._series.get(labels)
        if series is None:  # a new label set: its three histograms, found by one lookup from now on
            series = self._series[labels] = tuple(
                self.histograms[name].setdefault(labels, _Histogram(len(HISTOGRAMS[name])))
                for name in (DURATION, REQUEST_BYTES, RESPONSE_BYTES))
        for h, bounds, value in zip(series, _BOUNDS, (duration, rec.request_bytes, rec.response_bytes)):
            h.counts[bisect_left(bounds, value)] += 1
            h.sum += value
            h.count += 1
        entry = rec.log_entry(duration)
        self.logs.append(entry)
        if self.log:
            try:
                self.out.write(json.dumps(entry) + "\n")
            except (OSError, ValueError):
                return  # stdout gone (the supervisor restarted?): the ring buffer still has it
            self._flush_soon()

    def _flush_soon(self) -> None:
        """Flush once the event loop has run what is ready: the lines of requests ending together share one
        write (a flush per line was a system call per request); without a running loop, flush now."""
        if self._flush_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._flush()
            return
        self._flush_pending = True
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        try:
            self.out.flush()
        except (OSError, ValueError):
            pass

    def render(self) -> str:
        """The metrics in the Prometheus text format 0.0.4."""
        lines = [f"# HELP {REQUESTS} {escape_help(HELP[REQUESTS])}", f"# TYPE {REQUESTS} counter"]
        for labels, value in sorted(self.requests.items()):
            lines.append(f"{REQUESTS}{{{label_text(labels)}}} {value}")
        for name, series in self.histograms.items():
            bounds = HISTOGRAMS[name]
            lines.append(f"# HELP {name} {escape_help(HELP[name])}")
            lines.append(f"# TYPE {name} histogram")
            for labels, h in sorted(series.items()):
                text = label_text(labels)
                running = 0
                for bound, n in zip((*(_number(b) for b in bounds), "+Inf"), h.counts):
                    running += n
                    lines.append(f'{name}_bucket{{{text},le="{bound}"}} {running}')
                lines.append(f"{name}_sum{{{text}}} {_number(h.sum)}")
                lines.append(f"{name}_count{{{text}}} {h.count}")
        return "\n".join(lines) + "\n"

    def stats(self) -> dict[str, Any]:
        """Request counts by label set, as JSON (the admin API's view)."""
        return {"requests": [{"labels": dict(zip(LABELS, labels)), "value": value}
                             for labels, value in sorted(self.requests.items())]}


def label_text(labels: LabelValues) -> str:
    """`name="value",...` for one series."""
    return ",".join(f'{k}="{escape_label(v)}"' for k, v in zip(LABELS, labels))


def _number(value: float) -> str:
    """A number as the exposition writes it: integers without a fraction."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))

