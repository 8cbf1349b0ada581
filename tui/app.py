"""A first terminal UI: the lab's workloads and their state, refreshed live.

This is the placeholder of the TUI issue: it shows what `meshlab status` shows.
It reaches the lab only through the `meshlab` CLI's JSON output (the lab API
arrives with the control plane), so it never imports `lab` internals.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static


async def fetch_status(lab: str | None) -> dict[str, Any]:
    """`meshlab status --json` as a dict; raises RuntimeError with the CLI's message on failure."""
    argv = [sys.executable, "-m", "lab.cli.main", "status", "--json"] + ([lab] if lab else [])
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(err.decode().strip() or f"meshlab status exited {proc.returncode}")
    return json.loads(out)


class MeshLabApp(App[int]):
    """Workloads of one lab with their node, address and process state."""

    TITLE = "meshlab"
    BINDINGS = [Binding("q", "quit", "Quit"), Binding("r", "refresh", "Refresh")]
    CSS = "#message { height: auto; padding: 0 1; color: $warning; }"

    def __init__(self, lab: str | None = None) -> None:
        super().__init__()
        self.lab = lab

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="message")
        yield DataTable(id="workloads", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("workload", "namespace", "service", "version", "node", "address", "state", "restarts")
        self.action_refresh()
        self.set_interval(2.0, self.action_refresh)

    def action_refresh(self) -> None:
        self.run_worker(self._refresh(), exclusive=True)

    async def _refresh(self) -> None:
        message = self.query_one("#message", Static)
        try:
            doc = await fetch_status(self.lab)
        except (RuntimeError, ValueError) as e:
            message.update(f"lab unavailable: {e}")
            return
        self.sub_title = f"lab {doc['lab']} · {doc['status']} · {len(doc['nodes'])} nodes"
        message.update("")
        procs = {p["name"]: p for n in doc["nodes"].values() for p in n.get("processes", [])}
        table = self.query_one(DataTable)
        table.clear()
        for name, w in doc["workloads"].items():
            p = procs.get(name)
            table.add_row(name, w["namespace"], w["service"] or "-", w["version"], w["node"],
                          f"{w['address']}:{w['port']}" if w["port"] else w["address"],
                          p["state"] if p else "missing", str(p["restarts"]) if p else "")


def run(lab: str | None = None) -> int:
    MeshLabApp(lab).run()
    return 0
