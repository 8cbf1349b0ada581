"""Start a bounded load run: target, requests per second, duration."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from lab.errors import LabError
from tui.connection import LabConnection, describe
from tui.widgets.load_runs import short_id

DEFAULT_TARGET = "productpage:9080/productpage"


def load_summary(run: dict[str, Any], qps: float, duration: str) -> str:
    return f"load run {short_id(run.get('id', '?'))} started: {run.get('target')} from {run.get('node')}, " \
           f"{qps:g} qps for {duration}"


class LoadDialog(ModalScreen[str | None]):
    """The three things a load run needs; enter in any field starts it."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, connection: LabConnection, target: str = DEFAULT_TARGET, qps: float = 20,
                 duration: str = "30s") -> None:
        super().__init__()
        self.connection = connection
        self.defaults = (target, f"{qps:g}", duration)

    def compose(self) -> ComposeResult:
        target, qps, duration = self.defaults
        with Vertical(classes="dialog") as box:
            box.border_title = "start a load run"
            yield Label("target (service:port/path)")
            yield Input(target, id="target")
            with Horizontal(classes="fields"):
                with Vertical():
                    yield Label("requests per second")
                    yield Input(qps, id="qps", type="number")
                with Vertical():
                    yield Label("duration (e.g. 30s, 2m)")
                    yield Input(duration, id="duration")
            yield Static("", id="error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Start", id="start", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#start")
    @on(Input.Submitted)
    def _submit(self) -> None:
        target = self.query_one("#target", Input).value.strip()
        duration = self.query_one("#duration", Input).value.strip() or "30s"
        try:
            qps = float(self.query_one("#qps", Input).value or 0)
        except ValueError:
            qps = -1
        if not target or qps <= 0:
            self.query_one("#error", Static).update("a load run needs a target and a positive qps")
            return
        self.start(target, qps, duration)

    @work(exclusive=True)
    async def start(self, target: str, qps: float, duration: str) -> None:
        """Ask the lab to start the run; close with its id, or show why not."""
        error = self.query_one("#error", Static)
        error.update("starting …")
        try:
            run = await self.connection.call(lambda api: api.start_load(target, qps=qps, duration=duration))
        except LabError as e:
            error.update(Text.assemble(("cannot start: ", "bold"), describe(e)))
            return
        self.dismiss(load_summary(run, qps, duration))
