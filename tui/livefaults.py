"""The lab's live faults as the TUI shows them (from `/v1/faults`), their countdown, and the TTL a person types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
