"""No lab yet: the start screen brings one up and streams `meshlab up`; a lab that goes away: a banner, retries."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.tui.conftest import meshlab, topology_copy
from tests.tui.pilot_helpers import wait_for_text, wait_until
from tui.app import MeshLabApp
from tui.screens.main import MainScreen
from tui.screens.start import StartScreen

pytestmark = pytest.mark.slow
NO_DOCKER = "needs a Docker engine (test)"


async def test_start_screen_brings_a_lab_up_streaming_its_progress(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHLAB_HOME", str(tmp_path / "home"))
    topologies = tmp_path / "topologies"
    topologies.mkdir()
    topology_copy(topologies, "echo", "tui-start")
    app = MeshLabApp(topology_dirs=[topologies], docker_missing=NO_DOCKER, poll_seconds=0.5)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for_text(pilot, "No lab is running", "tui-start", "local", NO_DOCKER)
            assert isinstance(app.screen, StartScreen)
            await pilot.press("enter")
            await wait_for_text(pilot, "$ meshlab up tui-start.yaml --provider local", "control plane started")
            await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), "the main screen", timeout=60)
            await wait_for_text(pilot, "meshlab · tui-start", "echo  none", "echo-v1", "SYNCED")
    finally:
        meshlab("down", "tui-start")


async def test_start_screen_shows_a_failed_up_where_it_happens(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHLAB_HOME", str(tmp_path / "home"))
    (tmp_path / "broken.yaml").write_text("name: tui-broken\nnodes:\n  - name: node-1\nworkloads:\n"
                                          "  - name: w\n    namespace: nowhere\n    node: node-9\n"
                                          "    run: {demo: sleep}\n")
    app = MeshLabApp(topology_dirs=[tmp_path], docker_missing=NO_DOCKER)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for_text(pilot, "broken")
        await pilot.press("enter")
        await wait_for_text(pilot, "invalid topology", "node-9", "meshlab up failed (exit 2)", timeout=30)
        assert isinstance(app.screen, StartScreen)  # still here, to pick again


async def test_a_lab_whose_control_plane_goes_away_shows_a_banner_and_recovers(tmp_path: Path) -> None:
    path = topology_copy(tmp_path, "echo", "tui-outage")
    assert meshlab("up", str(path)).returncode == 0
    try:
        app = MeshLabApp("tui-outage", poll_seconds=0.3)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for_text(pilot, "echo-v1", "SYNCED")
            home = Path(os.environ["MESHLAB_HOME"]) / "labs" / "tui-outage"
            os.kill(json.loads((home / "controlplane.json").read_text())["pid"], signal.SIGTERM)
            await wait_for_text(pilot, "lab unavailable:", "does not answer", "retrying")
            assert isinstance(app.screen, MainScreen)
            await pilot.press("l")  # an action against a lab that is away: an error in the dialog, not a crash
            await pilot.press("enter")
            await wait_for_text(pilot, "cannot start")
            await pilot.press("escape")
            started = time.monotonic()
            assert meshlab("up", str(path)).returncode == 0  # brings the control plane back
            await wait_for_text(pilot, "lab unavailable", absent=True, timeout=20)
            print(f"\nback {time.monotonic() - started:.1f}s after `meshlab up` started")
    finally:
        meshlab("down", "tui-outage")
