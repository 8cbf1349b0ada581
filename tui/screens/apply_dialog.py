"""Apply an Istio YAML file: a path in, the lab's verdict out (errors with their file:line and field)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from lab.errors import LabError
from tui.connection import LabConnection, describe


def apply_summary(result: dict[str, Any]) -> str:
    """What an apply changed: kind/namespace/name and created/updated/unchanged, and the config version."""
    outcomes = ", ".join(f"{kind.lower()}/{ref} {outcome}" for kind, ref, outcome in result.get("results", []))
    synced = "agents synced" if result.get("synced") else "agents still syncing"
    return f"applied {outcomes or 'nothing'} (config v{result.get('version')}, {synced})"


def problem_text(error: LabError) -> Text:
    """The lab's refusal, each config problem (field: message (file:line)) on its own line."""
    return Text(describe(error), style="red")


class ApplyFileDialog(ModalScreen[str | None]):
    """A path input; enter applies the file atomically (all documents or none)."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, connection: LabConnection, path: str = "") -> None:
        super().__init__()
        self.connection = connection
        self.path = path

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide") as box:
            box.border_title = "apply an Istio YAML file"
            yield Label("path of the file (PeerAuthentication, AuthorizationPolicy, VirtualService, ...)")
            yield Input(self.path, placeholder="e.g. policies/strict-mtls.yaml", id="path")
            yield Static("", id="error", classes="error")
            yield Label("enter apply · escape cancel", classes="hint")

    @on(Input.Submitted, "#path")
    def _submit(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.apply(Path(event.value.strip()).expanduser())

    @work(exclusive=True)
    async def apply(self, path: Path) -> None:
        """Read the file, hand it to the lab; close with what changed, or list what is wrong with it."""
        error = self.query_one("#error", Static)
        try:
            text = await asyncio.to_thread(path.read_text)
        except (OSError, UnicodeDecodeError) as e:
            error.update(Text(f"cannot read {path}: {e}", style="red"))
            return
        error.update(f"applying {path.name} …")
        try:
            result = await self.connection.call(lambda api: api.apply([(str(path), text)]))
        except LabError as e:
            error.update(problem_text(e))
            return
        self.dismiss(apply_summary(result))
