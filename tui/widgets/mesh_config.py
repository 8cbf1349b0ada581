"""The mesh config in effect: the Istio objects applied to the lab, by kind and namespace/name."""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget


def item_ref(item: dict[str, Any]) -> str:
    """PeerAuthentication bookinfo/default."""
    meta = item.get("metadata") or {}
    return f"{item.get('kind', '?')} {meta.get('namespace', 'default')}/{meta.get('name', '?')}"


class MeshConfig(Widget):
    """The applied config objects: one line each, or kind and name on two lines when the panel is narrow."""

    items: reactive[tuple[dict[str, Any], ...]] = reactive(tuple, layout=True)

    def render(self) -> RenderableType:
        if not self.items:
            return Text("no mesh config applied — a to apply a file, e to write one", style="italic")
        width = self.size.width or 80
        text = Text()
        for item in self.items:
            kind, _, ref = item_ref(item).partition(" ")
            text.append(kind, "bold")
            text.append(f" {ref}\n" if len(kind) + len(ref) + 1 <= width else f"\n  {ref}\n")
        text.rstrip()
        return text
