"""Helpers for driving the app with Pilot: wait for what a person would wait for, seed recorded history."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from textual.pilot import Pilot

from tests.tui.screen import screen_text
from tui.app import MeshLabApp
from tui.messages import LabPolled
from tui.traffic import edges_of


async def settle(pilot: Pilot[Any]) -> None:
    """Let every worker finish and every message be handled."""
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def wait_for_text(pilot: Pilot[Any], *needles: str, timeout: float = 15.0,
                        absent: bool = False) -> str:
    """Wait until the screen shows every needle (or none, with absent=True); the screen's text."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = screen_text(pilot.app)
        if all((n in text) != absent for n in needles):
            return text
        await pilot.pause(0.1)
    raise AssertionError(f"{'still' if absent else 'never'} saw {needles!r} on screen:\n{text}")


async def wait_until(pilot: Pilot[Any], check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Wait until `check()` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await pilot.pause(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{screen_text(pilot.app)}")


async def seed_recorded_history(pilot: Pilot[Any], recording: dict[str, Any]) -> None:
    """Show the recording's traffic samples in order, as if the app had polled them one a second."""
    await settle(pilot)
    app = pilot.app
    assert isinstance(app, MeshLabApp) and app.main_screen is not None and app.main_screen.snapshot is not None
    screen, snapshot = app.main_screen, app.main_screen.snapshot
    screen.history.clear()
    for sample in recording["traffic"][:-1]:
        screen.history.add(edges_of(sample))
    screen.post_message(LabPolled(snapshot))
    await settle(pilot)


async def wait_for_notice(pilot: Pilot[Any], *needles: str, timeout: float = 15.0) -> str:
    """Wait until one notification (toast) says every needle; its text (toasts wrap, so the screen may split it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for n in list(pilot.app._notifications):
            if all(needle in n.message for needle in needles):
                return n.message
        await pilot.pause(0.1)
    raise AssertionError(f"no notification said {needles!r}; they were: {[n.message for n in pilot.app._notifications]}")
