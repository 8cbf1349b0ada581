"""Resource cost: RSS and CPU of every proxy and workload, and what each role costs in total."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from lab.errors import LabError
from tui import units
from tui.connection import LabConnection, describe
from tui.cost import CostMeter, ProcessCost, RoleTotal, totals_by_role

PROXY_ROLES = ("ztunnel", "waypoint", "sidecar")


def percent(value: float | None) -> str:
    return "…" if value is None else f"{value:.1f}%"


def totals_table(totals: list[RoleTotal]) -> Table:
    """Totals by role, the mesh's proxies highlighted."""
    table = Table(box=None, header_style="bold", padding=(0, 2), pad_edge=False)
    for name, justify in (("role", "left"), ("processes", "right"), ("RSS", "right"), ("CPU", "right"),
                          ("CPU now", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for t in totals:
        style = "bold cyan" if t.role in PROXY_ROLES else ""
        table.add_row(Text(t.role, style=style), str(t.processes), units.size(t.rss_bytes), f"{t.cpu_seconds:.1f}s",
                      percent(t.cpu_percent))
    return table


class ResourceCost(Screen[None]):
    """Per-process RSS and CPU (CPU % between two looks) and totals by role, refreshed every two seconds."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, connection: LabConnection, refresh_seconds: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.connection = connection
        self.refresh_seconds = max(refresh_seconds, 2.0) if refresh_seconds > 0 else 0
        self.clock = clock
        self.meter = CostMeter()

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="⬡")
        yield Static("asking the nodes …", id="totals", classes="panel")
        yield DataTable(id="processes", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"meshlab · {self.connection.lab}"
        self.sub_title = "resource cost"
        self.query_one("#totals").border_title = "totals by role"
        self.query_one("#processes").border_title = "per process"
        self.query_one(DataTable).add_columns("node", "process", "role", "RSS", "CPU", "CPU now")
        self.load()
        if self.refresh_seconds > 0:
            self.set_interval(self.refresh_seconds, self.load)

    @work(exclusive=True)
    async def load(self) -> None:
        """One look at every node's processes."""
        totals = self.query_one("#totals", Static)
        try:
            usage = await self.connection.call(lambda api: api.usage())
        except LabError as e:
            totals.update(Text(f"lab unavailable: {describe(e)}", style="red"))
            return
        rows, errors = self.meter.sample(usage, self.clock())
        totals.update(totals_table(totals_by_role(rows)))
        if errors:
            self.notify("\n".join(errors), title="some nodes did not report", severity="warning")
        self._fill(rows)

    def _fill(self, rows: list[ProcessCost]) -> None:
        table = self.query_one(DataTable)
        table.clear()
        for r in sorted(rows, key=lambda r: (r.role not in PROXY_ROLES, r.node, r.process)):
            style = "bold cyan" if r.role in PROXY_ROLES else ""
            table.add_row(r.node, Text(r.process, style=style), r.role, units.size(r.rss_bytes),
                          f"{r.cpu_seconds:.1f}s", percent(r.cpu_percent))
