"""The meshlab terminal UI: attach to a lab (or bring one up), then watch and change its mesh live.

The TUI is a client of the lab API only (`lab.client`, `lab.errors`): it runs
every call in a thread so the screen keeps painting while the lab answers, and
shows every lab error as a message, never as a traceback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from lab.client import LabClient
from tui.actions import MAIN_ACTIONS, MeshAction
from tui.connection import ClientFactory, LabConnection
from tui.labs import providers, running_labs, topologies
from tui.quick_actions import WarmUp
from tui.screens.help import HelpScreen
from tui.screens.main import MainScreen
from tui.screens.start import LabReady, StartScreen


class MeshLabApp(App[int]):
    """One lab's mesh: the start screen when there is none to attach to, else the main screen."""

    TITLE = "meshlab"
    CSS_PATH = ["styles/app.tcss", "styles/dialogs.tcss", "styles/details.tcss"]
    BINDINGS = [
        Binding("f1", "help", "Help"),
        Binding("question_mark", "help", "Help", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, lab: str | None = None, *, factory: ClientFactory = LabClient, poll_seconds: float = 1.0,
                 clock: Callable[[], float] = time.time, topology_dirs: list[Path] | None = None,
                 docker_missing: str | None = None, warm: WarmUp | None = None) -> None:
        super().__init__()
        self.warm = warm
        self.lab = lab
        self.factory = factory
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.topology_dirs = topology_dirs
        self.docker_missing = docker_missing
        self.main_screen: MainScreen | None = None

    def on_mount(self) -> None:
        running = running_labs()
        lab = self.lab or (running[0] if len(running) == 1 else None)
        if lab:
            self.attach(lab)
        else:
            note = f"{len(running)} labs are running: pick one, or bring up another." if running else ""
            self.push_screen(StartScreen(topologies(self.topology_dirs), providers(self.docker_missing), running, note))

    def attach(self, lab: str) -> None:
        """Open the main screen on `lab` (in place of the start screen, if that is showing)."""
        self.lab = lab
        self.main_screen = MainScreen(LabConnection(lab, self.factory), self.poll_seconds, self.clock, self.warm)
        if isinstance(self.screen, StartScreen):
            self.switch_screen(self.main_screen)
        else:
            self.push_screen(self.main_screen)

    def on_lab_ready(self, message: LabReady) -> None:
        self.attach(message.lab)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        """The command palette: every main-screen action by name (with its key), then Textual's own."""
        if self.main_screen is not None:
            for a in MAIN_ACTIONS:
                yield SystemCommand(a.title, f"{a.help}  [key {a.key}]", partial(self.run_main_action, a))
        yield SystemCommand("Help", "Show every key  [key f1 or ?]", self.action_help)
        yield from super().get_system_commands(screen)

    def run_main_action(self, action: MeshAction) -> None:
        """Run a main-screen action from the palette, once the palette has closed."""
        if self.main_screen is None:
            self.notify("attach to a lab first", severity="warning")
            return
        self.call_after_refresh(self.main_screen.run_action, action.action)

def run(lab: str | None = None, warm: WarmUp | None = None) -> int:
    """`meshlab tui`: run the app until the user quits."""
    MeshLabApp(lab, warm=warm).run()
    return 0
