"""L4 toxics on the paths through L7 proxies, on real traffic through a real local lab.

* An ambient namespace with a waypoint: client ztunnel -> waypoint -> server ztunnel. The waypoint
  applies the toxics of the traffic it routes, on its onward connection, and nobody else does: a
  200 ms latency adds 200 ms, not 400.
* A sidecar workload calling a service outside the mesh (mode none): nobody is in front of that
  destination, so the caller's sidecar applies them on its upstream connection.

The measuring helpers are test_faults_live's, pointed at this module's lab.
"""

from __future__ import annotations

import time

import pytest

from tests.lab import test_faults_live as live
from tests.support import meshlab, running_lab

pytestmark = pytest.mark.slow
LAB = "faultl7"
TOPOLOGY = f"""
name: {LAB}
nodes:
  - name: node-1
  - name: node-2
namespaces:
  - {{name: amb, mode: ambient, waypoint: true}}
  - {{name: side, mode: sidecar}}
  - {{name: plain, mode: none}}
services:
  - name: echo
    namespace: amb
    ports: [{{port: 8080}}]
    workloads:
      - {{name: echo-v1, node: node-1, serviceAccount: echo, run: {{demo: echo}}}}
  - name: outside
    namespace: plain
    ports: [{{port: 8080}}]
    workloads:
      - {{name: outside-v1, node: node-2, serviceAccount: outside, run: {{demo: echo}}}}
workloads:
  - {{name: client-a, namespace: amb, node: node-1, serviceAccount: client, run: {{demo: sleep}}}}
  - {{name: client-b, namespace: amb, node: node-2, serviceAccount: client, run: {{demo: sleep}}}}
  - {{name: side-client, namespace: side, node: node-1, serviceAccount: side-client, run: {{demo: sleep}}}}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("topo"), LAB, TOPOLOGY) as path:
        yield path


@pytest.fixture(autouse=True)
def this_lab(lab, monkeypatch):
    """test_faults_live's helpers name their lab by its module's LAB: this module's lab for one test."""
    monkeypatch.setattr(live, "LAB", LAB)
    yield
    meshlab("fault", "rm", "--all", "--lab", LAB, check=False)


def rm(fault: dict) -> None:
    meshlab("fault", "rm", fault["id"], "--lab", LAB)


# ---------------------------------------------------------------- through a waypoint


def test_latency_on_a_service_behind_a_waypoint_is_applied_once(lab) -> None:
    before = live.p50("echo", "client-b")
    added = live.fault("add", "latency", "echo.amb", "--param", "latency=200")
    during = live.p50("echo", "client-b")
    assert 180 <= during - before <= 220, (before, during)  # once: 400 ms would be the ztunnels and the waypoint
    rm(added)
    after = live.p50("echo", "client-b")
    assert after - before < 50, (before, after)


def test_an_edge_through_a_waypoint_slows_only_its_source(lab) -> None:
    before_a, before_b = live.p50("echo", "client-a"), live.p50("echo", "client-b")
    added = live.fault("add", "latency", "client-b->echo.amb", "--param", "latency=200", "--direction", "upstream")
    # the waypoint pools its connections to echo-v1 across clients: the slow ones stay client-b's
    during_b, during_a = live.p50("echo", "client-b"), live.p50("echo", "client-a")
    assert 180 <= during_b - before_b <= 220, (before_b, during_b)
    assert during_a - before_a < 50, (before_a, during_a)
    rm(added)
    assert live.p50("echo", "client-b") - before_b < 50


def test_reset_peer_behind_a_waypoint_fails_requests_and_removal_restores(lab) -> None:
    added = live.fault("add", "reset_peer", "echo.amb", "--param", "timeout=0")
    result = live.load("echo", "client-b", "-n", "5", "-c", "1")
    # the waypoint's connection to echo-v1 is reset: it answers 503 (Envoy's "upstream reset"), as Istio's would
    assert result["codes"] == {"503": 5}, result
    rm(added)
    assert live.load("echo", "client-b", "-n", "5", "-c", "1")["codes"] == {"200": 5}


def test_limit_data_behind_a_waypoint_cuts_the_response(lab) -> None:
    added = live.fault("add", "limit_data", "echo.amb", "--param", "bytes=500")
    result = live.load("echo", "client-b", "-n", "3", "-c", "1", "--path", "/?size=100000")
    assert "200" not in result["codes"] and result["errors"], result
    rm(added)
    result = live.load("echo", "client-b", "-n", "3", "-c", "1", "--path", "/?size=100000")
    assert result["codes"] == {"200": 3} and result["bytes_received"] >= 300_000, result


# ---------------------------------------------------------------- a sidecar calling outside the mesh


def test_latency_on_a_sidecar_call_outside_the_mesh_is_applied_and_removed(lab) -> None:
    before = live.p50("outside.plain", "side-client")
    added = live.fault("add", "latency", "outside-v1", "--param", "latency=200")
    during = live.p50("outside.plain", "side-client")
    assert 180 <= during - before <= 220, (before, during)
    rm(added)
    after = live.p50("outside.plain", "side-client")
    assert after - before < 50, (before, after)


def test_reset_peer_on_a_sidecar_call_outside_the_mesh(lab) -> None:
    added = live.fault("add", "reset_peer", "outside.plain", "--param", "timeout=0")
    result = live.load("outside.plain", "side-client", "-n", "5", "-c", "1")
    assert result["codes"] == {"503": 5}, result  # the sidecar's upstream connection is reset: 503 UC
    rm(added)
    assert live.load("outside.plain", "side-client", "-n", "5", "-c", "1")["codes"] == {"200": 5}


# ---------------------------------------------------------------- faults that refuse connections


def answers_200_again(target: str, source: str, timeout: float = 30.0) -> None:
    """Wait (bounded) until `source` gets 200s from `target` again: an agent may first renew a certificate."""
    deadline = time.monotonic() + timeout
    while True:
        result = live.load(target, source, "-n", "3", "-c", "1")
        if result["codes"] == {"200": 3}:
            return
        assert time.monotonic() < deadline, f"{source} -> {target} still failing after {timeout:g}s: {result}"
        time.sleep(0.5)


def test_a_partition_of_the_waypoints_node_cuts_the_hop_to_it(lab) -> None:
    # amb's waypoint runs on node-1 (with echo-v1); client-b on node-2 reaches echo only through it
    assert live.load("echo", "client-b", "-n", "3", "-c", "1")["codes"] == {"200": 3}
    added = live.fault("add", "partition", "node-1")
    result = live.load("echo", "client-b", "-n", "3", "-c", "1")
    assert "200" not in result["codes"], result
    assert live.load("echo", "client-a", "-n", "3", "-c", "1")["codes"] == {"200": 3}  # same node: untouched
    rm(added)
    answers_200_again("echo", "client-b")


def test_a_partition_cuts_a_sidecars_calls_across_it(lab) -> None:
    # side-client's sidecar (node-1) calls outside-v1 (node-2): no ztunnel on that path, the sidecar refuses
    assert live.load("outside.plain", "side-client", "-n", "3", "-c", "1")["codes"] == {"200": 3}
    added = live.fault("add", "partition", "node-2")
    result = live.load("outside.plain", "side-client", "-n", "3", "-c", "1")
    assert result["codes"] == {"503": 3}, result  # the sidecar cannot connect: 503 UF
    rm(added)
    answers_200_again("outside.plain", "side-client")


@pytest.mark.parametrize("kind", ["revoke", "foreign_ca"])
def test_a_certificate_fault_behind_a_waypoint_meets_its_pooled_connections(lab, kind: str) -> None:
    # warm the waypoint's pool towards echo-v1 first: the fault must not ride on connections made before it
    assert live.load("echo", "client-b", "-n", "5", "-c", "1")["codes"] == {"200": 5}
    added = live.fault("add", kind, "echo-v1")
    time.sleep(1.0)  # the waypoint's and ztunnels' configs carry it
    result = live.load("echo", "client-b", "-n", "3", "-c", "1")
    assert "200" not in result["codes"], result
    rm(added)
    answers_200_again("echo", "client-b")
