"""The fault kinds the faults panel offers, as the lab's `GET /v1/faults/kinds` describes them.

The TUI keeps no copy of the catalogue: it asks the lab once a session (`LabConnection.fault_catalogue`)
and builds the panel's table and the add form from the answer. The lab checks every value: the form sends
what was typed, as text, and shows the lab's refusal (it names the field).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LAYER_TITLES = {"l7": "L7 · waypoint, sidecar", "l4": "L4 · ztunnel", "node": "node", "process": "process",
                "security": "certificates"}
# what the form pre-fills for a required parameter, so that enter alone adds a fault a learner can see
EXAMPLE_OF_TYPE = {"status": "503", "duration": "1s", "ms": "200", "us": "500", "int": "100", "percent": "100"}


@dataclass(frozen=True)
class FaultParam:
    """One parameter of a kind, as the form asks for it."""

    name: str
    type: str  # ms, us, int, percent, status, duration, header, bool
    help: str
    unit: str = ""  # of the value the lab keeps: ms, us, s, %
    default: str = ""  # shown pre-filled ("" when there is none)
    required: bool = False

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> FaultParam:
        default = doc.get("default")
        kind = str(doc.get("type", ""))
        required = bool(doc.get("required"))
        if default is None:
            text = EXAMPLE_OF_TYPE.get(kind, "") if required else ""
        else:
            text = str(default).lower() if isinstance(default, bool) else f"{default:g}" if isinstance(
                default, float) else str(default)
        return cls(str(doc.get("name", "?")), kind, str(doc.get("help", "")), str(doc.get("unit") or ""), text,
                   required)


@dataclass(frozen=True)
class FaultKind:
    """A kind of fault: what it does, where it is enforced, what it targets, what it needs."""

    name: str
    layer: str  # l7, l4, node, process, security
    targets: tuple[str, ...]  # service, workload, node, edge
    help: str
    params: tuple[FaultParam, ...] = ()
    direction: str = "downstream"  # the lab's default
    one_shot: bool = False  # done once when added (a kill), never listed as live

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> FaultKind:
        return cls(str(doc.get("name", "?")), str(doc.get("layer", "?")), tuple(str(t) for t in doc.get("targets", [])),
                   str(doc.get("help", "")), tuple(FaultParam.from_json(p) for p in doc.get("params", [])),
                   str(doc.get("direction") or "downstream"), bool(doc.get("oneShot")))

    def short_help(self, width: int) -> str:
        """The help's first clause, cut to `width` (the kind picker's rows are one line each)."""
        text = self.help.split(" (")[0].split(";")[0].split(":")[0]
        return text if len(text) <= width else text[: width - 1].rstrip() + "…"

    @property
    def target_hint(self) -> str:
        """What the target field takes, in words: 'service, workload or SRC->DST'."""
        words = [("SRC->DST" if t == "edge" else t) for t in self.targets]
        if not words:
            return "no target (the whole lab)"
        return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]

    @property
    def has_direction(self) -> bool:
        """Whether it acts on one direction of traffic (L4 toxics, a one-way partition)."""
        return self.layer == "l4" or self.name == "partition"

    @property
    def has_toxicity(self) -> bool:
        """Whether it hits a share of connections (L4 toxics; L7 faults have a percentage instead)."""
        return self.layer == "l4"


@dataclass
class FaultCatalogue:
    """Every kind the lab offers (L7 first, as a learner reaches for them), and the directions it takes."""

    kinds: tuple[FaultKind, ...]
    directions: tuple[str, ...] = ("upstream", "downstream", "both")
    by_name: dict[str, FaultKind] = field(init=False, repr=False)

    @classmethod
    def from_json(cls, answer: dict[str, Any]) -> FaultCatalogue:
        """Parse a `/v1/faults/kinds` answer; an answer without kinds is an error (the form would be empty)."""
        order = list(LAYER_TITLES)
        kinds = [FaultKind.from_json(k) for k in answer.get("kinds", [])]
        if not kinds:
            raise ValueError("the lab's fault catalogue has no kinds")
        kinds.sort(key=lambda k: order.index(k.layer) if k.layer in order else len(order))  # stable within a layer
        directions = tuple(str(d) for d in answer.get("directions") or ("upstream", "downstream", "both"))
        return cls(tuple(kinds), directions)

    def __post_init__(self) -> None:
        self.by_name = {k.name: k for k in self.kinds}

    @property
    def slots(self) -> int:
        """How many parameter fields the form needs (the most any kind takes)."""
        return max((len(k.params) for k in self.kinds), default=0)
