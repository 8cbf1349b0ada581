"""A banner across the top when the lab does not answer: what went wrong, and that the TUI keeps trying."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget


class LabBanner(Widget):
    """'lab unavailable: <reason>', shown only while the lab API does not answer."""

    reason: reactive[str] = reactive("")

    def render(self) -> Text:
        return Text.assemble(("⚠ lab unavailable: ", "bold"), self.reason, ("  — retrying every second", "italic"))

    def watch_reason(self, reason: str) -> None:
        self.display = bool(reason)
