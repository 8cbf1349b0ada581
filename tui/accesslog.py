"""ztunnel access logs: the JSON lines of a ztunnel's log, parsed and filtered."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AccessEntry:
    """One proxied connection as a ztunnel logged it."""

    time: str
    node: str
    direction: str
    source: str
    destination: str
    service: str
    protocol: str
    bytes_sent: int
    bytes_received: int
    duration_ms: float
    outcome: str
    detail: str

    @property
    def mtls(self) -> bool:
        return self.protocol == "hbone"

    def matches(self, needle: str) -> bool:
        """Whether every word of `needle` occurs in one of the entry's fields (case-insensitive)."""
        words = needle.lower().split()
        text = " ".join(str(v) for v in vars(self).values()).lower()
        return all(w in text for w in words)


def parse_line(node: str, line: str) -> AccessEntry | None:
    """An access-log entry from one log line, None for lines that are not one."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        doc: dict[str, Any] = json.loads(line)
    except ValueError:
        return None
    if "direction" not in doc:
        return None
    src, dst = doc.get("source") or {}, doc.get("destination") or {}
    return AccessEntry(str(doc.get("start_time", "")), node, str(doc.get("direction", "")),
                       str(src.get("workload") or src.get("address") or "?"),
                       str(dst.get("workload") or dst.get("address") or "?"), str(doc.get("service") or ""),
                       str(doc.get("protocol", "")), int(doc.get("bytes_sent") or 0),
                       int(doc.get("bytes_received") or 0), float(doc.get("duration_ms") or 0),
                       str(doc.get("outcome", "")), str(doc.get("detail") or ""))


def parse_logs(logs: dict[str, str]) -> list[AccessEntry]:
    """Every access-log entry of several nodes' ztunnel logs, oldest first."""
    entries = [e for node, text in logs.items() for ln in text.splitlines() if (e := parse_line(node, ln))]
    return sorted(entries, key=lambda e: (e.time, e.node))


def agent_lines(text: str) -> list[str]:
    """The lines of an agent's log that are not access-log entries: startup, config versions, certificates."""
    return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("{")]
