"""The start screen: no lab to attach to, so pick a topology and a provider and bring one up, watching its progress."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Label, OptionList, RadioButton, RadioSet, RichLog
from textual.widgets.option_list import Option

from tui.labs import ProviderChoice, TopologyChoice, meshlab_home


@dataclass
class LabReady(Message):
    """A lab is there to attach to: brought up from here, or picked from the running ones."""

    lab: str


def up_command(topology: TopologyChoice, provider: str) -> list[str]:
    """`meshlab up TOPOLOGY --provider P`, run with this interpreter."""
    return [sys.executable, "-m", "lab.cli.main", "up", str(topology.path), "--provider", provider]


def is_error_line(line: str) -> bool:
    return line.startswith("meshlab:") or line.startswith("  ") or "error" in line.lower() or "failed" in line.lower()


class StartScreen(Screen[None]):
    """Topologies, providers, running labs; `meshlab up` streams its progress lines into the log below."""

    BINDINGS = [Binding("u", "bring_up", "Bring up"), Binding("ctrl+q", "app.quit", "Quit")]

    def __init__(self, topologies: list[TopologyChoice], providers: list[ProviderChoice],
                 running: list[str], note: str = "") -> None:
        super().__init__()
        self.topologies = topologies
        self.providers = providers
        self.running = running
        self.note = note
        self.busy = False

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="⬡")
        with Horizontal(id="choices"):
            with Vertical(id="topology-box"):
                yield OptionList(*[Option(t.label, id=str(i)) for i, t in enumerate(self.topologies)], id="topologies")
            with Vertical(id="provider-box"):
                with RadioSet(id="providers"):
                    for p in self.providers:
                        yield RadioButton(p.name + (f" — {p.blocked}" if p.blocked else ""), value=p.name == "local",
                                          disabled=bool(p.blocked), id=f"provider-{p.name}")
                yield Button("Bring the lab up", id="up", variant="primary")
                if self.running:
                    yield Label("or attach to a running lab:")
                    yield OptionList(*[Option(lab, id=lab) for lab in self.running], id="running")
        yield RichLog(id="progress", wrap=True, markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.title = "meshlab"
        self.sub_title = "no lab attached"
        self.query_one("#topology-box").border_title = "topology"
        self.query_one("#provider-box").border_title = "provider"
        self.query_one("#progress").border_title = "meshlab up"
        self.query_one("#topologies").focus()
        self.call_after_refresh(self._introduce)

    def _introduce(self) -> None:
        log = self.query_one(RichLog)
        log.write(Text(self.note or f"No lab is running in {meshlab_home()}.", style="bold"))
        log.write("Pick a topology and a provider, then press enter (or the button) to bring the lab up.")
        if not self.topologies:
            log.write(Text("no topology files found (looked for topologies/*.yaml)", style="red"))

    def chosen_provider(self) -> str:
        pressed = self.query_one(RadioSet).pressed_button
        return str(pressed.id).removeprefix("provider-") if pressed is not None else "local"

    @on(OptionList.OptionSelected, "#topologies")
    @on(Button.Pressed, "#up")
    def action_bring_up(self) -> None:
        index = self.query_one("#topologies", OptionList).highlighted
        if self.busy or index is None or not self.topologies:
            return
        self.bring_up(self.topologies[index], self.chosen_provider())

    @on(OptionList.OptionSelected, "#running")
    def _attach_running(self, event: OptionList.OptionSelected) -> None:
        self.post_message(LabReady(str(event.option.id)))

    @work(exclusive=True)
    async def bring_up(self, topology: TopologyChoice, provider: str) -> None:
        """Run `meshlab up` and stream its lines here; attach when it succeeds, keep the error in view when not."""
        log = self.query_one(RichLog)
        self.busy = True
        self.query_one("#up", Button).disabled = True
        argv = up_command(topology, provider)
        log.write(Text(f"$ meshlab up {topology.path.name} --provider {provider}", style="bold cyan"))
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.STDOUT)
        except OSError as e:
            log.write(Text(f"cannot run meshlab up: {e}", style="bold red"))
            self._idle()
            return
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            log.write(Text(line, style="bold red" if is_error_line(line) else ""))
        code = await proc.wait()
        if code != 0:
            log.write(Text(f"meshlab up failed (exit {code}): fix what the lines above say, then try again",
                           style="bold red"))
            self._idle()
            return
        log.write(Text(f"lab {topology.name} is up — opening it", style="bold green"))
        self.post_message(LabReady(topology.name))

    def _idle(self) -> None:
        self.busy = False
        self.query_one("#up", Button).disabled = False
