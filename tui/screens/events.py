"""Lab events: what the control plane did (started, mode switches, config applied, load runs), newest last."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header, RichLog


class LabEvents(Screen[None]):
    """The events the main screen's poll collects, shown as they arrive."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, events: list[dict[str, Any]], clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.events = events  # the main screen's list: it grows as polls bring new events
        self.clock = clock
        self._shown = 0

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="⬡")
        yield RichLog(id="events", wrap=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "lab events"
        self.show_new()
        self.set_interval(1.0, self.show_new)

    def show_new(self) -> None:
        """Write the events that arrived since the last look."""
        log = self.query_one(RichLog)
        for event in self.events[self._shown:]:
            stamp = datetime.fromtimestamp(float(event.get("time", 0)), UTC).strftime("%H:%M:%S")
            log.write(Text.assemble((stamp, "dim"), "  ", str(event.get("message", ""))))
        if self._shown == 0 and not self.events:
            log.write(Text("no events yet", style="italic"))
        self._shown = len(self.events)
