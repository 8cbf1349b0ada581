"""The service graph: every edge in call order with its security, request or connection rate, errors, latency,
response codes and bytes, and its trend — as many of those as the width allows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
COMPACT = {True: Text("🔒", style="bold green"), False: Text("⚠", style="bold red")}  # narrow terminals
LEGEND = Text.assemble(("🔒 mTLS", "bold green"), " (HBONE) · ", ("⚠ plain", "bold red"), "text · err, codes: last 10 s",
                       style="dim")
CODE_STYLE = {"2": "green", "3": "cyan", "4": "yellow", "5": "bold red", "0": "bold red"}


def security_cell(edge: EdgeRow, compact: bool = False) -> Text:
    """The edge's security, impossible to miss: green lock for mTLS, red warning for plaintext."""
    if edge.security not in ("mutual_tls", "none"):
        return UNKNOWN
    return COMPACT[edge.mtls] if compact else MTLS if edge.mtls else PLAIN


def codes_cell(codes: tuple[tuple[str, float], ...], room: int = 2) -> Text:
    """The most frequent response codes, coloured by class: '200 503' (err gives the share that failed)."""
    text = Text()
    for code, _ in codes[:room]:
        if text:
            text.append(" ")
        text.append(code, CODE_STYLE.get(code[:1], ""))
    return text or Text("·")


@dataclass(frozen=True)
class Column:
    """A column the graph shows when there is room for it, in priority order."""

    name: str
    width: int
    cell: Callable[[ServiceGraph, CallRow], RenderableType]
    l7: bool = False  # only when some edge has L7 figures


def _rate(g: ServiceGraph, r: CallRow) -> RenderableType:
    e = r.edge
    return units.rate(e.requests_per_s) if e.has_l7 else Text(units.rate(e.connections_per_s), style="dim")


def _errors(g: ServiceGraph, r: CallRow) -> RenderableType:
    if not r.edge.has_l7:
        return Text("·", style="dim")
    rate = g.history.window(r.edge).error_rate
    return Text(f"{rate:.0%}", style="bold red" if rate > 0.01 else "")


def _series(g: ServiceGraph, e: EdgeRow) -> list[float]:
    """What an edge's trend draws: requests/s where an L7 proxy reports it, else connections/s."""
    return g.history.edge_requests(e.key) if e.has_l7 else g.history.edge_connections(e.key)


def _trend(g: ServiceGraph, r: CallRow) -> RenderableType:
    e = r.edge
    return Text(units.bars(_series(g, e), g.trend_width, g.trend_top), style="green" if e.mtls else "red")


COLUMNS: tuple[Column, ...] = (
    Column("security", 8, lambda g, r: security_cell(r.edge, g.compact)),
    Column("rps", 6, _rate, l7=True),
    Column("err", 4, _errors, l7=True),
    Column("p50", 6, lambda g, r: units.millis(r.edge.p50), l7=True),
    Column("p99", 6, lambda g, r: units.millis(r.edge.p99), l7=True),
    Column("codes", 7, lambda g, r: codes_cell(g.history.window(r.edge).codes) if r.edge.has_l7 else Text("·"),
           l7=True),
    Column("bytes/s", 7, lambda g, r: units.compact_size(r.edge.bytes_per_s)),
    Column("conn/s", 6, lambda g, r: units.rate(r.edge.connections_per_s)),
)
ESSENTIAL = ("security", "rps", "err", "p50", "p99")  # the label column is cut short before these are left out
LABEL_MIN = 18
TREND_MIN = 6


class ServiceGraph(Widget):
    """Edges laid out by call order (who calls whom, as a tree), one row each.

    `rps` is requests per second where an L7 proxy (waypoint, sidecar) reports the edge, else connections per
    second (dimmed); err, p50, p99 and codes come from the L7 series only."""

    edges: reactive[tuple[EdgeRow, ...]] = reactive(tuple, always_update=True)
    hint: reactive[str] = reactive("")
    waypoints: frozenset[str] = frozenset()  # workload names that are waypoints (their edges name the service)

    def __init__(self, history: RateHistory, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.history = history
        self.trend_width = 0
        self.compact = False  # the security column as an icon only, to leave room for the figures
        self.label_width = 1000  # the call-order labels' column at most
        self.trend_top = 0.0  # one scale for every edge's trend, so they compare

    def columns(self, label_width: int, l7: bool) -> list[Column]:
        """The columns that fit beside the labels, in priority order (each costs its width and 2 of padding)."""
        wanted = [c for c in COLUMNS if l7 or not c.l7]
        essential = sum(c.width + 2 for c in wanted if c.name in ESSENTIAL)
        self.compact = self.size.width - label_width < essential
        if self.compact:  # the essential figures first: cut the labels short (with an ellipsis) rather than them
            essential -= COLUMNS[0].width - 3
            self.label_width = max(min(label_width, LABEL_MIN), self.size.width - essential)
        room = self.size.width - min(label_width, self.label_width)
        chosen = []
        for col in wanted:
            width = 3 if col.name == "security" and self.compact else col.width
            if width + 2 <= room or col.name in ("security", "rps") or (col.name == "conn/s" and not l7):
                chosen.append(col)
                room -= width + 2
        self.trend_width = max(0, min(HISTORY // 2, room - 2))
        return chosen

    def render(self) -> RenderableType:
        if not self.edges:
            return Text(self.hint or "No traffic seen by the mesh yet.", style="italic")
        rows = call_order(list(self.edges), self.waypoints)
        l7 = any(e.has_l7 for e in self.edges)
        label_width = max(len(r.label) for r in rows)
        self.label_width = 1000
        columns = self.columns(label_width, l7)
        table = Table(box=None, expand=False, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 1))
        used = sum(c.width + 2 for c in columns) + (self.trend_width + 2 if self.trend_width >= TREND_MIN else 0)
        table.add_column("call order", no_wrap=True, overflow="ellipsis",
                         max_width=max(12, min(self.label_width, self.size.width - used)))
        for col in columns:
            name = "req/s" if col.name == "rps" else "tls" if col.name == "security" and self.compact else col.name
            table.add_column(name, justify="left" if col.name in ("security", "codes") else "right", no_wrap=True,
                             min_width=None if col.name == "codes" or self.compact and col.name == "security"
                             else col.width)
        if self.trend_width >= TREND_MIN:
            table.add_column("req/s, last minute" if l7 else "conn/s, last minute", no_wrap=True,
                             width=self.trend_width)
        self.trend_top = max((max(_series(self, r.edge), default=0.0) for r in rows), default=0.0)
        for row in rows:
            cells = [Text(row.label, style="bold" if row.depth == 0 else "")] + [c.cell(self, row) for c in columns]
            if self.trend_width >= TREND_MIN:
                cells.append(_trend(self, row))
            table.add_row(*cells)
        return Group(table, LEGEND) if self.size.height > len(rows) + 1 else table
