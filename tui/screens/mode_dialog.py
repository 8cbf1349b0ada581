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
    "none": "none — plain traffic, workloads connect directly",
    "sidecar": "sidecar — a proxy beside every workload",
}


def mode_summary(result: dict[str, Any]) -> str:
    """What a mode switch did, in one line."""
    ns, mode = result.get("namespace"), result.get("mode")
    if not result.get("changed"):
        return f"namespace {ns} is already in mode {mode}"
    synced = "agents synced" if result.get("synced") else "agents still syncing"
    return f"namespace {ns}: mode {result.get('previous')} → {mode} (config v{result.get('version')}, {synced})"


class ModeDialog(ModalScreen[str | None]):
    """Pick a mode for one namespace; the lab's refusal (e.g. sidecar not available yet) is shown here."""

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
        suggested = "none" if self.current == "ambient" else "ambient"
        self.query_one(OptionList).highlighted = list(MODE_HELP).index(suggested)

    @on(OptionList.OptionSelected, "#modes")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self.switch(str(event.option.id))

    @work(exclusive=True)
    async def switch(self, mode: str) -> None:
        """Ask the lab to move the namespace to `mode`; close with what changed, or show why not."""
        error = self.query_one("#error", Static)
        error.update(f"switching {self.namespace} to {mode} …")
        try:
            result = await self.connection.call(lambda api: api.set_mode(self.namespace, mode))
        except LabError as e:
            error.update(Text.assemble((f"cannot switch to {mode}: ", "bold"), describe(e)))
            return
        self.dismiss(mode_summary(result))
