"""Live access logs of every node's ztunnel, filterable by any words (workload, service, direction, outcome)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static

from lab.errors import LabError
from tui import units
from tui.accesslog import AccessEntry, parse_logs
from tui.connection import LabApi, LabConnection, describe

TAIL = 300  # log lines read per node and refresh


def ztunnel_log(node: str) -> Callable[[LabApi], dict[str, Any]]:
    """The call that reads the last TAIL lines of `node`'s ztunnel log."""
    return lambda api: api.logs(node, "ztunnel", tail=TAIL)


class AccessLogs(Screen[None]):
    """One row per proxied connection, newest at the bottom; typing in the filter narrows the rows."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("ctrl+l", "toggle_live", "Live/pause")]
    needle: reactive[str] = reactive("")
    live: reactive[bool] = reactive(True)

    def __init__(self, connection: LabConnection, nodes: list[str], refresh_seconds: float = 1.0) -> None:
        super().__init__()
        self.connection = connection
        self.nodes = nodes
        self.refresh_seconds = refresh_seconds
        self.entries: list[AccessEntry] = []
        self._shown: list[AccessEntry] = []

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="⬡")
        yield Input(placeholder="filter: words that must all appear, e.g. reviews inbound", id="filter")
        yield DataTable(id="entries", cursor_type="row", zebra_stripes=True)
        yield Static("", id="count")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"meshlab · {self.connection.lab}"
        self.sub_title = "access logs (ztunnel)"
        table = self.query_one(DataTable)
        table.add_columns("time", "node", "dir", "source", "destination", "service", "mTLS", "sent", "recv", "ms",
                          "outcome")
        self.load()
        if self.refresh_seconds > 0:
            self.set_interval(self.refresh_seconds, self.load)
        self.query_one(Input).focus()

    @on(Input.Changed, "#filter")
    def _filter(self, event: Input.Changed) -> None:
        self.needle = event.value

    def watch_needle(self) -> None:
        self.show()

    def action_toggle_live(self) -> None:
        self.live = not self.live
        self.show()

    @work(exclusive=True)
    async def load(self) -> None:
        """Read the last TAIL lines of every ztunnel's log (a stale read is dropped for a newer one)."""
        if not self.live and self.entries:
            return
        try:
            answers = await asyncio.gather(*(self.connection.call(ztunnel_log(n)) for n in self.nodes))
        except LabError as e:
            self.query_one("#count", Static).update(Text(f"lab unavailable: {describe(e)}", style="red"))
            return
        self.entries = parse_logs({a["node"]: str(a.get("text", "")) for a in answers})
        self.show()

    def show(self) -> None:
        """Fill the table with the entries that match the filter (only when they changed)."""
        shown = [e for e in self.entries if e.matches(self.needle)] if self.needle.strip() else list(self.entries)
        state = "live" if self.live else "paused (ctrl+l resumes)"
        self.query_one("#count", Static).update(f"{len(shown)} of {len(self.entries)} connections · {state}")
        if shown == self._shown:
            return
        self._shown = shown
        table = self.query_one(DataTable)
        table.clear()
        for e in shown:
            table.add_row(e.time[11:23], e.node, e.direction[:3], e.source, e.destination, e.service.split(".")[0],
                          Text("🔒", style="green") if e.mtls else Text("⚠ plain", style="bold red"),
                          units.size(e.bytes_sent), units.size(e.bytes_received), f"{e.duration_ms:.0f}",
                          Text(e.outcome, style="green" if e.outcome == "ok" else "bold red"))
        self.call_after_refresh(table.scroll_end, animate=False)
