"""Messages the TUI's screens and widgets send each other: small dataclasses (Textual initialises them)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from tui.mesh import MeshRef
from tui.snapshot import LabSnapshot


@dataclass
class LabPolled(Message):
    """One poll of the lab API answered."""

    snapshot: LabSnapshot


@dataclass
class LabUnavailable(Message):
    """The lab's control plane did not answer (or the lab is gone); the poll keeps retrying."""

    reason: str


@dataclass
class MeshSelected(Message):
    """The mesh tree's cursor moved onto a node, workload, agent, namespace or service."""

    ref: MeshRef


@dataclass
class LabChanged(Message):
    """An action changed the lab (mode, config, load run): say so and poll now."""

    summary: str
