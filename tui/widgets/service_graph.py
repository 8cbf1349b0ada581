"""The service graph: every edge in call order with its security, connection and byte rates, and their trend."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from tui import units
from tui.traffic import HISTORY, CallRow, EdgeRow, RateHistory, call_order

MTLS = Text("🔒 mTLS", style="bold green")
PLAIN = Text("⚠ plain", style="bold red")
UNKNOWN = Text("? ", style="dim")
LEGEND = Text.assemble(("🔒 mTLS", "bold green"), " (HBONE) · ", ("⚠ plain", "bold red"), "text", style="dim")


def security_cell(edge: EdgeRow) -> Text:
    """The edge's security, impossible to miss: green lock for mTLS, red warning for plaintext."""
    return MTLS if edge.mtls else PLAIN if edge.security == "none" else UNKNOWN


class ServiceGraph(Widget):
    """Edges laid out by call order (who calls whom, as a tree), one row each."""

    edges: reactive[tuple[EdgeRow, ...]] = reactive(tuple, always_update=True)
    hint: reactive[str] = reactive("")

    def __init__(self, history: RateHistory, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.history = history

    def render(self) -> RenderableType:
        if not self.edges:
            return Text(self.hint or "No traffic seen by the mesh yet.", style="italic")
        rows = call_order(list(self.edges))
        l7 = any(e.has_l7 for e in self.edges)
        width = self.size.width
        label_width = max(len(r.label) for r in rows)
        fixed = 8 + 6 + 7 + (4 * 5 if l7 else 0)  # the other columns' widths
        columns = 4 + (4 if l7 else 0)
        trend = max(0, min(HISTORY // 2, width - label_width - fixed - 2 * columns - 1))
        top = max((max(self.history.edge_connections(r.edge.key), default=0.0) for r in rows), default=0.0)
        table = Table(box=None, expand=False, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 1))
        label_max = max(12, width - fixed - 2 * columns)
        table.add_column("call order", no_wrap=True, overflow="ellipsis", max_width=label_max)
        table.add_column("security", no_wrap=True, min_width=8)
        table.add_column("conn/s", justify="right", no_wrap=True, min_width=6)
        table.add_column("bytes/s", justify="right", no_wrap=True, min_width=7)
        if l7:
            for name in ("req/s", "err", "p50", "p99"):
                table.add_column(name, justify="right", no_wrap=True, min_width=5)
        if trend >= 6:
            table.add_column("conn/s, last minute", no_wrap=True, width=trend)
        for row in rows:
            table.add_row(*self._cells(row, l7, trend, top))
        return Group(table, LEGEND) if self.size.height > len(rows) + 1 else table

    def _cells(self, row: CallRow, l7: bool, trend: int, top: float) -> list[RenderableType]:
        e = row.edge
        label = Text(row.label, style="bold" if row.depth == 0 else "")
        cells: list[RenderableType] = [label, security_cell(e), units.rate(e.connections_per_s),
                                       units.compact_size(e.bytes_per_s)]
        if l7:
            err = Text(f"{e.error_rate:.0%}", style="bold red" if e.error_rate > 0.01 else "")
            cells += [units.rate(e.requests_per_s), err, units.millis(e.p50), units.millis(e.p99)]
        if trend >= 6:
            cells.append(Text(units.bars(self.history.edge_connections(e.key), trend, top),
                              style="green" if e.mtls else "red"))
        return cells
