"""Sparklines of the mesh's total rates over the last minute: connections/s, bytes/s (and requests/s with L7)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widget import Widget
from textual.widgets import Label, Sparkline

from tui import units
from tui.traffic import RateHistory


class RateSparklines(Widget):
    """One sparkline per total rate, with its current value."""

    def __init__(self, history: RateHistory, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.history = history

    def compose(self) -> ComposeResult:
        for name, title in (("connections", "conn/s"), ("bytes", "bytes/s"), ("requests", "req/s")):
            with Horizontal(id=f"{name}-rate", classes="rate"):
                yield Label(title, classes="rate-name")
                yield Sparkline([], id=f"{name}-spark", classes="rate-spark")
                yield Label("·", id=f"{name}-now", classes="rate-now")

    def show(self) -> None:
        """Redraw from the history (called after each poll)."""
        series = {"connections": (self.history.total_connections, units.per_second),
                  "bytes": (self.history.total_bytes, units.bytes_per_second),
                  "requests": (self.history.total_requests, units.per_second)}
        for name, (values, fmt) in series.items():
            self.query_one(f"#{name}-spark", Sparkline).data = list(values)
            self.query_one(f"#{name}-now", Label).update(fmt(values[-1]) if values else "·")
        self.query_one("#requests-rate").display = any(v > 0 for v in self.history.total_requests)
