"""A workload's identity and certificate: SPIFFE ID, URI SAN, serial, validity, time to rotation."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from lab.errors import LabError
from tui import units
from tui.certificates import WorkloadCertificate, certificates_for, iso
from tui.connection import LabConnection, describe
from tui.mesh import WorkloadView


def lifetime_bar(cert: WorkloadCertificate, now: float, width: int = 30) -> Text:
    """How much of the certificate's life has gone, with the rotation point marked."""
    used = min(1.0, max(0.0, (now - cert.not_before) / cert.lifetime)) if cert.lifetime else 1.0
    rotate = int((cert.rotation_at - cert.not_before) / cert.lifetime * width) if cert.lifetime else width
    cells = ["█" if i < int(used * width) else "░" for i in range(width)]
    if 0 <= rotate < width:
        cells[rotate] = "┃"
    return Text.assemble(("".join(cells), "green" if used < 0.5 else "yellow"), f" {used:.0%} of its life used")


def certificate_table(cert: WorkloadCertificate, now: float) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    table.add_row("URI SAN", cert.identity)
    table.add_row("serial", cert.serial)
    table.add_row("held by", f"{cert.holder} (key made by the {cert.key_made_by})")
    table.add_row("valid from", iso(cert.not_before))
    table.add_row("expires", Text.assemble(iso(cert.not_after), (f"   in {units.span(cert.not_after - now)}",
                                                                   "bold red" if cert.not_after < now else "bold")))
    table.add_row("rotation", Text.assemble(iso(cert.rotation_at), (f"   in {units.span(cert.rotation_at - now)}",
                                                                    "bold cyan"), ("  (at half-life)", "dim")))
    table.add_row("lifetime", lifetime_bar(cert, now))
    return table


class WorkloadDetail(Screen[None]):
    """Who a workload is in the mesh, and the certificate that proves it (refreshed every second)."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, connection: LabConnection, workload: WorkloadView, mode: str,
                 clock: Callable[[], float] = time.time, refresh_seconds: float = 1.0) -> None:
        super().__init__()
        self.connection = connection
        self.workload = workload
        self.mode = mode
        self.clock = clock
        self.refresh_seconds = refresh_seconds

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="⬡")
        with VerticalScroll():
            yield Static(self._identity(), id="identity", classes="panel")
            yield Static("asking the lab's CA …", id="certificate", classes="panel")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"meshlab · {self.connection.lab}"
        self.sub_title = f"workload {self.workload.name}"
        self.query_one("#identity").border_title = "identity"
        self.query_one("#certificate").border_title = "certificate"
        self.load()
        if self.refresh_seconds > 0:
            self.set_interval(self.refresh_seconds, self.load)

    def _identity(self) -> RenderableType:
        w = self.workload
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        table.add_row("workload", f"{w.name} ({w.state}, {w.restarts} restarts)")
        table.add_row("namespace", f"{w.namespace} — mode {self.mode}")
        table.add_row("service", f"{w.service or '-'} {w.version}")
        table.add_row("node", f"{w.node}, address {w.address}")
        table.add_row("identity", Text(w.identity, style="bold cyan"))
        table.add_row("service account", w.identity.rsplit("/sa/", 1)[-1] if "/sa/" in w.identity else "-")
        return table

    @work(exclusive=True)
    async def load(self) -> None:
        """Read the certificates the CA issued and show this workload's."""
        panel = self.query_one("#certificate", Static)
        try:
            certs = await self.connection.call(lambda api: api.certs())
        except LabError as e:
            panel.update(Text(f"lab unavailable: {describe(e)}", style="red"))
            return
        found = certificates_for(certs, self.workload.identity, self.workload.node)
        if not found:
            panel.update(Text(f"No certificate in use for {self.workload.identity}.\nA workload's ztunnel gets its "
                              f"identity's certificate when its namespace joins the mesh (mode ambient); "
                              f"namespace {self.workload.namespace} is in mode {self.mode}.", style="italic"))
            return
        now = self.clock()
        parts: list[RenderableType] = [certificate_table(found[0], now)]
        if len(found) > 1:
            others = ", ".join(f"{c.holder} (serial {c.serial[:12]}…)" for c in found[1:])
            parts.append(Text(f"\nthe same identity is also held by {others}", style="dim"))
        panel.update(Group(*parts))
