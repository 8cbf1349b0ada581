"""Key press to repaint while a load run is going: the TUI must answer a key within a frame or two.

The key goes in as the terminal driver would post it; the repaint is the first screen update the app hands to its
driver that shows the key's effect (the mesh tree's cursor moved), with its terminal output rendered too.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from typing import Any

import pytest
from textual import events

from lab.client import LabClient
from tests.tui.pilot_helpers import wait_for_text
from tui.app import MeshLabApp
from tui.widgets.mesh_tree import MeshTree

pytestmark = pytest.mark.slow
PRESSES = 21


async def test_key_to_repaint_median_is_well_under_a_frame_budget_during_a_load_run(tui_lab: str) -> None:
    client = LabClient(tui_lab)
    client.set_mode("bookinfo", "ambient")
    run = client.start_load("productpage:9080/productpage", qps=50, duration="60s")
    app = MeshLabApp(tui_lab, poll_seconds=1.0)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for_text(pilot, "🔒 mTLS", "running", timeout=20)
            tree = app.screen.query_one(MeshTree)
            await pilot.press("down", "down", "down")  # the cursor in the middle of the tree: up and down both move
            assert tree.cursor_line == 2
            paints: list[tuple[float, int]] = []
            display = app._display

            def spy(screen: Any, renderable: Any) -> None:
                if renderable is not None:
                    renderable.render_segments(app.console)  # what the driver would write, made as it would be
                    paints.append((time.perf_counter(), tree.cursor_line))
                display(screen, renderable)

            app._display = spy  # type: ignore[method-assign]
            latencies = []
            for i in range(PRESSES):
                await asyncio.sleep(random.uniform(0.1, 0.4))  # land at different points of the 1 s poll cycle
                key = "down" if i % 2 == 0 else "up"
                before = tree.cursor_line
                pressed = time.perf_counter()
                app.post_message(events.Key(key, None))
                while not any(t > pressed and line != before for t, line in paints):
                    await asyncio.sleep(0.001)
                    assert time.perf_counter() - pressed < 5, "the key was never painted"
                latencies.append(next(t for t, line in paints if t > pressed and line != before) - pressed)
            ms = sorted(x * 1000 for x in latencies)
            median, p90 = statistics.median(ms), ms[int(len(ms) * 0.9) - 1]
            print(f"\nkey-to-repaint during a 50 qps load run over {PRESSES} presses: median {median:.1f} ms, "
                  f"p90 {p90:.1f} ms, max {ms[-1]:.1f} ms, min {ms[0]:.1f} ms")
            assert median < 250, ms
    finally:
        client.stop_load(run["id"])
