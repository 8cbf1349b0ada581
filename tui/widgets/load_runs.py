"""Load runs: the bounded load runs of the lab, running ones first, with their outcome when done."""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from tui import units

STATE_STYLE = {"running": "bold green", "stopping": "yellow", "stopped": "yellow", "done": "dim", "failed": "bold red"}


def short_id(run_id: str) -> str:
    """load-3-1795773716 → load-3."""
    return "-".join(run_id.split("-")[:2])


def outcome(run: dict[str, Any]) -> str:
    """What a finished run measured: qps achieved, p50, and errors."""
    result = run.get("result") or {}
    if run.get("error"):
        return str(run["error"])
    if not result:
        return f"{arg(run, '--qps')} qps for {arg(run, '--duration')}"
    codes = result.get("codes", {})
    bad = sum(n for c, n in codes.items() if not str(c).startswith("2")) + sum((result.get("errors") or {}).values())
    return (f"{result.get('qps', 0):.1f} qps, p50 {units.millis((result.get('latency_ms') or {}).get('p50'))}"
            + (f", {bad} errors" if bad else ""))


def arg(run: dict[str, Any], flag: str) -> str:
    args = list(run.get("args") or [])
    return str(args[args.index(flag) + 1]) if flag in args[:-1] else "?"


class LoadRuns(Widget):
    """The lab's load runs, newest first."""

    runs: reactive[tuple[dict[str, Any], ...]] = reactive(tuple, layout=True)

    def render(self) -> RenderableType:
        if not self.runs:
            return Text("no load run — press l to start one", style="italic")
        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 1), expand=True)
        table.add_column("run", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("target / outcome", no_wrap=True, overflow="ellipsis", ratio=1)
        for run in sorted(self.runs, key=lambda r: (r.get("state") != "running", -float(r.get("startedAt", 0)))):
            state = str(run.get("state", "?"))
            table.add_row(short_id(str(run.get("id", "?"))), Text(state, style=STATE_STYLE.get(state, "")),
                          run.get("target", "") if state == "running" else outcome(run))
        return table
