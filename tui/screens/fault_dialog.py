"""Add a live fault: its kind, its target, the kind's parameters, an optional TTL (and direction, toxicity for L4)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from lab.errors import LabError
from tui.connection import LabConnection, describe
from tui.faultcatalogue import LAYER_TITLES, FaultCatalogue, FaultKind, FaultParam
from tui.livefaults import countdown, parse_ttl


def fault_summary(answer: dict[str, Any]) -> str:
    """What the lab did: 'fault f3 added: abort on ratings.bookinfo status=503, expires in 1m00s'."""
    params = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in (answer.get("params") or {}).items())
    what = f"{answer.get('kind')} on {answer.get('targetText') or '-'}" + (f" {params}" if params else "")
    if answer.get("oneShot"):
        return f"{what}: done once ({answer.get('note') or 'see the lab events'})"
    ttl = ""
    if answer.get("expires") is not None and answer.get("created") is not None:
        ttl = f", expires in {countdown(float(answer['expires']) - float(answer['created']))}"
    return f"fault {answer.get('id')} added: {what}{ttl} (config v{answer.get('version')})"


KIND_ROW = 78  # characters a kind picker row has in the wide dialog


def kind_options(catalogue: FaultCatalogue) -> list[tuple[str, str]]:
    rows = []
    for k in catalogue.kinds:
        head = f"{k.name:<14} {LAYER_TITLES.get(k.layer, k.layer)}: "
        rows.append((head + k.short_help(KIND_ROW - len(head)), k.name))
    return rows


def param_label(p: FaultParam) -> str:
    """'delay us': the name, the unit a bare number is in when the help does not say it, a star when required."""
    unit = f" {p.unit}" if p.unit in ("ms", "us") and p.unit not in p.help.split() else ""
    return p.name + unit + (" *" if p.required else "")


class FaultDialog(ModalScreen[str | None]):
    """The form, made from the lab's fault catalogue; enter in a field or the Add button sends it; the lab's
    refusal (naming the field) stays here."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, connection: LabConnection, catalogue: FaultCatalogue, kind: str = "abort",
                 target: str = "") -> None:
        super().__init__()
        self.connection = connection
        self.catalogue = catalogue
        self.initial_kind = kind if kind in catalogue.by_name else catalogue.kinds[0].name
        self.initial_target = target

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="fault-form") as box:
            box.border_title = "add a fault"
            yield Label("kind")
            yield Select(kind_options(self.catalogue), value=self.initial_kind, allow_blank=False, id="kind")
            yield Static("", id="kind-help", classes="hint")
            yield Label("target", id="target-label")
            yield Input(self.initial_target, id="target")
            for i in range(self.catalogue.slots):
                with Horizontal(classes="param", id=f"slot-{i}"):
                    yield Label("", classes="param-name", id=f"param-name-{i}")
                    yield Input(id=f"param-{i}")
            with Horizontal(classes="param", id="traffic-fields"):
                yield Label("direction", classes="param-name")
                yield Select([(d, d) for d in self.catalogue.directions], allow_blank=False,
                             value=self.catalogue.kinds[0].direction, id="direction")
                yield Label("toxicity 0-1", classes="param-name", id="toxicity-label")
                yield Input("1", id="toxicity")
            with Horizontal(classes="param"):
                yield Label("TTL", classes="param-name")
                yield Input(placeholder="e.g. 30s, 5m — blank: until removed", id="ttl")
            yield Static("", id="error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Add", id="add", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.show_kind(self.catalogue.by_name[self.initial_kind])
        self.query_one("#target", Input).focus()

    @property
    def kind(self) -> FaultKind:
        return self.catalogue.by_name[str(self.query_one("#kind", Select).value)]

    @on(Select.Changed, "#kind")
    def _kind_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and event.value in self.catalogue.by_name:
            self.show_kind(self.catalogue.by_name[event.value])

    def show_kind(self, kind: FaultKind) -> None:
        """Relabel the parameter fields for `kind`, with its defaults; hide what it does not take."""
        self.query_one("#kind-help", Static).update(f"{LAYER_TITLES.get(kind.layer, kind.layer)} — {kind.help}"
                                                    + (" (done once, not kept)" if kind.one_shot else ""))
        self.query_one("#target", Input).placeholder = kind.target_hint
        self.query_one("#target-label", Label).update(f"target: {kind.target_hint}")
        for i in range(self.catalogue.slots):
            slot = self.query_one(f"#slot-{i}")
            slot.display = i < len(kind.params)
            if i < len(kind.params):
                p = kind.params[i]
                self.query_one(f"#param-name-{i}", Label).update(param_label(p))
                field = self.query_one(f"#param-{i}", Input)
                field.value, field.placeholder, field.tooltip = p.default, p.help, p.help
        self.query_one("#traffic-fields").display = kind.has_direction
        self.query_one("#toxicity", Input).display = kind.has_toxicity
        self.query_one("#toxicity-label").display = kind.has_toxicity
        if kind.direction in self.catalogue.directions:
            self.query_one("#direction", Select).value = kind.direction
        self.query_one("#ttl", Input).disabled = kind.one_shot

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#add")
    @on(Input.Submitted)
    def _submit(self) -> None:
        kind = self.kind
        error = self.query_one("#error", Static)
        params = {p.name: self.query_one(f"#param-{i}", Input).value.strip() for i, p in enumerate(kind.params)}
        params = {k: v for k, v in params.items() if v}
        try:
            ttl = None if kind.one_shot else parse_ttl(self.query_one("#ttl", Input).value)
            toxicity = float(self.query_one("#toxicity", Input).value or 1) if kind.has_toxicity else None
        except ValueError as e:
            error.update(Text(str(e) if "ttl" in str(e) else "toxicity: want a number from 0 to 1", style="red"))
            return
        direction = str(self.query_one("#direction", Select).value) if kind.has_direction else None
        target = self.query_one("#target", Input).value.strip() or None
        self.add(kind.name, target, params, ttl, toxicity, direction)

    @work(exclusive=True)
    async def add(self, kind: str, target: str | None, params: dict[str, str], ttl: float | None,
                  toxicity: float | None, direction: str | None) -> None:
        """Ask the lab to add the fault; close with what it did, or show its refusal."""
        error = self.query_one("#error", Static)
        error.update(f"adding {kind} …")
        try:
            answer = await self.connection.call(
                lambda api: api.add_fault(kind, target, params, ttl, toxicity, direction))
        except LabError as e:
            error.update(Text.assemble(("cannot add: ", "bold"), describe(e)))
            return
        self.dismiss(fault_summary(answer))
