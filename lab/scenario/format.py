"""Scenario files: a workshop exercise as YAML, checked like a topology (errors name file, line and field).

    name: traffic-shifting                 # found by this, by the file name, or by its number prefix
    title: Request routing and traffic shifting
    topology: topologies/bookinfo-workshop.yaml   # relative to this file, or a shipped topology's name
    providers: [local, docker]             # where it can run (default: local)
    explain: |
      What the learner should take away; shown when the scenario starts.
    steps:
      - say: Everything goes to reviews v1 first.
      - apply: {files: [../istio/virtual-service-all-v1.yaml], namespace: bookinfo}
      - load: {target: productpage:9080/productpage, from: sleep, n: 50, count_body: 'reviews-v\\d'}
        expect:
          - body_matches reviews-v1 equals 100%

Each step is a mapping with one kind (say, apply, delete, mode, waypoint, fault, load, wait), an
optional `note` shown before it, and optional `expect` checks (grammar: `lab.scenario.checks`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.nodes import Node as YamlNode

from lab.errors import LabError
from lab.scenario.checks import Check, CheckSyntaxError, parse_check
from lab.yamlsource import Problem, YamlWalker, describe, is_scalar, join, line_of

SCENARIOS_DIR = Path(__file__).resolve().parent.parent.parent / "topologies" / "scenarios"
PROVIDERS = ("local", "docker", "ssh")
MODES = ("ambient", "sidecar", "none")
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?\Z")
MAX_WAIT_S = 600.0
STEP_KINDS = ("say", "apply", "delete", "mode", "waypoint", "fault", "load", "wait")

SCENARIO = {"name": True, "title": True, "explain": True, "topology": True, "providers": False, "steps": True}
APPLY = {"files": False, "yaml": False, "namespace": False}
DELETE = {"files": False, "yaml": False, "kind": False, "name": False, "namespace": False}
MODE = {"namespace": True, "mode": True}
WAYPOINT = {"namespace": True, "enabled": True, "service": False}
FAULT = {"add": False, "remove": False, "target": False, "params": False, "ttl": False, "toxicity": False,
         "direction": False, "name": False}
LOAD = {"target": True, "from": False, "n": False, "qps": False, "connections": False, "duration": False,
        "headers": False, "method": False, "count_body": False, "timeout": False}
WAIT = {"seconds": False, "until": False, "timeout": False}


class ScenarioError(LabError):
    """A scenario file is malformed; carries every problem found."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__(f"invalid scenario: {len(problems)} error(s)\n  " + "\n  ".join(str(p) for p in problems))


@dataclass(frozen=True)
class Step:
    kind: str
    line: int
    spec: dict[str, Any]  # the kind's fields, checked (see the schemas above)
    expect: tuple[Check, ...] = ()
    note: str | None = None

    @property
    def needs_traffic(self) -> bool:
        return any(c.needs_traffic for c in self.expect) or (
            self.kind == "wait" and self.spec.get("until") is not None and self.spec["until"].needs_traffic)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    explain: str
    topology: str  # a path (resolved against the scenario's folder) or a shipped topology's name
    providers: tuple[str, ...]
    steps: tuple[Step, ...]
    source: str = "<memory>"
    checks: int = field(default=0)  # how many checks the steps carry (wait-until counts as one)


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as e:
        raise ScenarioError([Problem(str(path), None, "", f"cannot read scenario file: {e.strerror or e}")]) from None
    return parse_scenario(text, str(path), base=path.parent)


def parse_scenario(text: str | bytes, source: str = "<memory>", base: Path | None = None) -> Scenario:
    """Validate scenario YAML; `base` is the folder relative paths (topology, applied files) start from."""
    walker = _Walker(source, base)
    root = walker.compose(text)
    scenario = walker.scenario(root) if root is not None else None
    if walker.problems or scenario is None:
        raise ScenarioError(sorted(walker.problems, key=lambda p: p.line or 0))
    return scenario


def list_scenarios(folder: Path = SCENARIOS_DIR) -> list[Path]:
    return sorted(folder.glob("*.yaml"))


def find_scenario(name: str, folder: Path = SCENARIOS_DIR) -> Path:
    """A scenario file by path, or a shipped one by name (`mtls`, or its number prefix `1`)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    shipped = list_scenarios(folder)
    for p in shipped:
        stem = p.stem
        if name in (stem, stem.partition("-")[2]) or (name.isdigit() and stem.split("-")[0].lstrip("0") == name):
            return p
    known = ", ".join(p.stem for p in shipped) or "none"
    raise LabError(f"no scenario '{name}' (shipped: {known}; `meshlab scenario list` describes them)")


def parse_duration(text: str) -> float | None:
    """`30s`, `500ms`, `2m` or a plain number of seconds; None if it is none of those."""
    m = DURATION.match(text.strip())
    if not m:
        return None
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[m.group(2)]


class _Walker(YamlWalker):
    document = "a scenario"
    empty_message = "the file is empty; expected a mapping with name, title, explain, topology and steps"

    def __init__(self, source: str, base: Path | None) -> None:
        super().__init__(source)
        self.base = base
        self.remembered: set[str] = set()
        self.fault_names: set[str] = set()
        self.checks = 0

    def scenario(self, root: YamlNode) -> Scenario | None:
        f = self.fields(root, "", SCENARIO)
        name = self.name(f.get("name"), "name", "scenario name")
        title, explain = self.string(f.get("title"), "title"), self.string(f.get("explain"), "explain")
        topology = self.string(f.get("topology"), "topology")
        if topology and self.base is not None and ("/" in topology or topology.endswith((".yaml", ".yml"))):
            resolved = (self.base / topology).resolve()
            if not resolved.is_file():
                self.report(f["topology"], "topology", f"no topology file {resolved}")
            topology = str(resolved)
        providers = tuple(p for i, node in enumerate(self._list(f.get("providers"), "providers", "provider"))
                          if (p := self.choice(node, f"providers[{i}]", PROVIDERS, "provider")))
        steps = [s for path, node in self.items(f, "steps", "", "step", required=True) or []
                 if (s := self.step(node, path)) is not None]
        if None in (name, title, explain, topology):
            return None
        return Scenario(str(name), str(title), str(explain).strip(), str(topology), providers or ("local",),
                        tuple(steps), self.source, self.checks)

    def _list(self, node: YamlNode | None, path: str, what: str) -> list[YamlNode]:
        if node is None:
            return []
        if isinstance(node, SequenceNode):
            return list(node.value)
        if isinstance(node, ScalarNode):
            return [node]  # one item written without a list
        self.report(node, path, f"expected a list of {what}s, got {describe(node)}")
        return []

    # --- steps ----------------------------------------------------------------------------------

    def step(self, node: YamlNode, path: str) -> Step | None:
        entries = self.pairs(node, path)
        if not entries:
            if isinstance(node, MappingNode):
                self.report(node, path, f"an empty step; expected one of: {', '.join(STEP_KINDS)}")
            return None
        kinds = [(k, key, value) for k, key, value in entries if k in STEP_KINDS]
        for k, key, _ in entries:
            if k not in STEP_KINDS and k not in ("expect", "note"):
                self.report(key, join(path, k), self.unknown(k, {n: False for n in (*STEP_KINDS, "expect", "note")}))
        if len(kinds) != 1:
            what = ", ".join(k for k, _, _ in kinds)
            self.report(node, path, f"a step has exactly one kind ({', '.join(STEP_KINDS)}); "
                                    f"{'found ' + what if what else 'found none'}")
            return None
        kind, _, value = kinds[0]
        extra = {k: v for k, _, v in entries}
        spec = getattr(self, f"step_{kind}")(value, join(path, kind))
        expect = self.expect(extra.get("expect"), join(path, "expect"))
        note = self.string(extra.get("note"), join(path, "note"))
        if spec is None:
            return None
        return Step(kind, line_of(node), spec, tuple(expect), note)

    def expect(self, node: YamlNode | None, path: str) -> list[Check]:
        checks = []
        for i, item in enumerate(self._list(node, path, "check")):
            check = self.check(item, f"{path}[{i}]")
            if check is not None:
                checks.append(check)
        return checks

    def check(self, node: YamlNode, path: str) -> Check | None:
        text = self.string(node, path)
        if text is None:
            return None
        try:
            check = parse_check(text)
        except CheckSyntaxError as e:
            self.report(node, path, f"'{text}': {e}")
            return None
        for ref in [v.ref for v in check.values if v.ref]:
            if ref not in self.remembered:
                self.report(node, path, f"'{text}': ${ref} is not remembered by an earlier check "
                                        f"(end one with 'as {ref}')")
        if check.remember:
            self.remembered.add(check.remember)
        self.checks += 1
        return check

    def step_say(self, node: YamlNode, path: str) -> dict[str, Any] | None:
        text = self.string(node, path)
        return None if text is None else {"text": text.strip()}

    def step_apply(self, node: YamlNode, path: str, schema: dict[str, bool] = APPLY) -> dict[str, Any] | None:
        if is_scalar(node, "str"):  # `apply: file.yaml`
            node_files: list[tuple[str, YamlNode]] = [(path, node)]
            f: dict[str, YamlNode] = {}
        else:
            f = self.fields(node, path, schema)
            listed = self._list(f.get("files"), join(path, "files"), "file")
            node_files = [(f"{path}.files[{i}]", n) for i, n in enumerate(listed)]
        files = [p for fp, n in node_files if (p := self.file(n, fp)) is not None]
        spec: dict[str, Any] = {"files": files, "yaml": self.string(f.get("yaml"), join(path, "yaml")),
                                "namespace": self.name(f.get("namespace"), join(path, "namespace"), "namespace")}
        if schema is DELETE:
            spec.update(kind=self.string(f.get("kind"), join(path, "kind")),
                        name=self.string(f.get("name"), join(path, "name")))
            if not (node_files or f.get("yaml") or (f.get("kind") and f.get("name"))):
                self.report(node, path, "say what to delete: files, yaml, or kind and name")
        elif not (node_files or f.get("yaml")):
            self.report(node, path, "say what to apply: files (a list of paths) or yaml (inline documents)")
        return spec

    def step_delete(self, node: YamlNode, path: str) -> dict[str, Any] | None:
        return self.step_apply(node, path, DELETE)

    def file(self, node: YamlNode, path: str) -> str | None:
        text = self.string(node, path)
        if text is None or self.base is None:
            return text
        resolved = (self.base / text).resolve()
        if not resolved.is_file():
            self.report(node, path, f"no such file {resolved}")
            return None
        return str(resolved)

    def step_mode(self, node: YamlNode, path: str) -> dict[str, Any] | None:
        f = self.fields(node, path, MODE)
        return {"namespace": self.name(f.get("namespace"), join(path, "namespace"), "namespace"),
                "mode": self.choice(f.get("mode"), join(path, "mode"), MODES, "mode")}

    def step_waypoint(self, node: YamlNode, path: str) -> dict[str, Any] | None:
        f = self.fields(node, path, WAYPOINT)
        return {"namespace": self.name(f.get("namespace"), join(path, "namespace"), "namespace"),
                "enabled": self.boolean(f.get("enabled"), join(path, "enabled")),
                "service": self.name(f.get("service"), join(path, "service"), "service")}

    def step_fault(self, node: YamlNode, path: str) -> dict[str, Any] | None:
        f = self.fields(node, path, FAULT)
        if ("add" in f) == ("remove" in f):
            self.report(node, path, "a fault step either adds (add: KIND) or removes (remove: NAME, ID or all)")
            return None
        if "remove" in f:
            extra = [k for k in f if k != "remove"]
            if extra:
                self.report(f[extra[0]], join(path, extra[0]), f"'{extra[0]}' belongs to adding a fault, not removing")
            target = self.string(f["remove"], join(path, "remove"))
            if target and target != "all" and target not in self.fault_names and not re.fullmatch(r"f\d+", target):
                known = ", ".join(sorted(self.fault_names)) or "none named yet"
                self.report(f["remove"], join(path, "remove"), f"no earlier fault step is named '{target}' "
                                                               f"(named: {known}; or remove: all)")
            return {"remove": target}
        params = self.plain(f["params"], join(path, "params")) if "params" in f else {}
        if not isinstance(params, dict):
            self.report(f["params"], join(path, "params"),
                        f"expected a mapping of parameters, got {describe(f['params'])}")
        name = self.name(f.get("name"), join(path, "name"), "fault name")
        if name:
            self.fault_names.add(name)
        return {"add": self.string(f["add"], join(path, "add")),
                "target": self.string(f.get("target"), join(path, "target")),
                "params": {k: str(v) for k, v in (params or {}).items()} if isinstance(params, dict) else {},
                "ttl": self.seconds(f.get("ttl"), join(path, "ttl")),
                "toxicity": self.number(f.get("toxicity"), join(path, "toxicity"), 0, 1),
                "direction": self.choice(f.get("direction"), join(path, "direction"),
                                         ("upstream", "downstream", "both"), "direction"),
                "name": name}

    def step_load(self, node: YamlNode, path: str) -> dict[str, Any] | None:
        f = self.fields(node, path, LOAD)
        spec = {"target": self.string(f.get("target"), join(path, "target")),
                "from": self.string(f.get("from"), join(path, "from")),
                "n": self.number(f.get("n"), join(path, "n"), 1, 100_000, integer=True),
                "qps": self.number(f.get("qps"), join(path, "qps"), 0, 10_000),
                "connections": self.number(f.get("connections"), join(path, "connections"), 1, 64, integer=True),
                "duration": self.seconds(f.get("duration"), join(path, "duration")),
                "headers": self.text_list(f.get("headers"), join(path, "headers")),
                "method": self.string(f.get("method"), join(path, "method")),
                "count_body": self.string(f.get("count_body"), join(path, "count_body")),
                "timeout": self.seconds(f.get("timeout"), join(path, "timeout"))}
        for i, h in enumerate(spec["headers"]):
            if ":" not in h:
                self.report(f["headers"], f"{join(path, 'headers')}[{i}]", f"header '{h}': want NAME:VALUE")
        if spec["n"] is None and spec["duration"] is None and "n" not in f and "duration" not in f:
            self.report(node, path, "a load step is bounded: give n (requests), duration, or both")
        if spec["count_body"]:
            try:
                re.compile(spec["count_body"])
            except re.error as e:
                self.report(f["count_body"], join(path, "count_body"), f"not a regular expression: {e}")
        return spec

    def step_wait(self, node: YamlNode, path: str) -> dict[str, Any] | None:
        if isinstance(node, ScalarNode):  # `wait: 5` or `wait: 2s`
            seconds = self.seconds(node, path)
            return None if seconds is None else {"seconds": seconds, "until": None, "timeout": None}
        f = self.fields(node, path, WAIT)
        if ("seconds" in f) == ("until" in f):
            self.report(node, path, "wait either a time (seconds: 5) or for a check (until: CHECK, timeout: 30)")
            return None
        if "seconds" in f:
            return {"seconds": self.seconds(f["seconds"], join(path, "seconds")), "until": None, "timeout": None}
        until = self.check(f["until"], join(path, "until"))
        timeout = self.seconds(f.get("timeout"), join(path, "timeout")) if "timeout" in f else 30.0
        return {"seconds": None, "until": until, "timeout": timeout} if until else None

    # --- scalars ----------------------------------------------------------------------------------

    def number(self, node: YamlNode | None, path: str, low: float, high: float,
               integer: bool = False) -> float | None:
        if node is None:
            return None
        ok = is_scalar(node, "int") or (not integer and is_scalar(node, "float"))
        value = float(self.constructor.construct_object(node)) if ok else None
        if value is None:
            self.report(node, path, f"expected {'an integer' if integer else 'a number'}, got {describe(node)}")
        elif not low <= value <= high:
            self.report(node, path, f"{value:g} is out of range {low:g}-{high:g}")
            return None
        return int(value) if integer and value is not None else value

    def seconds(self, node: YamlNode | None, path: str) -> float | None:
        """A duration: `30s`, `500ms`, `2m`, or a number of seconds; at most MAX_WAIT_S."""
        if node is None:
            return None
        text = node.value if isinstance(node, ScalarNode) and (
            is_scalar(node, "str") or is_scalar(node, "int") or is_scalar(node, "float")) else None
        value = parse_duration(text) if text is not None else None
        if value is None:
            self.report(node, path, f"expected a duration (30s, 500ms, 2m or seconds), got {describe(node)}")
        elif value > MAX_WAIT_S:
            self.report(node, path, f"{text} is longer than a workshop step may take ({MAX_WAIT_S:g}s)")
            return None
        return value
