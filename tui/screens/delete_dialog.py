"""Delete a mesh config object: pick it from what `get_config` lists."""

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
from tui.widgets.mesh_config import item_ref


def delete_summary(result: dict[str, Any]) -> str:
    done = ", ".join(f"{kind.lower()}/{ref} {outcome}" for kind, ref, outcome in result.get("results", []))
    return f"{done or 'nothing deleted'} (config v{result.get('version')})"


class DeleteConfigDialog(ModalScreen[str | None]):
    """The applied config objects; enter deletes the highlighted one."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, connection: LabConnection) -> None:
        super().__init__()
        self.connection = connection
        self.items: list[dict[str, Any]] = []

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide") as box:
            box.border_title = "delete mesh config"
            yield Label("the config applied to the lab — enter deletes the highlighted object")
            yield OptionList(id="items")
            yield Static("", id="error", classes="error")
            yield Label("enter delete · escape cancel", classes="hint")

    def on_mount(self) -> None:
        self.load_items()

    @work(exclusive=True)
    async def load_items(self) -> None:
        """List what `get_config` returns."""
        error = self.query_one("#error", Static)
        try:
            self.items = list((await self.connection.call(lambda api: api.get_config())).get("items", []))
        except LabError as e:
            error.update(Text(describe(e), style="red"))
            return
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options([Option(item_ref(i), id=str(n)) for n, i in enumerate(self.items)])
        if self.items:
            options.highlighted = 0
        else:
            error.update("no mesh config is applied: nothing to delete")
        options.focus()

    @on(OptionList.OptionSelected, "#items")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self.delete(self.items[int(str(event.option.id))])

    @work(exclusive=True)
    async def delete(self, item: dict[str, Any]) -> None:
        """Delete one object; close with what went, or show why not."""
        meta = item.get("metadata") or {}
        body = {"kind": item.get("kind"), "name": meta.get("name"), "namespace": meta.get("namespace")}
        error = self.query_one("#error", Static)
        error.update(f"deleting {item_ref(item)} …")
        try:
            result = await self.connection.call(lambda api: api.delete_config(**body))
        except LabError as e:
            error.update(Text(describe(e), style="red"))
            return
        self.dismiss(delete_summary(result))
