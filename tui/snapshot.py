"""What one poll of the lab API reads: everything the main screen shows, fetched together."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tui.connection import LabApi
from tui.mesh import MeshView
from tui.traffic import EdgeRow, edges_of


@dataclass(frozen=True)
class LabSnapshot:
    """The lab API's answers of one poll, and their parsed views."""

    nodes: dict[str, Any]
    proxy_status: dict[str, Any]
    traffic: dict[str, Any]
    loads: dict[str, Any]
    config: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    taken: float = 0.0
    faults: dict[str, Any] = field(default_factory=dict)

    @property
    def mesh(self) -> MeshView:
        return MeshView.from_nodes(self.nodes)

    @property
    def edges(self) -> list[EdgeRow]:
        return edges_of(self.traffic)


def take_snapshot(api: LabApi, events_since: float = 0.0) -> LabSnapshot:
    """Ask the lab for everything the main screen shows (blocking: run it in a thread)."""
    return LabSnapshot(api.nodes(), api.proxy_status(), api.traffic(), api.loads(), api.get_config(),
                       api.events(events_since).get("events", []), time.time(), api.faults())
