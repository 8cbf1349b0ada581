"""L4 telemetry of the ztunnel: Istio's TCP counters, their Prometheus text exposition, and the access log.

Each proxied connection is a `ConnectionRecord`. Its labels are fixed once the
ztunnel knows how the connection was set up (who the source and destination
are, whether the upstream answered), and only then is it counted as opened; it
is counted as closed with the same labels, so for every series opened ==
closed once the connections are done, and the byte counters are exact.

Byte directions follow Istio's definitions (istio.io, "Istio Standard Metrics"):
`istio_tcp_sent_bytes_total` is "bytes sent during response" — bytes from the
destination workload towards the client (upstream → downstream);
`istio_tcp_received_bytes_total` is "bytes received during request" — bytes from
the client towards the destination (downstream → upstream). Both reporters use
this same convention, so the source and destination series of an edge agree.
The access log's `bytes_sent`/`bytes_received` mean the same (as Envoy's
BYTES_SENT/BYTES_RECEIVED: towards/from the downstream client).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from agents.ztunnel.config import Service, Workload

UNKNOWN = "unknown"
LABELS = (
    "reporter", "source_workload", "source_workload_namespace", "source_principal", "source_app",
    "source_version", "source_canonical_service", "source_canonical_revision", "source_cluster",
    "destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
    "destination_version", "destination_service", "destination_service_name", "destination_service_namespace",
    "destination_canonical_service", "destination_canonical_revision", "destination_cluster",
    "request_protocol", "response_flags", "connection_security_policy",
)
OPENED, CLOSED = "istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total"
SENT, RECEIVED = "istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total"
HELP = {
    OPENED: "Total TCP connections opened",
    CLOSED: "Total TCP connections closed",
    SENT: "Bytes sent during response (destination to source) over TCP connections",
    RECEIVED: "Bytes received during request (source to destination) over TCP connections",
}
LOG_RING = 1000
LabelValues = tuple[str, ...]


@dataclass(frozen=True)
class Peer:
    """What the labels say about one end of a connection (a workload, or what baggage told of one)."""

    workload: str = UNKNOWN
    namespace: str = UNKNOWN
    app: str = UNKNOWN
    version: str = UNKNOWN
    canonical_service: str = UNKNOWN
    canonical_revision: str = UNKNOWN

    @classmethod
    def of(cls, w: Workload | None) -> Peer:
        if w is None:
            return cls()
        return cls(w.name, w.namespace, w.app or UNKNOWN, w.version or UNKNOWN, w.canonical_service,
                   w.canonical_revision)


def tcp_labels(reporter: str, source: Peer, source_principal: str | None, destination: Peer,
               destination_principal: str | None, service: Service | None, flags: str, security: str,
               cluster: str = UNKNOWN) -> LabelValues:
    """The label values of one connection, in `LABELS` order."""
    return (
        reporter, source.workload, source.namespace, source_principal or UNKNOWN, source.app, source.version,
        source.canonical_service, source.canonical_revision, cluster,
        destination.workload, destination.namespace, destination_principal or UNKNOWN, destination.app,
        destination.version, service.hostname if service else UNKNOWN, service.name if service else UNKNOWN,
        service.namespace if service else UNKNOWN, destination.canonical_service,
        destination.canonical_revision, cluster, "tcp", flags, security,
    )


@dataclass
class ConnectionRecord:
    """One connection from accept to close: what the access log line and the counters are made of."""

    direction: str                      # "outbound" | "inbound"
    source_address: str
    destination_address: str
    start: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    source: Peer = field(default_factory=Peer)
    source_identity: str | None = None
    destination: Peer = field(default_factory=Peer)
    destination_identity: str | None = None
    destination_workload_address: str | None = None
    service: str | None = None
    protocol: str = "tcp"               # "hbone" | "tcp"
    trace_id: str | None = None
    labels: LabelValues | None = None
    opened: bool = False
    detail: str | None = None           # why a connection failed, for the log line

    def log_entry(self, outcome: str, sent: int, received: int, flags: str) -> dict[str, Any]:
        return {
            "start_time": datetime.fromtimestamp(self.start, UTC).isoformat(timespec="milliseconds"),
            "duration_ms": round((time.monotonic() - self.started) * 1000),
            "direction": self.direction, "protocol": self.protocol,
            "source": {"workload": self.source.workload, "namespace": self.source.namespace,
                       "identity": self.source_identity, "address": self.source_address},
            "destination": {"workload": self.destination.workload, "namespace": self.destination.namespace,
                            "identity": self.destination_identity, "address": self.destination_address,
                            "workload_address": self.destination_workload_address},
            "service": self.service, "bytes_sent": sent, "bytes_received": received,
            "outcome": outcome, "response_flags": flags, "trace_id": self.trace_id, "detail": self.detail,
        }


class Telemetry:
    """The counters and the access log of one ztunnel (touched from the event loop thread only)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.counters: dict[str, dict[LabelValues, int]] = {name: {} for name in HELP}
        self.logs: deque[dict[str, Any]] = deque(maxlen=LOG_RING)
        self.outcomes: Counter[str] = Counter()
        self.active = 0

    def opened(self, record: ConnectionRecord, labels: LabelValues) -> None:
        """Count a connection as opened with its final labels."""
        record.labels, record.opened = labels, True
        self._add(OPENED, labels, 1)
        self.active += 1

    def closed(self, record: ConnectionRecord, outcome: str, sent: int = 0, received: int = 0,
               flags: str = "-") -> None:
        """Count a connection as closed (opening it first if it never was) and write its log line."""
        if not record.opened:
            assert record.labels is not None, "a connection is labelled before it is closed"
            self.opened(record, record.labels)
        labels = record.labels
        assert labels is not None
        self._add(CLOSED, labels, 1)
        self._add(SENT, labels, sent)
        self._add(RECEIVED, labels, received)
        self.active -= 1
        self.outcomes[outcome.split(":", 1)[0]] += 1
        entry = record.log_entry(outcome, sent, received, flags)
        self.logs.append(entry)
        try:
            self.out.write(json.dumps(entry) + "\n")
            self.out.flush()
        except (OSError, ValueError):
            pass  # stdout gone (the supervisor restarted?): the ring buffer still has it

    def _add(self, metric: str, labels: LabelValues, value: int) -> None:
        series = self.counters[metric]
        series[labels] = series.get(labels, 0) + value

    def prometheus(self) -> str:
        """The counters in the Prometheus text format 0.0.4."""
        lines: list[str] = []
        for metric, series in self.counters.items():
            lines.append(f"# HELP {metric} {escape_help(HELP[metric])}")
            lines.append(f"# TYPE {metric} counter")
            for labels, value in sorted(series.items()):
                text = ",".join(f'{k}="{escape_label(v)}"' for k, v in zip(LABELS, labels))
                lines.append(f"{metric}{{{text}}} {value}")
        return "\n".join(lines) + "\n"

    def stats(self) -> dict[str, Any]:
        """The counters as JSON, plus connection outcomes."""
        return {
            "active_connections": self.active,
            "outcomes": dict(self.outcomes),
            "counters": {metric: [{"labels": dict(zip(LABELS, labels)), "value": value}
                                  for labels, value in sorted(series.items())]
                         for metric, series in self.counters.items()},
        }


def escape_label(value: str) -> str:
    """A label value escaped for the text format: backslash, double quote and line feed."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    """HELP text escaped for the text format: backslash and line feed."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def peer_from_baggage(values: Mapping[str, str]) -> Peer:
    """The source as W3C baggage describes it (the keys `headers.baggage` writes)."""
    app = values.get("service.name") or UNKNOWN
    version = values.get("service.version") or UNKNOWN
    return Peer(values.get("k8s.workload.name") or UNKNOWN, values.get("k8s.namespace.name") or UNKNOWN,
                app, version, app, version)
