"""An agent (a node's ztunnel): its proxy-status, the workloads it serves, and its config and certificate log."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header, RichLog, Static

from lab.errors import LabError
from tui import units
from tui.accesslog import agent_lines, parse_line
from tui.connection import LabConnection, describe
from tui.mesh import NodeView
from tui.widgets.proxy_status import STATUS_STYLE

AGENT = "ztunnel"


def status_table(node: NodeView, agent: dict[str, Any] | None, latest: Any, now: float) -> Table:
    """The agent's sync state against the control plane, and what runs beside it on the node."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    if agent is None:
        table.add_row("status", Text("not connected to the control plane", style="bold red"))
    else:
        status = str(agent.get("status"))
        table.add_row("status", Text(status, style=STATUS_STYLE.get(status, "yellow")))
        table.add_row("config", f"ACKed v{agent.get('acked')}, sent v{agent.get('sent')}, latest v{latest}")
        if agent.get("nackError"):
            table.add_row("NACK", Text(str(agent["nackError"]), style="red"))
        if agent.get("connectedAt"):
            since = units.span(now - float(agent["connectedAt"]))
            table.add_row("connected", f"{since} ago from {agent.get('address')}")
    table.add_row("node", f"{node.name} at {node.address} ({node.provider})")
    table.add_row("serves", ", ".join(w.name for w in node.workloads) or "-")
    return table


class AgentDetail(Screen[None]):
    """Proxy-status and log of one node's ztunnel, refreshed live."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, connection: LabConnection, node: NodeView, refresh_seconds: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.clock = clock
        self.connection = connection
        self.node = node
        self.refresh_seconds = refresh_seconds
        self._lines: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="⬡")
        yield Static("asking the control plane …", id="status", classes="panel")
        yield RichLog(id="agent-log", wrap=True, markup=False, max_lines=2000)
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"meshlab · {self.connection.lab}"
        self.sub_title = f"agent {AGENT}/{self.node.name}"
        self.query_one("#status").border_title = f"proxy-status of {AGENT}/{self.node.name}"
        self.query_one("#agent-log").border_title = "config versions, certificates (ztunnel log; access logs: g)"
        self.load()
        if self.refresh_seconds > 0:
            self.set_interval(self.refresh_seconds, self.load)

    @work(exclusive=True)
    async def load(self) -> None:
        """proxy-status and the agent's log lines that are not access-log entries."""
        status = self.query_one("#status", Static)
        try:
            proxy, log = await self.connection.call(
                lambda api: (api.proxy_status(), api.logs(self.node.name, AGENT, tail=400)))
        except LabError as e:
            status.update(Text(f"lab unavailable: {describe(e)}", style="red"))
            return
        mine = next((a for a in proxy.get("agents", []) if a.get("node") == self.node.name
                     and a.get("agent") == AGENT), None)
        status.update(status_table(self.node, mine, proxy.get("latest"), self.clock()))
        text = str(log.get("text", ""))
        lines = agent_lines(text)
        accesses = sum(1 for ln in text.splitlines() if parse_line(self.node.name, ln))
        self.query_one("#agent-log").border_subtitle = f"{accesses} access-log entries in the last 400 lines"
        if lines != self._lines:
            richlog = self.query_one(RichLog)
            richlog.clear()
            for ln in lines:
                richlog.write(Text(ln, style="yellow" if "WARNING" in ln or "ERROR" in ln else ""))
            if not lines:
                richlog.write(Text("only access-log entries in the last 400 lines (press g to see them)",
                                   style="italic"))
            self._lines = lines
