"""Live faults as an agent sees them: parsed from a config snapshot, matched against connections and requests.

The control plane puts every fault an agent may enforce into the agent's
snapshot as a `"faults"` list (docs/architecture.md, "Faults"):

    {"id": "f-3", "kind": "latency", "layer": "l4", "target": {...}, "params": {"latency": 200},
     "direction": "downstream", "toxicity": 1.0, "expiresAt": 1718000000.0}

A target is `{"type": "service"|"workload"|"node", "name", "namespace"?, "workloads": [...],
"services": [...]}` or an edge `{"type": "edge", "source": END, "destination": END}` with two such
ends; `workloads` and `services` are what the control plane resolved the end to, so an agent needs
nothing else to match. Expiry is checked at every use: an agent cut off from its control plane
still drops a fault at `expiresAt`. Pure code, standard library only.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

LAYERS = ("l4", "l7")
DIRECTIONS = ("upstream", "downstream", "both")
TARGET_TYPES = ("service", "workload", "node")


class FaultFormatError(ValueError):
    """A fault in a snapshot the agent cannot use; the message names the field."""


@dataclass(frozen=True)
class TargetEnd:
    """One end of a target: a service, workload or node, with what it was resolved to."""

    type: str
    name: str
    namespace: str = ""
    workloads: frozenset[str] = frozenset()
    nodes: frozenset[str] = frozenset()
    services: frozenset[str] = frozenset()  # "name.namespace"

    def has_workload(self, workload: str | None, node: str | None) -> bool:
        if self.type == "node":
            return node is not None and node in self.nodes
        return workload is not None and workload in self.workloads

    def is_destination(self, workload: str | None, node: str | None, service: str | None) -> bool:
        """Whether a connection to `workload` (on `node`) for `service` goes to this end."""
        if self.type == "service" and service is not None:
            return service in self.services
        if workload is None and node is None and service is not None:  # L7, before routing picked a workload
            return service in self.services
        return self.has_workload(workload, node)


@dataclass(frozen=True)
class AgentFault:
    """One fault from a snapshot."""

    id: str
    kind: str
    layer: str
    target_type: str
    ends: tuple[TargetEnd, ...]  # one end, or (source, destination) of an edge
    params: Mapping[str, Any]
    direction: str
    toxicity: float
    expires_at: float | None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def active(self, now: float | None = None) -> bool:
        return self.expires_at is None or (time.time() if now is None else now) < self.expires_at

    def matches(self, conn: ConnFacts) -> bool:
        """Whether this fault's target covers a connection (or request) described by `conn`."""
        if self.target_type == "edge":
            source, destination = self.ends
            return (source.has_workload(conn.source_workload, conn.source_node)
                    and destination.is_destination(conn.destination_workload, conn.destination_node, conn.service))
        end = self.ends[0]
        if end.type == "service":
            return end.is_destination(conn.destination_workload, conn.destination_node, conn.service)
        return (end.has_workload(conn.source_workload, conn.source_node)
                or end.has_workload(conn.destination_workload, conn.destination_node))


@dataclass(frozen=True)
class ConnFacts:
    """What an agent knows of a connection or request (None: unknown)."""

    source_workload: str | None = None
    source_node: str | None = None
    destination_workload: str | None = None
    destination_node: str | None = None
    service: str | None = None  # "name.namespace"


def parse_faults(raw: Any) -> list[AgentFault]:
    """Check a snapshot's `faults` list (None or missing: no faults); raises FaultFormatError."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise FaultFormatError(f"faults: want a list, got {type(raw).__name__}")
    return [_fault(item, f"faults[{i}]") for i, item in enumerate(raw)]


def _fault(raw: Any, where: str) -> AgentFault:
    if not isinstance(raw, dict):
        raise FaultFormatError(f"{where}: want an object, got {type(raw).__name__}")
    for key in ("id", "kind", "layer"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise FaultFormatError(f"{where}.{key}: want a non-empty string, got {raw.get(key)!r}")
    if raw["layer"] not in LAYERS:
        raise FaultFormatError(f"{where}.layer: want one of {', '.join(LAYERS)}, got {raw['layer']!r}")
    direction = raw.get("direction") or "downstream"
    if direction not in DIRECTIONS:
        raise FaultFormatError(f"{where}.direction: want one of {', '.join(DIRECTIONS)}, got {direction!r}")
    toxicity = raw.get("toxicity", 1.0)
    if not isinstance(toxicity, (int, float)) or isinstance(toxicity, bool) or not 0 <= toxicity <= 1:
        raise FaultFormatError(f"{where}.toxicity: want a number from 0 to 1, got {toxicity!r}")
    expires = raw.get("expiresAt")
    if expires is not None and (not isinstance(expires, (int, float)) or isinstance(expires, bool)):
        raise FaultFormatError(f"{where}.expiresAt: want epoch seconds or null, got {expires!r}")
    params = raw.get("params") or {}
    if not isinstance(params, dict):
        raise FaultFormatError(f"{where}.params: want an object, got {type(params).__name__}")
    target = raw.get("target")
    if not isinstance(target, dict):
        raise FaultFormatError(f"{where}.target: want an object, got {type(target).__name__}")
    if target.get("type") == "edge":
        ends = (_end(target.get("source"), f"{where}.target.source"),
                _end(target.get("destination"), f"{where}.target.destination"))
    else:
        ends = (_end(target, f"{where}.target"),)
    fault = AgentFault(raw["id"], raw["kind"], raw["layer"], str(target.get("type")), ends, dict(params), direction,
                       float(toxicity), None if expires is None else float(expires), raw)
    if fault.layer == "l7":
        _check_l7(fault, where)
    return fault


def _end(raw: Any, where: str) -> TargetEnd:
    if not isinstance(raw, dict):
        raise FaultFormatError(f"{where}: want an object, got {type(raw).__name__}")
    kind = raw.get("type")
    if kind not in TARGET_TYPES:
        raise FaultFormatError(f"{where}.type: want one of {', '.join(TARGET_TYPES)}, got {kind!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise FaultFormatError(f"{where}.name: want a non-empty string, got {name!r}")
    sets = {}
    for key in ("workloads", "nodes", "services"):
        value = raw.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise FaultFormatError(f"{where}.{key}: want a list of names")
        sets[key] = frozenset(value)
    return TargetEnd(kind, name, str(raw.get("namespace") or ""), **sets)


# ---------------------------------------------------------------- L4: which faults hit a connection


def connection_faults(faults: Iterable[AgentFault], conn: ConnFacts, kinds: Iterable[str] | None = None,
                      rng: random.Random | None = None, now: float | None = None,
                      draw: bool = True) -> list[AgentFault]:
    """The active L4 faults (of `kinds`, if given) that apply to one new connection, after the toxicity draw.

    `draw=False`: the faults that *may* apply (toxicity above zero), without drawing."""
    wanted = set(kinds) if kinds is not None else None
    rng = rng or random
    now = time.time() if now is None else now

    def drawn(f: AgentFault) -> bool:
        return f.toxicity >= 1.0 or (rng.random() < f.toxicity if draw else f.toxicity > 0)
    return [f for f in faults if f.layer == "l4" and (wanted is None or f.kind in wanted) and f.active(now)
            and f.matches(conn) and drawn(f)]


def partition_between(faults: Iterable[AgentFault], source_node: str, destination_node: str,
                      now: float | None = None) -> AgentFault | None:
    """An active partition that cuts connections from `source_node` to `destination_node`, if any.

    A node target cuts the node off from every other node (both ways); an edge `a->b` cuts a to b,
    and b to a too unless its direction is `upstream` (one way).
    """
    if source_node == destination_node:
        return None
    for f in faults:
        if f.kind != "partition" or not f.active(now):
            continue
        if f.target_type == "edge":
            a, b = f.ends
            forward = source_node in a.nodes and destination_node in b.nodes
            backward = f.direction != "upstream" and source_node in b.nodes and destination_node in a.nodes
            if forward or backward:
                return f
        elif source_node in f.ends[0].nodes or destination_node in f.ends[0].nodes:
            return f
    return None


def revoked_identity(faults: Iterable[AgentFault], identity: str | None, now: float | None = None) -> AgentFault | None:
    """An active `revoke` fault naming `identity` (params.identity), if any."""
    if identity is None:
        return None
    for f in faults:
        if f.kind == "revoke" and f.active(now) and f.params.get("identity") == identity:
            return f
    return None


# ---------------------------------------------------------------- L7: the proxies' request faults


@dataclass(frozen=True)
class L7Decision:
    """A fault decided for one request (the proxies turn it into `agents.l7.routing.Fault`)."""

    delay: float = 0.0
    abort: int | None = None
    fault_id: str = ""


def _check_l7(fault: AgentFault, where: str) -> None:
    p = fault.params
    if fault.kind == "delay":
        if _seconds(p.get("delay")) is None:
            raise FaultFormatError(f"{where}.params.delay: want a duration (2s, 500ms or seconds), got {p.get('delay')!r}")
    elif fault.kind == "abort":
        status = p.get("status")
        if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
            raise FaultFormatError(f"{where}.params.status: want an HTTP status 200-599, got {status!r}")
    else:
        raise FaultFormatError(f"{where}.kind: L7 faults are delay or abort, got {fault.kind!r}")
    pct = p.get("percentage", 100)
    if not isinstance(pct, (int, float)) or isinstance(pct, bool) or not 0 <= pct <= 100:
        raise FaultFormatError(f"{where}.params.percentage: want 0-100, got {pct!r}")
    header = p.get("header")
    if header is not None and (not isinstance(header, str) or not header.partition(":")[0].strip()):
        raise FaultFormatError(f"{where}.params.header: want NAME or NAME:VALUE, got {header!r}")


def _seconds(value: Any) -> float | None:
    """Seconds from 2, 2.5, "2s", "500ms"; None if not a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value >= 0 else None
    if isinstance(value, str):
        text = value.strip()
        for unit, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
            if text.endswith(unit):
                try:
                    number = float(text[: -len(unit)])
                except ValueError:
                    return None
                return number * scale if number >= 0 else None
        try:
            return float(text) if float(text) >= 0 else None
        except ValueError:
            return None
    return None


def _header_matches(spec: str | None, headers: Sequence[tuple[str, str]]) -> bool:
    """`NAME` (present) or `NAME:VALUE` (exact value) against the request headers; no spec matches all."""
    if not spec:
        return True
    name, sep, value = spec.partition(":")
    name = name.strip().lower()
    for n, v in headers:
        if n.lower() == name and (not sep or v.strip() == value.strip()):
            return True
    return False


def l7_decision(faults: Iterable[AgentFault], headers: Sequence[tuple[str, str]], service_key: str | None,
                source_workload: str | None, rng: random.Random | None = None,
                now: float | None = None) -> L7Decision | None:
    """The delay and/or abort of the active L7 faults that hit one request (one draw per fault)."""
    rng = rng or random
    now = time.time() if now is None else now
    conn = ConnFacts(source_workload=source_workload, service=service_key)
    delay, abort, ids = 0.0, None, []
    for f in faults:
        if f.layer != "l7" or not f.active(now) or not f.matches(conn):
            continue
        if not _header_matches(f.params.get("header"), headers):
            continue
        chance = float(f.params.get("percentage", 100)) / 100.0 * f.toxicity
        if chance < 1.0 and rng.random() >= chance:
            continue
        if f.kind == "delay":
            delay = max(delay, _seconds(f.params.get("delay")) or 0.0)
        elif f.kind == "abort" and abort is None:
            abort = int(f.params["status"])
        ids.append(f.id)
    if not ids:
        return None
    return L7Decision(delay, abort, ",".join(ids))


def l7_fault(faults: Iterable[AgentFault], request_info: Any, service_key: str | None,
             source_workload: str | None, rng: random.Random | None = None, now: float | None = None) -> Any:
    """`agents.l7.routing.Fault` for one request (`request_info`: a `RequestInfo`), or None.

    `service_key` is the destination service as `name.namespace`; `source_workload` the caller's
    workload name when known. Delay and abort may both apply (the delay first, as in Istio).
    """
    from agents.l7.routing import Fault  # the L7 engine's type; imported late so L4 agents need not load it

    decision = l7_decision(faults, tuple(getattr(request_info, "headers", ()) or ()), service_key, source_workload,
                           rng, now)
    if decision is None:
        return None
    return Fault(delay=decision.delay, abort=decision.abort)
