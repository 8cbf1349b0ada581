"""Faults: not available in this version; lists the kinds the lab will offer (DESIGN §7) and does nothing else."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

FAULT_KINDS: tuple[tuple[str, str, str], ...] = (
    ("L7 (waypoint, sidecar)", "delay", "hold requests for a fixed time, for a percentage, by match"),
    ("L7 (waypoint, sidecar)", "abort", "answer with a status code instead of the upstream"),
    ("L4 (ztunnel, sidecar)", "latency + jitter", "delay bytes in one direction"),
    ("L4 (ztunnel, sidecar)", "bandwidth", "cap the byte rate"),
    ("L4 (ztunnel, sidecar)", "reset_peer", "reset connections"),
    ("L4 (ztunnel, sidecar)", "timeout / blackhole", "stop forwarding, keep the connection open"),
    ("L4 (ztunnel, sidecar)", "slicer", "split data into small pieces with delays"),
    ("L4 (ztunnel, sidecar)", "limit_data", "close after a number of bytes"),
    ("node and process", "partition", "cut a node (or a pair of nodes) off"),
    ("node and process", "stop / pause node", "stop or freeze every process of a node"),
    ("node and process", "kill / pause agent", "kill or freeze a ztunnel, waypoint or sidecar"),
    ("node and process", "crash workload", "kill a workload's process"),
    ("security", "expire / revoke certificate", "make a workload's certificate invalid"),
    ("security", "rotate root", "replace the lab's root CA"),
)


def fault_table() -> Table:
    table = Table(box=None, header_style="bold", padding=(0, 2), pad_edge=False)
    table.add_column("where")
    table.add_column("fault", style="bold")
    table.add_column("what it will do")
    for where, kind, what in FAULT_KINDS:
        table.add_row(where, kind, what)
    return table


class Faults(Screen[None]):
    """A clearly labelled placeholder: the fault kinds, no behaviour."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="⬡")
        with VerticalScroll():
            yield Static(Text.assemble(("Faults are not available in this version of meshlab.", "bold yellow"),
                                       "\nThe lab API has no fault routes yet (they arrive with issue 8), so nothing "
                                       "here can be injected. Live faults, each with an optional TTL, will be:"),
                         id="not-available", classes="panel")
            yield Static(fault_table(), id="kinds", classes="panel")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "faults — not available in this version"
        self.query_one("#not-available").border_title = "not available in this version"
        self.query_one("#kinds").border_title = "fault kinds (planned)"
