"""The fault kinds the faults panel offers: layer, targets and parameters of each, and the live faults' rows.

The lab API has no route that lists its fault catalogue, so the TUI carries its
own copy for the form; tests/tui/test_model.py checks it against the lab's
(`lab.faults.catalogue`). The lab checks every value: the TUI sends what was
typed, as text, and shows the lab's refusal (it names the field).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LAYER_TITLES = {"l7": "L7 · waypoint, sidecar", "l4": "L4 · ztunnel", "node": "node", "process": "process",
                "security": "certificates"}
DIRECTIONS = ("upstream", "downstream", "both")


@dataclass(frozen=True)
class FaultParam:
    """One parameter of a kind, as the form asks for it."""

    name: str
    help: str
    default: str = ""  # shown pre-filled ("" when there is none)
    required: bool = False


@dataclass(frozen=True)
class FaultKind:
    """A kind of fault: what it does, where it is enforced, what it targets, what it needs."""

    name: str
    layer: str  # l7, l4, node, process, security
    targets: tuple[str, ...]  # service, workload, node, edge
    help: str
    params: tuple[FaultParam, ...] = ()
    direction: str = "downstream"  # the lab's default
    one_shot: bool = False  # done once when added (a kill), never listed as live

    @property
    def target_hint(self) -> str:
        """What the target field takes, in words: 'service, workload or SRC->DST'."""
        words = [("SRC->DST" if t == "edge" else t) for t in self.targets]
        if not words:
            return "no target (the whole lab)"
        return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]

    @property
    def has_direction(self) -> bool:
        """Whether it acts on one direction of traffic (L4 toxics, a one-way partition)."""
        return self.layer == "l4" or self.name == "partition"

    @property
    def has_toxicity(self) -> bool:
        """Whether it hits a share of connections (L4 toxics; L7 faults have a percentage instead)."""
        return self.layer == "l4"


TRAFFIC = ("service", "workload", "node", "edge")
HTTP = ("service", "workload", "edge")
PERCENT = FaultParam("percentage", "share of requests hit, 0-100", "100")
HEADER = FaultParam("header", "only requests with this header: NAME or NAME:VALUE")

KINDS: tuple[FaultKind, ...] = (
    FaultKind("abort", "l7", HTTP, "answer HTTP requests with an error status",
              (FaultParam("status", "HTTP status, e.g. 503", "503", True), PERCENT, HEADER)),
    FaultKind("delay", "l7", HTTP, "delay HTTP requests",
              (FaultParam("delay", "how long: 2s, 500ms", "1s", True), PERCENT, HEADER)),
    FaultKind("latency", "l4", TRAFFIC, "delay every chunk of data",
              (FaultParam("latency", "added delay in ms", "200", True), FaultParam("jitter", "+- random ms", "0"))),
    FaultKind("bandwidth", "l4", TRAFFIC, "limit throughput",
              (FaultParam("rate", "KB/s (1 KB = 1000 bytes)", "100", True),)),
    FaultKind("reset_peer", "l4", TRAFFIC, "reset connections (RST) after a time",
              (FaultParam("timeout", "ms after the connection opened (0: at once)", "0"),)),
    FaultKind("timeout", "l4", TRAFFIC, "hold connections: no data passes; close after a time",
              (FaultParam("timeout", "ms until closed (0: held until the fault is removed)", "0"),)),
    FaultKind("slicer", "l4", TRAFFIC, "split data into small chunks with delays",
              (FaultParam("average_size", "bytes per chunk", "64"), FaultParam("size_variation", "+- bytes", "0"),
               FaultParam("delay", "microseconds between chunks", "0"))),
    FaultKind("limit_data", "l4", TRAFFIC, "close connections after some bytes",
              (FaultParam("bytes", "bytes passed before the close", "1000", True),)),
    FaultKind("partition", "node", ("node", "edge"), "cut a node off, or two nodes apart (node-1->node-2)",
              direction="both"),
    FaultKind("pause_node", "node", ("node",), "freeze every process of a node until removed"),
    FaultKind("stop_node", "node", ("node",), "stop a node until removed"),
    FaultKind("kill_agent", "process", ("node",), "kill the node's ztunnel once (its supervisor restarts it)",
              one_shot=True),
    FaultKind("pause_agent", "process", ("node",), "freeze the node's ztunnel until removed"),
    FaultKind("crash_workload", "process", ("workload",), "kill a workload once (its supervisor restarts it)",
              one_shot=True),
    FaultKind("expire_cert", "security", ("workload",),
              "give a workload an expired certificate until removed: its new connections fail"),
    FaultKind("revoke", "security", ("workload",),
              "revoke a workload's identity until removed: the CA refuses it, peers refuse it"),
    FaultKind("foreign_ca", "security", ("workload",),
              "give a workload a certificate from a CA the lab does not trust, until removed"),
    FaultKind("rotate_root", "security", (), "rotate the lab's root CA and re-issue every certificate",
              (FaultParam("overlap", "true: trust old and new root meanwhile; false: swap at once", "true"),),
              one_shot=True),
)
BY_NAME = {k.name: k for k in KINDS}


def parse_ttl(text: str) -> float | None:
    """A TTL as typed ('30s', '5m', '1h', '90'): seconds, None when blank; raises ValueError naming the field."""
    text = text.strip().lower()
    if not text:
        return None
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    scale = units.get(text[-1], 0.0)
    number = text[:-1] if scale else text
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        raise ValueError(f"ttl: want a duration like 30s, 5m or 1h, got {text!r}") from None
    if seconds <= 0:
        raise ValueError(f"ttl: want a positive duration, got {text!r}")
    return seconds


@dataclass(frozen=True)
class LiveFault:
    """A fault the lab has in force, from `/v1/faults`."""

    id: str
    kind: str
    layer: str
    target: str
    params: dict[str, Any]
    direction: str
    toxicity: float
    expires: float | None  # unix time; None: until removed

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LiveFault:
        return cls(str(doc.get("id", "?")), str(doc.get("kind", "?")), str(doc.get("layer", "?")),
                   str(doc.get("targetText") or "-"), dict(doc.get("params") or {}),
                   str(doc.get("direction") or "-"), float(doc.get("toxicity", 1.0)),
                   None if doc.get("expires") is None else float(doc["expires"]))

    def left(self, now: float) -> float | None:
        """Seconds until the lab removes it by itself (None: never)."""
        return None if self.expires is None else max(0.0, self.expires - now)

    @property
    def params_text(self) -> str:
        return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params.items()) or "-"

    @property
    def short(self) -> str:
        """'abort ratings.bookinfo status=503 percentage=50'."""
        return f"{self.kind} {self.target}" + (f" {self.params_text}" if self.params else "")


def live_faults(answer: dict[str, Any]) -> list[LiveFault]:
    """The faults of a `/v1/faults` answer, oldest first."""
    return [LiveFault.from_json(f) for f in answer.get("faults", [])]


def countdown(seconds: float | None) -> str:
    """'42s', '4m05s', '-' for a fault without TTL."""
    if seconds is None:
        return "until removed"
    s = int(seconds + 0.999)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
