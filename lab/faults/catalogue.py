"""The kinds of fault the lab knows: what each targets, its parameters, and who enforces it.

Pure data plus the parameter checks; `meshlab fault add --help` prints it.

* `l4`  toxics (Toxiproxy's catalogue): the ztunnel in front of the destination applies them
        (the source's ztunnel when the destination is outside the mesh)
* `l7`  request faults: the waypoint or sidecar (`agents.common.faults.l7_fault`)
* `node`, `process`: the provider (partition on the local provider: the ztunnels refuse HBONE)
* `security`: the CA and the agents that hold the certificates (ztunnels, sidecars, waypoints)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lab.errors import LabError


class FaultError(LabError):
    """A fault that cannot be added: unknown kind, bad parameter, bad target. Names the field."""

    exit_code = 2


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # ms, us, int, percent, status, duration, header, bool
    help: str
    default: Any = None
    required: bool = False


@dataclass(frozen=True)
class Kind:
    name: str
    layer: str  # l4, l7, node, process, security
    targets: tuple[str, ...]  # service, workload, node, edge (edge: between workloads, nodes or services)
    help: str
    params: tuple[Param, ...] = ()
    direction: str = "downstream"  # the default
    one_shot: bool = False  # done once when added (a kill): not kept as a live fault
    agent: bool = True  # goes into agents' snapshots

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


_TRAFFIC = ("service", "workload", "node", "edge")
_L7 = ("service", "workload", "edge")
_PCT = Param("percentage", "percent", "share of requests hit, 0-100", 100)
_HEADER = Param("header", "header", "only requests with this header: NAME or NAME:VALUE")

KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("latency", "l4", _TRAFFIC, "delay every chunk of data",
         (Param("latency", "ms", "added delay in ms", required=True), Param("jitter", "ms", "+- random ms", 0))),
    Kind("bandwidth", "l4", _TRAFFIC, "limit throughput",
         (Param("rate", "int", "KB/s (1 KB = 1000 bytes)", required=True),)),
    Kind("reset_peer", "l4", _TRAFFIC, "reset connections (RST) after a time",
         (Param("timeout", "ms", "ms after the connection opened (0: at once)", 0),)),
    Kind("timeout", "l4", _TRAFFIC, "hold connections: no data passes; close after a time",
         (Param("timeout", "ms", "ms until the connection is closed (0: held until the fault is removed)", 0),)),
    Kind("slicer", "l4", _TRAFFIC, "split data into small chunks with delays",
         (Param("average_size", "int", "bytes per chunk", 64), Param("size_variation", "int", "+- bytes", 0),
          Param("delay", "us", "microseconds between chunks", 0))),
    Kind("limit_data", "l4", _TRAFFIC, "close connections after some bytes",
         (Param("bytes", "int", "bytes passed before the close", required=True),)),
    Kind("delay", "l7", _L7, "delay HTTP requests (waypoint/sidecar)",
         (Param("delay", "duration", "how long: 2s, 500ms", required=True), _PCT, _HEADER)),
    Kind("abort", "l7", _L7, "answer HTTP requests with an error status (waypoint/sidecar)",
         (Param("status", "status", "HTTP status, e.g. 503", required=True), _PCT, _HEADER)),
    Kind("partition", "node", ("node", "edge"), "cut a node off (or two nodes apart; --direction upstream: "
         "one way, source to destination only)", direction="both"),
    Kind("pause_node", "node", ("node",), "freeze every process of a node (SIGSTOP) until removed", agent=False),
    Kind("stop_node", "node", ("node",), "stop every process of a node until removed (connections to it are "
         "refused); removal starts it again with what ran (local, docker, ssh)", agent=False),
    Kind("kill_agent", "process", ("node",), "SIGKILL the node's ztunnel once (its supervisor restarts it)",
         one_shot=True, agent=False),
    Kind("pause_agent", "process", ("node",), "SIGSTOP the node's ztunnel until removed", agent=False),
    Kind("crash_workload", "process", ("workload",), "SIGKILL a workload once (its supervisor restarts it)",
         one_shot=True, agent=False),
    Kind("expire_cert", "security", ("workload",), "give a workload's identity an expired certificate until "
         "removed: new connections to and from it fail; removal renews it"),
    Kind("revoke", "security", ("workload",), "revoke a workload's identity: the CA refuses it, its ztunnel "
         "drops its certificate and peers refuse it, until removed"),
    Kind("foreign_ca", "security", ("workload",), "give a workload a certificate from a throwaway CA the lab "
         "does not trust, until removed: peers refuse its connections and it refuses theirs"),
    Kind("rotate_root", "security", (), "rotate the lab's root CA and re-issue every certificate under the new "
         "one (no target)", (Param("overlap", "bool", "trust old and new root while leaves are re-issued "
                                   "(false: swap at once; connections fail until every agent renewed)", True),),
         one_shot=True, agent=False),
)}

LAYER_OF_AGENT = {"l4": "l4", "l7": "l7", "node": "l4", "security": "l4"}  # how agents see each kind


def parse_param(kind: Kind, name: str, value: Any) -> Any:
    """A parameter value from text (the CLI) or JSON, checked; raises FaultError naming it."""
    spec = kind.param(name)
    if spec is None:
        known = ", ".join(p.name for p in kind.params) or "none"
        raise FaultError(f"param {name!r}: {kind.name} has no such parameter (parameters: {known})")
    where = f"param {name}"
    text = str(value).strip()
    try:
        if spec.type in ("ms", "us"):
            number = _duration(text, "ms" if spec.type == "ms" else "us")
            if number < 0:
                raise ValueError
            return number
        if spec.type == "int":
            number = int(text)
            if number < 0:
                raise ValueError
            return number
        if spec.type == "percent":
            number = float(text.rstrip("%"))
            if not 0 <= number <= 100:
                raise ValueError
            return number
        if spec.type == "status":
            number = int(text)
            if not 200 <= number <= 599:
                raise ValueError
            return number
        if spec.type == "duration":
            seconds = _duration(text, "s")
            if seconds < 0:
                raise ValueError
            return seconds
        if spec.type == "bool":
            if text.lower() in ("true", "yes", "on", "1"):
                return True
            if text.lower() in ("false", "no", "off", "0"):
                return False
            raise ValueError
        if spec.type == "header":
            if not text.partition(":")[0].strip():
                raise ValueError
            return text
    except ValueError:
        pass
    want = {"ms": "milliseconds (200, 200ms or 0.2s)", "us": "microseconds (500, 500us or 2ms)",
            "int": "a whole number >= 0", "percent": "a percentage 0-100", "status": "an HTTP status 200-599",
            "duration": "a duration (2s, 500ms)", "header": "NAME or NAME:VALUE", "bool": "true or false"}[spec.type]
    raise FaultError(f"{where}: want {want}, got {value!r}")


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(text: str, unit: str) -> float:
    """`text` ("200", "200ms", "0.2s") in `unit`; a bare number is already in `unit`."""
    for suffix in ("us", "ms", "s", "m", "h"):
        if text.endswith(suffix) and suffix != text:
            value = float(text[: -len(suffix)]) * _UNITS[suffix] / _UNITS[unit]
            return int(value) if unit in ("ms", "us") and value == int(value) else value
    value = float(text)
    return int(value) if value == int(value) else value


def help_text() -> str:
    """The kinds and their parameters, for `meshlab fault add --help`."""
    lines = ["kinds (KIND TARGET --param NAME=VALUE ...):"]
    for k in KINDS.values():
        lines.append(f"  {k.name:<15} [{k.layer}] {k.help}; targets: {', '.join(k.targets) or 'none'}")
        for p in k.params:
            default = " (required)" if p.required else f" (default {p.default})" if p.default is not None else ""
            lines.append(f"      {p.name}: {p.help}{default}")
    lines += ["targets: a service (reviews or reviews.bookinfo), a workload (reviews-v1), a node (node-1),",
              "  prefixed to be explicit (service/reviews, workload/x, node/node-1), or an edge SRC->DST",
              "  between two of them (reviews-v2->ratings, node-1->node-2)"]
    return "\n".join(lines)


@dataclass
class Validated:
    kind: Kind
    params: dict[str, Any] = field(default_factory=dict)


def check_params(kind_name: str, given: dict[str, Any]) -> Validated:
    """The kind and its full parameter set (defaults filled in); raises FaultError."""
    kind = KINDS.get(kind_name)
    if kind is None:
        raise FaultError(f"kind: unknown fault kind {kind_name!r} (kinds: {', '.join(KINDS)})")
    params = {name: parse_param(kind, name, value) for name, value in given.items()}
    for p in kind.params:
        if p.name not in params:
            if p.required:
                raise FaultError(f"param {p.name}: {kind.name} needs it (--param {p.name}=...: {p.help})")
            if p.default is not None:
                params[p.name] = p.default
    return Validated(kind, params)


_UNIT_OF = {"ms": "ms", "us": "us", "duration": "s", "percent": "%"}  # the unit a parsed value is in


def kinds_json() -> list[dict[str, Any]]:
    """Every kind with its parameters, as `GET /v1/faults/kinds` answers it (the TUI's fault form is made from it)."""
    return [{"name": k.name, "layer": k.layer, "targets": list(k.targets), "help": k.help, "direction": k.direction,
             "oneShot": k.one_shot, "agent": k.agent,
             "params": [{"name": p.name, "type": p.type, "unit": _UNIT_OF.get(p.type), "help": p.help,
                         "default": p.default, "required": p.required} for p in k.params]}
            for k in KINDS.values()]
