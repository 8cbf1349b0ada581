"""`meshlab tui` in a real terminal (tmux), driven with keys and read back from the screen, as a person would."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.client import LabClient
from tests.tui.conftest import topology_copy

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (CI installs it)")]
ROOT = Path(__file__).resolve().parents[2]


class Terminal:
    """A tmux session of its own server (its own socket), 120×40, running one command."""

    def __init__(self, command: str, width: int = 120, height: int = 40) -> None:
        self.socket = f"meshlab-tui-test-{os.getpid()}"
        self.tmux("new-session", "-d", "-s", "tui", "-x", str(width), "-y", str(height),
                  "-e", f"MESHLAB_HOME={os.environ['MESHLAB_HOME']}", command)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True,
                              timeout=10, env={**os.environ, "TERM": "xterm-256color"}).stdout

    def screen(self, styles: bool = False) -> str:
        """The pane's text (with `styles`, its colours too: a moved cursor changes only those)."""
        return self.tmux("capture-pane", "-p", *(["-e"] if styles else []), "-t", "tui")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "tui", *keys)

    def wait_for(self, *needles: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if all(n in text for n in needles):
                return text
            time.sleep(0.1)
        raise AssertionError(f"never saw {needles!r} in the terminal:\n{text}")

    def alive(self) -> bool:
        return subprocess.run(["tmux", "-L", self.socket, "has-session", "-t", "tui"],
                              capture_output=True).returncode == 0

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def terminal(tui_lab: str) -> Iterator[Terminal]:
    meshlab = Path(sys.executable).with_name("meshlab")
    cli = str(meshlab) if meshlab.exists() else f"{sys.executable} -m lab.cli.main"
    term = Terminal(f"cd {ROOT} && {cli} tui --lab {tui_lab}; sleep 30")
    try:
        yield term
    finally:
        term.close()


def test_meshlab_tui_in_a_terminal(terminal: Terminal, tui_lab: str) -> None:
    client = LabClient(tui_lab)
    client.set_mode("bookinfo", "none")
    terminal.wait_for("service graph", "bookinfo  none", "proxy-status")

    terminal.keys("m")
    terminal.wait_for("mode of namespace bookinfo")
    terminal.keys("Enter")  # ambient, the suggested mode
    terminal.wait_for("bookinfo  ambient")

    terminal.keys("l")
    terminal.wait_for("start a load run", "productpage:9080/productpage")
    terminal.keys("Enter")
    terminal.wait_for("running", "mTLS", "─▶ details-v1", timeout=30)

    times = []  # key to repaint as the terminal shows it (tmux capture included, so an upper bound)
    for key in ("Down", "Down", "Up", "Down", "Up", "Up", "Down"):
        before = terminal.screen(styles=True)
        sent = time.monotonic()
        terminal.keys(key)
        while terminal.screen(styles=True) == before and time.monotonic() - sent < 5:
            pass
        times.append((time.monotonic() - sent) * 1000)
    print(f"\nkey-to-repaint in tmux (incl. capture-pane): median {statistics.median(times):.0f} ms, "
          f"max {max(times):.0f} ms")
    assert statistics.median(times) < 1000

    terminal.keys("F1")
    terminal.wait_for("meshlab keys", "Switch namespace mode", "Start load run")
    terminal.keys("Escape")
    time.sleep(0.3)  # a key right after escape would arrive as alt+key, in any terminal app
    terminal.keys("x")
    terminal.wait_for("stopp")
    terminal.keys("q")
    deadline = time.monotonic() + 10
    while "service graph" in terminal.screen() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "service graph" not in terminal.screen()
    assert "Traceback" not in terminal.screen()


def test_make_lab_shows_traffic_within_seconds(tmp_path: Path) -> None:
    """`make lab` as a person runs it: bookinfo comes up, the TUI opens, and an edge shows traffic. The time to
    the first non-zero edge on screen is printed; the assertion is a generous bound (2 shared cores), the issue's
    target is 10 s."""
    lab = "tui-make-lab"
    topology = topology_copy(tmp_path, "bookinfo", lab)
    term = Terminal(f"cd {ROOT} && make lab TOPO={topology} LAB={lab} LOAD=productpage:9080/productpage; sleep 30")
    started = time.monotonic()
    try:
        deadline = started + 60
        seen = ""
        while time.monotonic() < deadline:
            seen = term.screen()
            rows = [ln for ln in seen.splitlines() if "─▶" in ln and "mTLS" in ln]
            if any(re.search(r"mTLS\s+\d+(\.\d)?\b", ln) for ln in rows):  # a rate, not '·'
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no edge with traffic within 60 s of `make lab`:\n{seen}")
        took = time.monotonic() - started
        print(f"\n`make lab` to the first edge with traffic on screen: {took:.1f} s (target 10 s)")
        assert took < 45
        assert "Traceback" not in seen
    finally:
        term.close()
        subprocess.run([sys.executable, "-m", "lab.cli.main", "down", lab], capture_output=True, timeout=120)
