"""Help: every key of the main screen and the app, as a modal over whatever is showing."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from tui.actions import HELP_KEYS, MAIN_ACTIONS


def keys_table() -> Table:
    table = Table(box=None, header_style="bold", padding=(0, 2), pad_edge=False, expand=True)
    table.add_column("key", style="bold cyan", no_wrap=True)
    table.add_column("action", style="bold", no_wrap=True)
    table.add_column("what it does")
    for a in MAIN_ACTIONS:
        table.add_row(a.key, a.title, a.help)
    table.add_section()
    for key, what in HELP_KEYS:
        table.add_row(key, "", what)
    return table


class HelpScreen(ModalScreen[None]):
    """The keys; any of escape, f1, ? or q closes it."""

    BINDINGS = [Binding("escape,f1,question_mark,q", "dismiss(None)", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog help") as box:
            box.border_title = "meshlab keys"
            box.border_subtitle = "escape closes"
            yield Static(keys_table(), id="keys")
