"""Switch a namespace's data-plane mode: ambient, none or sidecar."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from lab.errors import LabError
from tui.connection import LabConnection, describe

MODE_HELP = {
    "ambient": "ambient — a ztunnel per node carries the traffic over mTLS (HBONE)",
    "sidecar": "sidecar — a proxy beside every workload (the workloads restart)",
    "none": "none — plain traffic, workloads connect directly",
}
WARNING = "⚠ "  # marks a line of a summary that reports a failure (the notification is then a warning)
NEXT_MODE = {"none": "ambient", "ambient": "sidecar", "sidecar": "ambient"}  # the one the dialog suggests


def mode_summary(result: dict[str, Any]) -> str:
    """What a mode switch did: the modes, how long, which workloads restarted, how many requests failed."""
    ns, mode = result.get("namespace"), result.get("mode")
    if not result.get("changed"):
        return f"namespace {ns} is already in mode {mode}"
    synced = "agents synced" if result.get("synced") else "agents still syncing"
    took = f" in {float(result['seconds']):.1f}s" if result.get("seconds") is not None else ""
    lines = [f"namespace {ns}: mode {result.get('previous')} → {mode}{took} (config v{result.get('version')}, "
             f"{synced})"]
    restarted = list(result.get("restarted") or [])
    if restarted:
        lines.append(f"restarted {len(restarted)} workload{'s' if len(restarted) != 1 else ''}: "
                     + ", ".join(restarted))
    if result.get("failedRequests") is not None:
        failed = int(result["failedRequests"])
        lines.append(f"{WARNING}{failed} request{'s' if failed != 1 else ''} failed during the switch" if failed
                     else "no request failed during the switch")
    return "\n".join(lines)


class ModeDialog(ModalScreen[str | None]):
    """Pick a mode for one namespace; the lab's refusal is shown here, what changed in a notification."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, connection: LabConnection, namespace: str, current: str) -> None:
        super().__init__()
        self.connection = connection
        self.namespace = namespace
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog") as box:
            box.border_title = f"mode of namespace {self.namespace}"
            yield Label(f"now: [b]{self.current}[/b] — pick the new mode and press enter")
            yield OptionList(*[Option(text + ("  (now)" if mode == self.current else ""), id=mode)
                               for mode, text in MODE_HELP.items()], id="modes")
            yield Static("", id="error", classes="error")
            yield Label("enter switch · escape cancel", classes="hint")

    def on_mount(self) -> None:
        suggested = NEXT_MODE.get(self.current, "ambient")
        self.query_one(OptionList).highlighted = list(MODE_HELP).index(suggested)

    @on(OptionList.OptionSelected, "#modes")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self.switch(str(event.option.id))

    @work(exclusive=True)
    async def switch(self, mode: str) -> None:
        """Ask the lab to move the namespace to `mode`; close with what changed, or show why not."""
        error = self.query_one("#error", Static)
        slow = " (every workload restarts with a sidecar: this takes a few seconds)" if mode == "sidecar" else ""
        error.update(f"switching {self.namespace} to {mode} …{slow}")
        try:
            result = await self.connection.call(lambda api: api.set_mode(self.namespace, mode))
        except LabError as e:
            error.update(Text.assemble((f"cannot switch to {mode}: ", "bold"), describe(e)))
            return
        self.dismiss(mode_summary(result))
