"""Faults: the lab's live faults with a countdown to their TTL; add (a), remove (delete), remove all (D)."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from lab.errors import LabError
from tui.connection import LabConnection, describe
from tui.faultcatalogue import LAYER_TITLES, FaultCatalogue
from tui.livefaults import LiveFault, countdown, live_faults
from tui.screens.fault_dialog import FaultDialog

LAYER_STYLE = {"l7": "bold magenta", "l4": "bold yellow", "node": "bold red", "process": "red", "security": "cyan"}
SHORT_TARGET = {"service": "svc", "workload": "wl", "node": "node", "edge": "edge"}
COLUMNS = ("id", "kind", "layer", "target", "params", "direction", "toxicity", "expires in")


def kinds_table(catalogue: FaultCatalogue) -> Table:
    """Every kind the lab offers, by layer: what it does and what it needs."""
    table = Table(box=None, header_style="bold", padding=(0, 1), pad_edge=False, expand=True)
    table.add_column("layer", no_wrap=True)
    table.add_column("kind", style="bold", no_wrap=True)
    table.add_column("targets", no_wrap=True)
    table.add_column("parameters", ratio=1)
    table.add_column("what it does", ratio=2)
    for k in catalogue.kinds:
        params = " ".join(p.name + ("*" if p.required else "") for p in k.params) or "-"
        targets = " ".join(SHORT_TARGET.get(t, t) for t in k.targets)
        table.add_row(Text(LAYER_TITLES.get(k.layer, k.layer), style=LAYER_STYLE.get(k.layer, "")), k.name, targets,
                      params, k.help)
    return table


class Faults(Screen[None]):
    """The live faults, refreshed every second, each with the time left before the lab removes it."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("a", "add_fault", "Add fault"),
                Binding("delete,backspace", "remove_fault", "Remove"), Binding("D", "remove_all", "Remove all")]

    def __init__(self, connection: LabConnection, target: str = "", refresh_seconds: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.connection = connection
        self.target = target  # what the main screen's cursor was on: the add form's default target
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self.faults: list[LiveFault] = []
        self.loaded = False

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="⬡")
        yield DataTable(id="live-faults", cursor_type="row", zebra_stripes=True)
        yield Static("asking the lab …", id="fault-count")
        with VerticalScroll(id="fault-kinds", classes="panel"):
            yield Static("asking the lab for its fault kinds …", id="kinds-table")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"meshlab · {self.connection.lab}"
        self.sub_title = "faults"
        table = self.query_one(DataTable)
        table.border_title = "live faults — a add · delete remove · D remove all"
        table.add_columns(*COLUMNS)
        self.query_one("#fault-kinds").border_title = "kinds (* required; targets: svc service, wl workload, node, edge SRC->DST)"
        self.load()
        self.load_kinds()
        if self.refresh_seconds > 0:
            self.set_interval(self.refresh_seconds, self.load)
        table.focus()

    @work(exclusive=True, group="fault-kinds")
    async def load_kinds(self) -> None:
        """The lab's fault catalogue, for the kinds table (asked once a session)."""
        shown = self.query_one("#kinds-table", Static)
        try:
            catalogue = await self.connection.fault_catalogue()
        except LabError as e:
            shown.update(Text(f"cannot read the lab's fault kinds: {describe(e)}", style="red"))
            return
        shown.update(kinds_table(catalogue))

    @work(exclusive=True, group="faults")
    async def load(self) -> None:
        """Read the live faults (a stale read is dropped for a newer one)."""
        try:
            answer = await self.connection.call(lambda api: api.faults())
        except LabError as e:
            self.query_one("#fault-count", Static).update(Text(f"lab unavailable: {describe(e)}", style="red"))
            return
        self.faults, self.loaded = live_faults(answer), True
        self.show()

    def show(self) -> None:
        """Fill the table, keeping the cursor on the same fault."""
        table = self.query_one(DataTable)
        keep = self.selected_fault()
        now = self.clock()
        table.clear()
        for f in self.faults:
            left = f.left(now)
            table.add_row(Text(f.id, style="bold"), f.kind, Text(LAYER_TITLES.get(f.layer, f.layer),
                                                                 style=LAYER_STYLE.get(f.layer, "")),
                          f.target, f.params_text, f.direction, f"{f.toxicity:g}",
                          Text(countdown(left), style="bold yellow" if left is not None and left < 10 else ""),
                          key=f.id)
        if keep is not None and keep.id in {f.id for f in self.faults}:
            table.move_cursor(row=table.get_row_index(keep.id))
        count = len(self.faults)
        self.query_one("#fault-count", Static).update(
            f"{count} live fault{'s' if count != 1 else ''}" if count else
            Text("no live faults — press a to add one (abort on ratings, latency on a node, ...)", style="italic"))

    def selected_fault(self) -> LiveFault | None:
        table = self.query_one(DataTable)
        if not self.faults or table.row_count == 0:
            return None
        row = table.cursor_row
        return self.faults[row] if 0 <= row < len(self.faults) else None

    def action_add_fault(self) -> None:
        self.open_form()

    @work(exclusive=True, group="fault-form")
    async def open_form(self) -> None:
        """Open the add form, made from the lab's catalogue (asked now unless this session has it)."""
        try:
            catalogue = await self.connection.fault_catalogue()
        except LabError as e:
            self.notify(describe(e), title="fault kinds", severity="error")
            return
        self.app.push_screen(FaultDialog(self.connection, catalogue, target=self.target), self._added)

    def _added(self, summary: str | None) -> None:
        if summary:
            self.notify(summary, title="fault")
            self.load()

    def action_remove_fault(self) -> None:
        fault = self.selected_fault()
        if fault is None:
            self.notify("no fault to remove", severity="warning")
            return
        self.remove_faults(fault.id, False)

    def action_remove_all(self) -> None:
        if not self.faults:
            self.notify("no fault to remove", severity="warning")
            return
        self.remove_faults(None, True)

    @work(exclusive=True, group="remove-fault")
    async def remove_faults(self, fault_id: str | None, everything: bool) -> None:
        """Remove one fault (or all); say what went and what could not be reverted."""
        try:
            answer = await self.connection.call(lambda api: api.remove_fault(fault_id, everything=everything))
        except LabError as e:
            self.notify(describe(e), title="remove fault", severity="error")
            return
        removed = ", ".join(answer.get("removed") or []) or "nothing"
        errors = answer.get("errors") or []
        self.notify(f"removed {removed} (config v{answer.get('version')})" +
                    "".join(f"\nrevert failed: {e}" for e in errors),
                    title="fault", severity="warning" if errors else "information")
        self.load()
