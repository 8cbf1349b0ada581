"""Adding and removing any fault of the catalogue never drops traffic the fault does not target.

One bounded load run (two flows: keep-alive connections, and a new connection per request) goes
client-b (node-2) -> `other` (other-v1 on node-1), ztunnel to ztunnel, while every kind of
`lab.faults.catalogue.KINDS` is added and removed in turn, aimed off that path: the service or
workload `echo` (echo-v1 on node-3, behind a waypoint for `echo` only, which runs on node-3 too, so
L7 kinds have a proxy to act in), the workload plain-v1 (service `plain`, on node-3, reached ztunnel
to ztunnel), or node-3.
Each fault is also seen to act on its target (one probe from client-b while it is on), so that
"nothing dropped" cannot come from faults that did nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from lab.faults.catalogue import KINDS
from tests.lab.faultdriver import LabDriver
from tests.support import meshlab, running_lab

pytestmark = pytest.mark.slow
LAB = "untargeted"
TOPOLOGY = f"""
name: {LAB}
nodes:
  - name: node-1
  - name: node-2
  - name: node-3
namespaces:
  - name: flt
    mode: ambient
services:
  - name: other
    namespace: flt
    ports: [{{port: 8080}}]
    workloads:
      - {{name: other-v1, node: node-1, serviceAccount: other, run: {{demo: echo}}}}
  - name: echo
    namespace: flt
    ports: [{{port: 8080}}]
    workloads:
      - {{name: echo-v1, node: node-3, serviceAccount: echo, run: {{demo: echo}}}}
  - name: plain
    namespace: flt
    ports: [{{port: 8080}}]
    workloads:
      - {{name: plain-v1, node: node-3, serviceAccount: plain, run: {{demo: echo}}}}
workloads:
  - {{name: client-b, namespace: flt, node: node-2, serviceAccount: client, run: {{demo: sleep}}}}
"""
SOURCE = "client-b"
MEASURED = "other"
# What the measured traffic touches; no fault may aim at any of it.
ON_PATH = {"client-b", "other", "other-v1", "node-1", "node-2"}
QPS_PER_FLOW = 20
LOAD_BOUND = ("-d", "600s", "-n", str(600 * QPS_PER_FLOW))  # far beyond the sequence: stop() ends it


@dataclass(frozen=True)
class Probe:
    """One request from client-b to `service` while the fault is on, and what it must see."""

    status: int | None = None  # None: not served: no response (reset, refused, timeout), or the waypoint's 5xx
    at_least_ms: float = 0.0  # a lower bound the fault itself imposes (its delay), not a speed claim
    path: str = "/"
    timeout: str = "2s"
    service: str = "echo"


@dataclass(frozen=True)
class Case:
    """How one kind is aimed off the measured path, and how it is seen to act."""

    target: str | None
    params: tuple[str, ...] = ()
    probe: Probe | None = None  # None: a one-shot kind, checked by its answer instead
    restarts: str | None = None  # a one-shot kill: the "node/process" whose restart count goes up
    hold: float = 0.5  # seconds on before the probe


CUT = Probe(None)
PLAIN_CUT = Probe(None, service="plain")
CASES: dict[str, Case] = {
    "latency": Case("echo", ("--param", "latency=300"), Probe(200, at_least_ms=300)),
    # 5000 bytes at 10 KB/s take half a second at least
    "bandwidth": Case("echo", ("--param", "rate=10"), Probe(200, at_least_ms=450, path="/?size=5000")),
    "reset_peer": Case("echo", (), CUT),
    "timeout": Case("echo", (), CUT),
    # 50+ slices 10 ms apart
    "slicer": Case("echo", ("--param", "average_size=10", "--param", "delay=10ms"),
                   Probe(200, at_least_ms=400, path="/?size=500")),
    "limit_data": Case("echo", ("--param", "bytes=500",), Probe(None, path="/?size=100000")),
    "delay": Case("echo", ("--param", "delay=300ms"), Probe(200, at_least_ms=300)),
    "abort": Case("echo", ("--param", "status=503"), Probe(503)),
    # node-3 holds echo-v1 and echo's waypoint: the hop to the waypoint is cut by the client's ztunnel
    "partition": Case("node-3", (), CUT),
    "pause_node": Case("node-3", (), CUT),
    "stop_node": Case("node-3", (), CUT),
    "kill_agent": Case("node-3", restarts="node-3/ztunnel"),
    "pause_agent": Case("node-3", (), CUT),
    "crash_workload": Case("echo-v1", restarts="node-3/echo-v1"),
    # Behind echo's waypoint, which lets its pooled connections to echo-v1 go when one is added; and
    # at plain-v1, reached ztunnel to ztunnel.
    "expire_cert": Case("echo-v1", (), CUT),
    "revoke": Case("plain-v1", (), PLAIN_CUT),
    "foreign_ca": Case("echo-v1", (), CUT),
    # Lab-wide, but with overlap it drops nothing by design. Without overlap (overlap=false) new
    # connections fail until every agent renewed, by design too: that variant is not run here.
    "rotate_root": Case(None, ("--param", "overlap=true"), hold=1.0),
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[LabDriver]:
    with running_lab(tmp_path_factory.mktemp("topo"), LAB, TOPOLOGY):
        # A waypoint for `echo` only: L7 kinds act there, `other` keeps going ztunnel to ztunnel.
        meshlab("waypoint", "enable", "flt", "--service", "echo", "--lab", LAB, timeout=120)
        yield LabDriver(LAB)


def test_every_kind_has_a_case_off_the_measured_path() -> None:
    missing = sorted(set(KINDS) - set(CASES))
    assert not missing, f"kinds with no target/params case in CASES (add one, aimed off the measured path): {missing}"
    assert not set(CASES) - set(KINDS), f"cases for kinds the catalogue no longer has: {set(CASES) - set(KINDS)}"
    for kind, case in CASES.items():
        assert case.target not in ON_PATH, f"{kind} aims at {case.target}, which the measured traffic uses"
        assert (case.probe is None) == KINDS[kind].one_shot, f"{kind}: probe the live kinds, not the one-shot ones"


@pytest.mark.timeout(900)
def test_adding_and_removing_every_fault_never_drops_untargeted_traffic(lab: LabDriver) -> None:
    assert [(w["service"], w["node"]) for w in _waypoints()] == [("echo", "node-3")]  # `other` has none
    _wait_target_answers(lab)
    # Two flows: L4 faults are decided when a connection opens, so a fault that leaked onto the measured
    # service would spare the keep-alive connections and hit only the new ones (seen with reset_peer).
    flows = {
        "keep-alive": lab.start_load(MEASURED, SOURCE, "-c", "2", "--qps", str(QPS_PER_FLOW), "--timeout", "5s",
                                     *LOAD_BOUND),
        "new connection per request": lab.start_load(MEASURED, SOURCE, "-c", "2", "--qps", str(QPS_PER_FLOW),
                                                     "--timeout", "5s", "-H", "Connection:close", *LOAD_BOUND),
    }
    timeline: list[str] = []
    try:
        for flow in flows.values():
            flow.wait_running()
        time.sleep(1.0)  # traffic flows before the first fault
        began = time.monotonic()
        for kind in KINDS:  # the catalogue, not a list of our own: a new kind cannot be left out
            timeline.append(f"{time.monotonic() - began:6.1f}s {kind}")
            assert kind in CASES, f"kind {kind} has no case in CASES: add one, aimed off the measured path"
            _add_and_remove(lab, kind, CASES[kind])
        timeline.append(f"{time.monotonic() - began:6.1f}s done")
        time.sleep(1.0)
        reports = {name: flow.stop() for name, flow in flows.items()}
    finally:
        for flow in flows.values():
            if flow.proc.poll() is None:
                flow.kill()
    print("faults:", *timeline, sep="\n")  # shown with -rP: how long each kind took
    assert lab.faults() == []
    for name, report in reports.items():
        print(f"{name}: {report['count']} requests in {report['duration_s']}s, codes {report['codes']}, "
              f"errors {report['errors']}, latency ms {report['latency_ms']}")
        count = report["count"]
        where = f"{name} flow {SOURCE} -> {MEASURED}: {report}\nfaults:\n" + "\n".join(timeline)
        assert report["codes"] == {"200": count} and not report["errors"], where
        # It ran throughout: paced at QPS_PER_FLOW for the whole sequence, it cannot have stalled for
        # long (and a request held over --timeout would be an error above). A wide margin: a busy machine.
        assert count >= report["duration_s"] * QPS_PER_FLOW / 4, where


def _add_and_remove(lab: LabDriver, kind: str, case: Case) -> None:
    """Add `kind` as `case` says, see it act on its target, remove it, wait until the target answers again."""
    watched = _restarts(lab, case.restarts) if case.restarts else None
    added = lab.add(kind, case.target, *case.params)
    if KINDS[kind].one_shot:
        assert added.get("oneShot") is True, (kind, added)
    time.sleep(case.hold)
    if case.probe is not None:
        _probe(lab, kind, case.probe)
    if case.restarts:
        _wait_restarted(lab, case.restarts, watched)
    if kind == "rotate_root":
        rotation = added["effect"]["rotation"]
        assert rotation["newRoot"] != rotation["oldRoot"] and rotation["overlap"], rotation
        assert rotation["failedRequests"] == 0 and rotation["stillOnOldRoot"] == [], rotation
    if not KINDS[kind].one_shot:
        removed = lab.remove(added["id"])
        assert removed["removed"] == [added["id"]] and not removed["errors"], (kind, removed)
    time.sleep(0.3)
    _wait_target_answers(lab, kind)
    if case.probe is not None and case.probe.service != "echo":
        _wait_target_answers(lab, kind, service=case.probe.service)


def _probe(lab: LabDriver, kind: str, probe: Probe) -> None:
    seen = lab.load(probe.service, SOURCE, "-n", "1", "-c", "1", "--timeout", probe.timeout, "--path", probe.path)
    if probe.status is None:
        # Through the waypoint a cut upstream is its 503; a cut waypoint is an error at the client.
        served = seen["codes"].get("200", 0) or any(not code.startswith(("5", "-")) for code in seen["codes"])
        assert seen["count"] == 1 and not served, f"{kind} on its target changed nothing: {seen}"
        return
    assert seen["codes"] == {str(probe.status): 1}, f"{kind}: {seen}"
    assert seen["latency_ms"]["min"] >= probe.at_least_ms, f"{kind} did not hold the request: {seen}"


def _wait_target_answers(lab: LabDriver, after: str = "the start", timeout: float = 60.0,
                         service: str = "echo") -> None:
    """Until `service` answers again (a node started, a ztunnel restarted, a certificate renewed)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = lab.load(service, SOURCE, "-n", "1", "-c", "1", "--timeout", "2s")
        if seen["codes"] == {"200": 1}:
            return
        assert time.monotonic() < deadline, f"{service} does not answer {timeout:g}s after {after}: {seen}"
        time.sleep(0.5)


def _restarts(lab: LabDriver, where: str) -> int:
    node, name = where.split("/")
    return int(lab.processes(node)[name]["restarts"])


def _wait_restarted(lab: LabDriver, where: str, before: int | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (now := _restarts(lab, where)) <= (before or 0):
        assert time.monotonic() < deadline, f"{where} was not restarted (restarts {before} -> {now})"
        time.sleep(0.3)


def _waypoints() -> list[dict]:
    return json.loads(meshlab("waypoint", "list", "--json", "--lab", LAB).stdout)["waypoints"]
