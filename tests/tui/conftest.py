"""Fixtures of the TUI tests: recorded answers for deterministic screens, a real local lab for the actions."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tui.recorded_lab import FROZEN_NOW, RecordedLab, load_recording
from tui.app import MeshLabApp

ROOT = Path(__file__).resolve().parents[2]


def meshlab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the meshlab CLI as a user would (this interpreter, this MESHLAB_HOME)."""
    return subprocess.run([sys.executable, "-m", "lab.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def topology_copy(folder: Path, source: str, name: str) -> Path:
    """A shipped topology under another lab name, so these tests never touch another module's lab."""
    text = (ROOT / "topologies" / f"{source}.yaml").read_text()
    lines = [f"name: {name}" if ln.startswith("name:") else ln for ln in text.splitlines()]
    path = folder / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tui_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real bookinfo lab on the local provider, named tui-bookinfo, for one test module."""
    name = "tui-bookinfo"
    path = topology_copy(tmp_path_factory.mktemp("topologies"), "bookinfo", name)
    up = meshlab("up", str(path))
    assert up.returncode == 0, up.stderr
    try:
        yield name
    finally:
        meshlab("down", name)


@pytest.fixture
def recording() -> dict[str, Any]:
    return load_recording()


@pytest.fixture
def recorded_app(recording: dict[str, Any]) -> MeshLabApp:
    """The app on a lab that answers with recorded answers, polled once, at a frozen time."""
    return MeshLabApp("bookinfo", factory=lambda lab: RecordedLab(lab, recording), poll_seconds=0,
                      clock=lambda: FROZEN_NOW)
