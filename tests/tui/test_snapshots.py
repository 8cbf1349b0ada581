"""SVG snapshots of the TUI's screens, made deterministic: recorded lab answers, one poll, a frozen clock.

Update them after an intended change with `pytest tests/tui/test_snapshots.py --snapshot-update`, look at the
new SVGs, and copy the main ones to docs/screenshots/ (see scripts in the README's Terminal UI section).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, TextArea

from tests.tui.pilot_helpers import seed_recorded_history, settle
from tui.app import MeshLabApp

SIZES = {"80x24": (80, 24), "120x40": (120, 40)}


@pytest.mark.parametrize("size", SIZES)
def test_main_screen(snap_compare: Any, recorded_app: MeshLabApp, recording: dict[str, Any], size: str) -> None:
    async def seeded(pilot: Pilot[Any]) -> None:
        await seed_recorded_history(pilot, recording)

    assert snap_compare(recorded_app, terminal_size=SIZES[size], run_before=seeded)


def after(recording: dict[str, Any], *keys: str, still: bool = True) -> Any:
    """A run_before: seed the history, press `keys`, let workers finish, stop cursors from blinking."""
    async def run(pilot: Pilot[Any]) -> None:
        await seed_recorded_history(pilot, recording)
        for key in keys:
            await pilot.press(key)
            await settle(pilot)
        if still:
            for widget in pilot.app.screen.query(Input):
                widget.cursor_blink = False
            for area in pilot.app.screen.query(TextArea):
                area.cursor_blink = False
        await settle(pilot)
    return run


@pytest.mark.parametrize("keys", [
    pytest.param(("f1",), id="help"),
    pytest.param(("down", "down", "c"), id="workload_certificate"),
    pytest.param(("p",), id="agent_detail"),
    pytest.param(("g",), id="access_logs"),
    pytest.param(("u",), id="resource_cost"),
    pytest.param(("f",), id="faults"),
    pytest.param(("f", "a"), id="fault_dialog"),
    pytest.param(("v",), id="events"),
    pytest.param(("l",), id="load_dialog"),
    pytest.param(("m",), id="mode_dialog"),
])
def test_detail_screens(snap_compare: Any, recorded_app: MeshLabApp, recording: dict[str, Any],
                        keys: tuple[str, ...]) -> None:
    assert snap_compare(recorded_app, terminal_size=(120, 40), run_before=after(recording, *keys))


def test_config_editor_shows_problems_inline(snap_compare: Any, recorded_app: MeshLabApp,
                                            recording: dict[str, Any]) -> None:
    async def broken(pilot: Pilot[Any]) -> None:
        await after(recording, "e")(pilot)
        area = pilot.app.screen.query_one(TextArea)
        area.text = area.text.replace("mode: PERMISSIVE", "mode: STRICTX")
        await pilot.press("ctrl+s")
        await settle(pilot)
        area.cursor_blink = False

    assert snap_compare(recorded_app, terminal_size=(100, 30), run_before=broken)


def test_start_screen(snap_compare: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHLAB_HOME", "/nonexistent/meshlab-home")
    (tmp_path / "bookinfo.yaml").write_text("# Istio's Bookinfo sample as a meshlab topology\nname: bookinfo\n")
    (tmp_path / "echo.yaml").write_text("# An echo server and a client on two nodes\nname: echo\n")
    app = MeshLabApp(topology_dirs=[tmp_path], docker_missing="needs a Docker engine (no `docker` command found)")
    assert snap_compare(app, terminal_size=(100, 30))
