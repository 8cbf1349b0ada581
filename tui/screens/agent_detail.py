"""An agent — a node's ztunnel, a waypoint or a sidecar: its proxy-status, its config dump, and its log.

The node's agents are tabs (a: the next one); d switches the lower pane between the agent's log
(config versions, certificates) and its whole config dump.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.table import Table
from rich.syntax import Syntax
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import ContentSwitcher, Footer, Header, Static, Tab, Tabs

from lab.errors import LabError
from tui import units
from tui.accesslog import agent_lines, parse_line
from tui.agents import AgentRef
from tui.configdump import dump_summary, dump_text
from tui.connection import LabConnection, describe
from tui.mesh import NodeView
from tui.widgets.proxy_status import STATUS_STYLE

LOG_TAIL = 400


def status_table(node: NodeView, agent: dict[str, Any] | None, latest: Any, now: float,
                 serves: bool = True) -> Table:
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
    if serves:  # a ztunnel serves every workload of its node
        table.add_row("serves", ", ".join(w.name for w in node.workloads) or "-")
    return table


class AgentDetail(Screen[None]):
    """Proxy-status, config dump and log of one of a node's agents, refreshed live."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("a", "next_agent", "Next agent"),
                Binding("d", "toggle_dump", "Config dump / log")]

    def __init__(self, connection: LabConnection, node: NodeView, agents: list[AgentRef],
                 chosen: AgentRef | None = None, refresh_seconds: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.clock = clock
        self.connection = connection
        self.node = node
        self.agents = agents
        self.agent = chosen if chosen in agents else agents[0]
        self.refresh_seconds = refresh_seconds
        self._lines: list[str] = []
        self._dump = ""

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="⬡")
        yield Tabs(*(Tab(a.title, id=f"agent-{i}") for i, a in enumerate(self.agents)),
                   active=f"agent-{self.agents.index(self.agent)}", id="agent-tabs")
        with Horizontal(id="agent-panels"):
            yield Static("asking the control plane …", id="status", classes="panel")
            yield Static("asking the agent …", id="dump-summary", classes="panel")
        # scrolled Statics, not RichLogs: they wrap at render time, so the text fits whatever the layout's timing
        with ContentSwitcher(initial="agent-log", id="agent-pane"):
            with VerticalScroll(id="agent-log"):
                yield Static(id="agent-log-text")
            with VerticalScroll(id="agent-dump"):  # read from the top; an update keeps the reader's place
                yield Static(id="agent-dump-text")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"meshlab · {self.connection.lab}"
        self.query_one("#agent-log").focus()
        self.show_agent()
        if self.refresh_seconds > 0:
            self.set_interval(self.refresh_seconds, self.load)

    def show_agent(self) -> None:
        """Title the panels for the chosen agent and read it now."""
        a = self.agent
        self.sub_title = f"agent {a.title}"
        self.query_one("#status").border_title = f"proxy-status of {a.title}"
        self.query_one("#dump-summary").border_title = "config dump"
        self.query_one("#agent-log").border_title = (f"{a.process} log — config versions, certificates · "
                                                     "d: config dump")
        self.query_one("#agent-dump").border_title = f"config dump of {a.title} (admin :15000/config_dump; d: log)"
        self._lines, self._dump = [], ""
        for text in ("#agent-log-text", "#agent-dump-text"):
            self.query_one(text, Static).update("")
        self.query_one("#agent-dump").scroll_home(animate=False)
        self.query_one("#agent-log").anchor()  # the newest lines in view, until the reader scrolls up
        self.query_one("#status", Static).update("asking the control plane …")
        self.query_one("#dump-summary", Static).update("asking the agent …")
        self.load()

    @on(Tabs.TabActivated, "#agent-tabs")
    def _agent_tab(self, event: Tabs.TabActivated) -> None:
        index = int(str(event.tab.id).removeprefix("agent-"))
        if self.agents[index] != self.agent:
            self.agent = self.agents[index]
            self.show_agent()

    def action_next_agent(self) -> None:
        if len(self.agents) > 1:
            self.query_one(Tabs).action_next_tab()

    def action_toggle_dump(self) -> None:
        switcher = self.query_one(ContentSwitcher)
        switcher.current = "agent-dump" if switcher.current == "agent-log" else "agent-log"
        self.query_one(f"#{switcher.current}").focus()  # page keys scroll what is shown

    @work(exclusive=True)
    async def load(self) -> None:
        """proxy-status, the agent's config dump, and its log lines that are not access-log entries."""
        agent, status = self.agent, self.query_one("#status", Static)
        try:
            proxy, log = await self.connection.call(
                lambda api: (api.proxy_status(), api.logs(self.node.name, agent.process, tail=LOG_TAIL)))
        except LabError as e:
            status.update(Text(f"lab unavailable: {describe(e)}", style="red"))
            return
        try:
            dump: dict[str, Any] | LabError = (await self.connection.call(
                lambda api: api.config_dump(agent.agent, agent.node)))["dump"]
        except LabError as e:  # the agent is down or not there yet: the rest of the view still helps
            dump = e
        if agent != self.agent:
            return  # another tab was picked meanwhile
        mine = next((a for a in proxy.get("agents", []) if a.get("node") == self.node.name
                     and a.get("agent") == agent.agent), None)
        status.update(status_table(self.node, mine, proxy.get("latest"), self.clock(), agent.kind == "ztunnel"))
        self.show_dump(dump)
        self.show_log(str(log.get("text", "")))

    def show_dump(self, dump: dict[str, Any] | LabError) -> None:
        summary = self.query_one("#dump-summary", Static)
        if isinstance(dump, LabError):
            summary.update(Text(f"no config dump: {describe(dump)}", style="red"))
            return
        summary.update(dump_summary(dump))
        text = dump_text(dump)
        if text != self._dump:
            self.query_one("#agent-dump-text", Static).update(
                Syntax(text, "json", theme="ansi_dark", word_wrap=True, background_color="default"))
            self._dump = text

    def show_log(self, text: str) -> None:
        lines = agent_lines(text)
        accesses = sum(1 for ln in text.splitlines() if parse_line(self.node.name, ln))
        self.query_one("#agent-log").border_subtitle = (f"{accesses} access-log entries in the last {LOG_TAIL} lines "
                                                        "(g on the main screen)")
        if lines != self._lines:
            shown = self.query_one("#agent-log-text", Static)
            if lines:
                shown.update(Text("\n").join(Text(ln, style="yellow" if "WARNING" in ln or "ERROR" in ln else "")
                                              for ln in lines))
            else:
                shown.update(Text(f"only access-log entries in the last {LOG_TAIL} lines (press g on the main "
                                  "screen to see them)", style="italic"))
            self._lines = lines
