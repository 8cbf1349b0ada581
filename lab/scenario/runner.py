"""Run a scenario against a lab: bring it up (or reuse it), do each step through the lab API, check, tear down.

Steps act the way the CLI does: config, modes, waypoints and faults through `LabClient`, load runs
with `orchestrator.exec_load` (the load generator on a node, as `meshlab load`). A step whose
checks look at traffic is bracketed by two scrapes of every agent's metrics (see `lab.scenario.measure`).
A step that fails (the lab refused it) ends the run; a failed check does not, so the learner sees
every measurement. The lab is taken down at the end if the run brought it up, unless `keep`; a
lab that was already up is left up, with the faults and config the scenario added removed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from lab import orchestrator
from lab.client import LabClient
from lab.controlplane import reach
from lab.controlplane.proxies import agent_addresses
from lab.controlplane.telemetry import TrafficView
from lab.errors import LabError
from lab.scenario.checks import Outcome, evaluate
from lab.scenario.format import Scenario, Step
from lab.scenario.measure import Facts, interval, measure
from lab.state import LabState
from lab.topology.loader import load_topology
from lab.topology.model import Topology

TOPOLOGIES_DIR = Path(__file__).resolve().parent.parent.parent / "topologies"
Printer = Callable[[str], None]


def scenario_topology(scenario: Scenario) -> Topology:
    """The topology a scenario names: a file, or a shipped topology by name."""
    path = Path(scenario.topology)
    if not path.is_file():
        path = TOPOLOGIES_DIR / f"{scenario.topology}.yaml"
        if not path.is_file():
            raise LabError(f"scenario {scenario.name}: no topology '{scenario.topology}'")
    return load_topology(path)


def describe(step: Step) -> str:
    """One line saying what a step does."""
    s = step.spec
    if step.kind == "say":
        return "say"
    if step.kind in ("apply", "delete"):
        what = [Path(f).name for f in s["files"]] + (["inline YAML"] if s.get("yaml") else [])
        if step.kind == "delete" and s.get("kind"):
            what.append(f"{s['kind']}/{s['name']}")
        return f"{step.kind} {', '.join(what)}" + (f" (namespace {s['namespace']})" if s.get("namespace") else "")
    if step.kind == "mode":
        return f"mode {s['namespace']} -> {s['mode']}"
    if step.kind == "waypoint":
        what = f"{s['service']}-waypoint in {s['namespace']}" if s.get("service") else f"{s['namespace']}'s waypoint"
        return f"waypoint: {'enable' if s['enabled'] else 'disable'} {what}"
    if step.kind == "fault":
        if s.get("remove"):
            return f"fault remove {s['remove']}"
        params = " ".join(f"{k}={v}" for k, v in s["params"].items())
        return f"fault add {s['add']} on {s['target'] or '-'} {params}".rstrip()
    if step.kind == "load":
        bound = " ".join(x for x in (f"n={s['n']}" if s.get("n") else "",
                                     f"for {s['duration']:g}s" if s.get("duration") else "",
                                     f"at {s['qps']:g} qps" if s.get("qps") else "") if x)
        headers = "".join(f" -H {h}" for h in s["headers"])
        return (f"load {s.get('method') or 'GET'} {s['target']} from {s.get('from') or 'a client'} "
                f"{bound}{headers}").rstrip()
    if s.get("until") is not None:
        return f"wait until {s['until'].text} (at most {s['timeout']:g}s)"
    return f"wait {s['seconds']:g}s"


def load_args(spec: dict[str, Any]) -> list[str]:
    """The load generator's options for a load step (as `meshlab load` passes them)."""
    args = ["--qps", str(spec.get("qps") or 0), "--connections", str(spec.get("connections") or 4),
            "--duration", f"{spec['duration'] or 120}s", "--timeout", f"{spec.get('timeout') or 5}s"]
    if spec.get("n"):
        args += ["-n", str(spec["n"])]
    for h in spec["headers"]:
        args += ["--header", h]
    if spec.get("count_body"):
        args += ["--count-body", spec["count_body"]]
    if spec.get("method"):
        args += ["--method", spec["method"]]
    return args


class ScenarioRun:
    """One run of a scenario on a running lab."""

    def __init__(self, scenario: Scenario, lab: str, client: LabClient, out: Printer) -> None:
        self.scenario = scenario
        self.lab = lab
        self.client = client
        self.out = out
        self.remembered: dict[str, float | str] = {}
        self.fault_ids: dict[str, str] = {}  # step name (or id) -> fault id, for removal and clean-up
        self.applied: list[tuple[str, str, str | None]] = []  # (source, text, namespace) that apply steps added
        self.last_load: dict[str, Any] | None = None
        self.steps: list[dict[str, Any]] = []
        self.view = TrafficView()  # our own, so that no other client's scrape cuts a step's interval

    def traffic(self) -> dict[str, Any]:
        """Per-edge totals now, from every agent that reports metrics (see `lab.scenario.measure`)."""
        state = LabState(self.lab).load()
        return asyncio.run(self.view.snapshot(agent_addresses(state), reach.routes(state)))

    def run(self) -> bool:
        """Every step; False if one failed or a check did not pass."""
        total = len(self.scenario.steps)
        for i, step in enumerate(self.scenario.steps, 1):
            record: dict[str, Any] = {"step": i, "kind": step.kind, "line": step.line, "does": describe(step)}
            self.steps.append(record)
            if step.note:
                self.out(f"\n  {step.note}")
            self.out(f"[{i}/{total}] {record['does']}")
            started = time.monotonic()
            try:
                record["checks"] = [o.to_json() for o in self.step(step, record)]
            except LabError as e:
                record.update(error=str(e), seconds=round(time.monotonic() - started, 2))
                self.out(f"   ERROR {e}")
                return False
            record["seconds"] = round(time.monotonic() - started, 2)
        return all(c["passed"] for r in self.steps for c in r.get("checks", []))

    def step(self, step: Step, record: dict[str, Any]) -> list[Outcome]:
        before = self.traffic() if step.needs_traffic else None
        if step.kind == "wait" and step.spec.get("until") is not None:
            return [self.wait_until(step, before)]
        answer = getattr(self, f"do_{step.kind}")(step.spec)
        if answer is not None:
            record["answer"] = answer
        after = self.traffic() if step.needs_traffic else None
        return [self.check(c, self.facts(answer, before, after)) for c in step.expect]

    def facts(self, answer: dict[str, Any] | None, before: dict[str, Any] | None,
              after: dict[str, Any] | None) -> Facts:
        cache: dict[str, Any] = {}

        def once(key: str, fetch: Callable[[], Any]) -> Callable[[], Any]:
            return lambda: cache[key] if key in cache else cache.setdefault(key, fetch())

        return Facts(load=self.last_load, result=answer,
                     edges=interval(before, after) if after is not None else None,
                     workloads=LabState(self.lab).load().get("workloads", {}),
                     usage=once("usage", lambda: self.client.usage()["processes"]),
                     certs=once("certs", lambda: self.client.certs()["certificates"]))

    def check(self, check: Any, facts: Facts, quiet: bool = False) -> Outcome:
        outcome = evaluate(check, measure(check.quantity, facts), self.remembered)
        if check.remember and outcome.value is not None:
            self.remembered[check.remember] = outcome.value
        if not quiet:
            self.out(f"   {'PASS' if outcome.passed else 'FAIL'}  {check.text}  (measured: {outcome.measured})")
        return outcome

    def wait_until(self, step: Step, before: dict[str, Any] | None) -> Outcome:
        check, deadline = step.spec["until"], time.monotonic() + step.spec["timeout"]
        while True:
            after = self.traffic() if check.needs_traffic else None
            outcome = self.check(check, self.facts(None, before, after), quiet=True)
            if outcome.passed or time.monotonic() >= deadline:
                self.out(f"   {'PASS' if outcome.passed else 'FAIL'}  {check.text}  (measured: {outcome.measured})")
                return outcome
            time.sleep(1.0)

    # --- the step kinds -------------------------------------------------------------------------

    def do_say(self, spec: dict[str, Any]) -> None:
        for line in spec["text"].splitlines():
            self.out(f"   | {line}" if line.strip() else "   |")

    def _documents(self, spec: dict[str, Any]) -> list[tuple[str, str]]:
        docs = [(f, Path(f).read_text()) for f in spec["files"]]
        if spec.get("yaml"):
            docs.append((f"{Path(self.scenario.source).name} (inline)", spec["yaml"]))
        return docs

    def do_apply(self, spec: dict[str, Any]) -> dict[str, Any]:
        docs = self._documents(spec)
        answer = self.client.apply(docs, spec.get("namespace"))
        self.applied += [(s, t, spec.get("namespace")) for s, t in docs]
        self.out("   " + ", ".join(f"{kind.lower()}/{ref} {outcome}" for kind, ref, outcome in answer["results"]))
        return answer

    def do_delete(self, spec: dict[str, Any]) -> dict[str, Any]:
        if spec.get("kind"):
            answer = self.client.delete_config(kind=spec["kind"], name=spec["name"], namespace=spec.get("namespace"),
                                               missingOk=True)
        else:
            answer = self.client.delete_config(
                documents=[{"source": s, "text": _with_namespace(t, spec.get("namespace"))}
                           for s, t in self._documents(spec)], missingOk=True)
        self.out("   " + ", ".join(f"{kind.lower()}/{ref} {outcome}" for kind, ref, outcome in answer["results"]))
        return answer

    def do_mode(self, spec: dict[str, Any]) -> dict[str, Any]:
        answer = self.client.set_mode(spec["namespace"], spec["mode"])
        restarted = answer.get("restarted") or []
        self.out(f"   {answer.get('previous', spec['mode'])} -> {spec['mode']} in {answer.get('seconds', 0):.1f}s"
                 + (f", restarted {len(restarted)} workload(s)"
                    + (" with sidecars" if spec["mode"] == "sidecar" else " without sidecars") if restarted else "")
                 + (f", {answer['failedRequests']} request(s) failed meanwhile"
                    if answer.get("failedRequests") else ""))
        return answer

    def do_waypoint(self, spec: dict[str, Any]) -> dict[str, Any]:
        answer = self.client.set_waypoint(spec["namespace"], spec["enabled"], spec.get("service"))
        w = answer.get("waypoint") or {}
        if spec["enabled"] and w:
            self.out(f"   {w.get('name', 'waypoint')} on {w.get('node')} at {w.get('address')}:15008 "
                     f"as {w.get('identity')}")
        return answer

    def do_fault(self, spec: dict[str, Any]) -> dict[str, Any]:
        if spec.get("remove"):
            which = spec["remove"]
            if which == "all":
                answer = self.client.remove_fault(everything=True)
            else:
                answer = self.client.remove_fault(self.fault_ids.get(which, which))
            for name in [n for n, fid in self.fault_ids.items() if fid in answer.get("removed", [])]:
                del self.fault_ids[name]
            self.out(f"   removed {', '.join(answer.get('removed') or []) or 'nothing'}")
            return answer
        answer = self.client.add_fault(spec["add"], spec.get("target"), spec["params"], spec.get("ttl"),
                                       spec.get("toxicity"), spec.get("direction"))
        if not answer.get("oneShot"):
            self.fault_ids[spec.get("name") or answer["id"]] = answer["id"]
        ttl = f", removed by itself in {spec['ttl']:g}s" if spec.get("ttl") else ""
        self.out(f"   fault {answer.get('id', '')} on {answer.get('targetText', spec.get('target'))}{ttl}"
                 + (f" ({answer['note']})" if answer.get("note") else ""))
        return answer

    def do_load(self, spec: dict[str, Any]) -> dict[str, Any]:
        result = asyncio.run(orchestrator.exec_load(self.lab, spec["target"], spec.get("from"), load_args(spec)))
        self.last_load = result
        lat = result.get("latency_ms") or {}
        codes = ", ".join(f"{c}: {n}" for c, n in (result.get("codes") or {}).items() if c != "-1") or "none"
        failed = ", ".join(f"{reason}: {n}" for reason, n in (result.get("errors") or {}).items())
        self.out(f"   {result.get('count', 0)} requests in {result.get('duration_s', 0):g}s, codes {codes}"
                 + (f", no response ({failed})" if failed else "")
                 + f"; p50 {lat.get('p50', 0):.0f} ms, p99 {lat.get('p99', 0):.0f} ms")
        if result.get("body_matches"):
            self.out("   bodies: " + ", ".join(f"{k}: {v}" for k, v in result["body_matches"].items()))
        return result

    def do_wait(self, spec: dict[str, Any]) -> None:
        time.sleep(spec["seconds"])

    # --- clean-up of a lab that stays up ---------------------------------------------------------

    def tidy(self) -> list[str]:
        """Remove the faults and the config this run added (for a lab that was up before it)."""
        errors = []
        for fid in list(dict.fromkeys(self.fault_ids.values())):
            try:
                self.client.remove_fault(fid)
            except LabError as e:
                if getattr(e, "status", 0) != 404:  # gone already (a TTL)
                    errors.append(str(e))
        if self.applied:
            try:
                self.client.delete_config(documents=[{"source": s, "text": _with_namespace(t, ns)}
                                                     for s, t, ns in self.applied], missingOk=True)
            except LabError as e:
                errors.append(str(e))
        return errors


def _with_namespace(text: str, namespace: str | None) -> str:
    """Documents that name no namespace, placed in `namespace` (delete has no -n of its own)."""
    if not namespace:
        return text
    docs = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    for d in docs:
        d.setdefault("metadata", {}).setdefault("namespace", namespace)
    return yaml.safe_dump_all(docs, sort_keys=False)


def run_scenario(scenario: Scenario, *, provider: str | None = None, keep: bool = False, lab: str | None = None,
                 out: Printer = print, up_timeout: float = orchestrator.READY_TIMEOUT) -> dict[str, Any]:
    """Run `scenario` (bringing its lab up if needed) and return the report; `report["passed"]` says how it went."""
    topology = scenario_topology(scenario)
    chosen = provider or topology.provider
    if chosen not in scenario.providers:
        raise LabError(f"scenario {scenario.name} runs on {', '.join(scenario.providers)}, not on {chosen}")
    name = lab or topology.name
    topology = replace(topology, name=name)
    report: dict[str, Any] = {"scenario": scenario.name, "title": scenario.title, "lab": name, "provider": chosen,
                              "steps": [], "passed": False}
    started = time.monotonic()
    out(f"== {scenario.title} ({scenario.name}) ==")
    for line in scenario.explain.splitlines():
        out(f"  {line}")
    out("")
    reused = _running(name)
    if reused:
        running = {n["provider"] for n in LabState(name).load()["nodes"].values()}
        if provider and running != {provider}:
            raise LabError(f"lab {name} is up on {', '.join(sorted(running))}, not {provider}: take it down first "
                           f"(meshlab down {name}) or run without --provider")
        out(f"lab {name}: already up, reusing it")
    else:
        try:
            doc = asyncio.run(orchestrator.up(topology, provider=provider, timeout=up_timeout))
        except BaseException:
            if not keep:  # leave nothing half made behind (--keep: leave it to look at)
                try:
                    asyncio.run(orchestrator.down(name))
                except LabError:
                    pass  # the error that matters is up's
            raise
        out(f"lab {name}: up on {chosen} in {doc.get('upSeconds', 0):.1f}s")
    run = ScenarioRun(scenario, name, LabClient(name), out)
    try:
        report["passed"] = run.run()
    finally:
        report["steps"] = run.steps
        if keep:
            out(f"\nlab {name} kept (meshlab down {name} removes it)")
        elif reused:
            errors = run.tidy()
            out(f"\nlab {name} left up as it was found" + (f"; clean-up errors: {'; '.join(errors)}" if errors else
                                                         ", without this scenario's faults and config"))
        else:
            down = asyncio.run(orchestrator.down(name))
            out(f"\nlab {name} down" + (f" (errors: {'; '.join(down['errors'])})" if down.get("errors") else ""))
    checks = [c for r in run.steps for c in r.get("checks", [])]
    failed = sum(1 for c in checks if not c["passed"])
    errored = next((r for r in run.steps if r.get("error")), None)
    report.update(checks=len(checks), failed=failed, seconds=round(time.monotonic() - started, 1))
    verdict = ("PASSED" if report["passed"] else
               f"FAILED at step {errored['step']}" if errored else f"FAILED ({failed} check(s))")
    out(f"scenario {scenario.name}: {verdict}: {len(checks) - failed} of {len(checks)} checks passed "
        f"in {report['seconds']:.0f}s")
    return report


def _running(name: str) -> bool:
    state = LabState(name)
    if not state.exists():
        return False
    try:
        LabClient(name, timeout=5).status()
    except LabError:
        return False
    return state.load().get("status") == "running"
