"""proxy-status per agent: which config version each agent runs, and whether it ACKed or NACKed it."""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

STATUS_STYLE = {"SYNCED": "green", "STALE": "yellow", "NACKED": "bold red", "DISCONNECTED": "bold red"}


def short_agent(agent: dict[str, Any]) -> str:
    """An agent's name in a narrow panel: its node for a ztunnel, else what it serves (bookinfo/waypoint)."""
    name = str(agent.get("agent", "?"))
    return str(agent.get("node")) if name == "ztunnel" else name.partition(":")[2] or name


class ProxyStatus(Widget):
    """One row per agent: agent/node, status, acked/latest version."""

    agents: reactive[tuple[dict[str, Any], ...]] = reactive(tuple, layout=True)

    def render(self) -> RenderableType:
        if not self.agents:
            return Text("no agent connected", style="italic")
        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 1), expand=True)
        wide = self.size.width >= 32
        table.add_column("agent", no_wrap=True, overflow="ellipsis", ratio=1)
        table.add_column("status", no_wrap=True, min_width=6)
        table.add_column("ver", justify="right", no_wrap=True)
        for a in self.agents:
            status = str(a.get("status", "?"))
            name = f"{a.get('agent')}/{a.get('node')}" if wide else short_agent(a)
            table.add_row(name, Text(status, style=STATUS_STYLE.get(status, "yellow")),
                          f"{a.get('acked')}/{a.get('latest')}")
            if a.get("nackError"):
                table.add_row(Text(f"  NACK: {a['nackError']}", style="red"), "", "")
        return table
