"""Live faults: the model, and the store in the lab folder (`faults.json`, atomic writes).

A fault is an id, a kind, a target, parameters, a direction and a toxicity,
with its creation time and an optional expiry. The store survives a
control-plane restart; the control plane reverts expired faults itself.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.faults.catalogue import KINDS, LAYER_OF_AGENT, FaultError, check_params
from lab.faults.targets import describe, parse_target, resolve_for_agents
from lab.state import atomic_write

DIRECTIONS = ("upstream", "downstream", "both")


@dataclass
class Fault:
    id: str
    kind: str
    target: dict[str, Any] | None
    params: dict[str, Any]
    direction: str
    toxicity: float
    created: float
    expires: float | None = None
    note: str = ""  # what the lab did about it (enforced by, provider answer)
    effect: dict[str, Any] = field(default_factory=dict)  # what a revert needs (e.g. the identity revoked)

    @property
    def layer(self) -> str:
        return KINDS[self.kind].layer

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and (time.time() if now is None else now) >= self.expires

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["layer"] = self.layer
        doc["targetText"] = describe(self.target)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Fault:
        fields = {k: doc[k] for k in ("id", "kind", "target", "params", "direction", "toxicity", "created")}
        return cls(**fields, expires=doc.get("expires"), note=doc.get("note", ""), effect=doc.get("effect") or {})

    def for_agents(self, state: dict[str, Any]) -> dict[str, Any]:
        """The agent-facing shape (agents/common/faults.py)."""
        return {"id": self.id, "kind": self.kind, "layer": LAYER_OF_AGENT[self.layer],
                "target": resolve_for_agents(self.target, state), "params": {**self.params, **self.effect},
                "direction": self.direction, "toxicity": self.toxicity, "expiresAt": self.expires}


def new_fault(fid: str, request: dict[str, Any], state: dict[str, Any], now: float | None = None) -> Fault:
    """Check an add request (`kind`, `target`, `params`, `direction`, `toxicity`, `ttlSeconds`); raises FaultError."""
    if not isinstance(request, dict):
        raise FaultError("request: want a JSON object")
    params = request.get("params") or {}
    if not isinstance(params, dict):
        raise FaultError("params: want an object of NAME: VALUE")
    checked = check_params(str(request.get("kind") or ""), params)
    kind = checked.kind
    direction = request.get("direction") or kind.direction
    if direction not in DIRECTIONS:
        raise FaultError(f"direction: want one of {', '.join(DIRECTIONS)}, got {direction!r}")
    toxicity = request.get("toxicity", 1.0)
    try:
        toxicity = float(1.0 if toxicity is None else toxicity)
    except (TypeError, ValueError):
        raise FaultError(f"toxicity: want a number from 0 to 1, got {toxicity!r}") from None
    if not 0.0 <= toxicity <= 1.0:
        raise FaultError(f"toxicity: want a number from 0 to 1, got {toxicity}")
    ttl = request.get("ttlSeconds")
    if ttl is not None:
        try:
            ttl = float(ttl)
        except (TypeError, ValueError):
            raise FaultError(f"ttl: want seconds, got {ttl!r}") from None
        if ttl <= 0:
            raise FaultError(f"ttl: want a positive duration, got {ttl}")
    target = parse_target(request.get("target"), kind, state)
    now = time.time() if now is None else now
    return Fault(fid, kind.name, target, checked.params, direction, toxicity, now,
                 None if ttl is None else now + ttl)


class FaultStore:
    """The lab's live faults, kept in `faults.json`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.next_id = 1
        self.faults: dict[str, Fault] = {}
        self._load()

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            raise LabError(f"cannot read the faults of this lab ({self.path}): {e}") from None
        try:
            self.next_id = int(doc.get("nextId", 1))
            self.faults = {f["id"]: Fault.from_json(f) for f in doc.get("faults", [])}
        except (KeyError, TypeError, ValueError) as e:
            raise LabError(f"{self.path}: a fault entry is malformed ({type(e).__name__}: {e})") from None

    def save(self) -> None:
        atomic_write(self.path, json.dumps({"nextId": self.next_id,
                                            "faults": [asdict(f) for f in self.faults.values()]}, indent=2) + "\n")

    def allocate_id(self) -> str:
        fid = f"f{self.next_id}"
        self.next_id += 1
        return fid

    def add(self, fault: Fault) -> None:
        self.faults[fault.id] = fault
        self.save()

    def remove(self, fid: str) -> Fault:
        fault = self.faults.pop(fid, None)
        if fault is None:
            raise FaultNotFound(f"no fault {fid!r} (faults: {', '.join(self.faults) or 'none'})")
        self.save()
        return fault

    def list(self) -> list[Fault]:
        return sorted(self.faults.values(), key=lambda f: f.created)

    def expired(self, now: float | None = None) -> list[Fault]:
        return [f for f in self.list() if f.expired(now)]

    def for_agents(self, state: dict[str, Any], now: float | None = None) -> list[dict[str, Any]]:
        """Every live fault an agent enforces, in the agent-facing shape."""
        return [f.for_agents(state) for f in self.list() if KINDS[f.kind].agent and not f.expired(now)]


class FaultNotFound(LabError):
    exit_code = 3
