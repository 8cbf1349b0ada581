"""Write Istio YAML in an editor and apply it; the lab's problems appear below, the cursor jumps to the first."""

from __future__ import annotations

import contextlib
import re
from typing import Any

import yaml
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header, Static, TextArea

from lab.errors import LabError
from tui.connection import LabConnection
from tui.screens.apply_dialog import apply_summary, problem_text

SOURCE = "editor.yaml"  # the name the lab's problems refer to
TEMPLATE = """\
# Istio YAML, applied as is (all documents or none): ctrl+s applies, escape goes back.
# Require mutual TLS for every workload of namespace bookinfo:
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: bookinfo
spec:
  mtls:
    mode: STRICT
"""
WHERE = re.compile(r"\((?:[^():]*):(\d+)\)\s*$")


def config_yaml(items: list[dict[str, Any]]) -> str:
    """The applied config as editable YAML documents."""
    return "---\n".join(yaml.safe_dump(i, sort_keys=False) for i in items)


def first_problem_line(problems: list[str]) -> int | None:
    """The 1-based line of the first problem that names one."""
    for p in problems:
        m = WHERE.search(p)
        if m:
            return int(m.group(1))
    return None


class ConfigEditor(Screen[str | None]):
    """A YAML editor over the lab's config (or a template when none is applied)."""

    BINDINGS = [Binding("ctrl+s", "apply", "Apply", priority=True), Binding("escape", "dismiss(None)", "Back")]

    def __init__(self, connection: LabConnection, items: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.connection = connection
        self.initial = config_yaml(items) if items else TEMPLATE

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="⬡")
        yield TextArea(self.initial, id="editor", show_line_numbers=True, tab_behavior="indent")
        yield Static("ctrl+s applies the whole text as one atomic change", id="problems")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"meshlab · {self.connection.lab}"
        self.sub_title = "edit and apply mesh config"
        editor = self.query_one(TextArea)
        with contextlib.suppress(Exception):  # no syntax highlighting without tree-sitter: plain text is fine
            editor.language = "yaml"
        editor.focus()

    def action_apply(self) -> None:
        self.apply(self.query_one(TextArea).text)

    @work(exclusive=True)
    async def apply(self, text: str) -> None:
        """Apply the editor's text; close with what changed, or show the problems and go to the first."""
        problems = self.query_one("#problems", Static)
        problems.remove_class("error")
        problems.update("applying …")
        try:
            result = await self.connection.call(lambda api: api.apply([(SOURCE, text)]))
        except LabError as e:
            problems.add_class("error")
            problems.update(problem_text(e))
            line = first_problem_line(getattr(e, "problems", []))
            if line is not None:
                editor = self.query_one(TextArea)
                editor.move_cursor((line - 1, 0))
                editor.focus()
            return
        self.dismiss(apply_summary(result))
