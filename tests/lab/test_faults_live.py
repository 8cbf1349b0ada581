"""Live faults on real traffic through a real local lab in ambient mode: each kind's effect, and its removal.

Topology: echo-v1 and client-a on node-1, client-b on node-2, and an `other` service (other-v1 on node-1)
that no fault targets, for the "untargeted traffic is never dropped" checks; `near` (near-v1 on node-2)
is what client-b still reaches while node-1 is stopped.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from lab.controlplane.launch import running_pid
from lab.state import lab_dir
from tests.support import meshlab, running_lab

pytestmark = pytest.mark.slow
LAB = "faultlab"
TOPOLOGY = f"""
name: {LAB}
nodes:
  - name: node-1
  - name: node-2
namespaces:
  - name: flt
    mode: ambient
services:
  - name: echo
    namespace: flt
    ports: [{{port: 8080}}]
    workloads:
      - {{name: echo-v1, node: node-1, serviceAccount: echo, run: {{demo: echo}}}}
  - name: other
    namespace: flt
    ports: [{{port: 8080}}]
    workloads:
      - {{name: other-v1, node: node-1, serviceAccount: other, run: {{demo: echo}}}}
  - name: near
    namespace: flt
    ports: [{{port: 8080}}]
    workloads:
      - {{name: near-v1, node: node-2, serviceAccount: near, run: {{demo: echo}}}}
workloads:
  - {{name: client-a, namespace: flt, node: node-1, serviceAccount: client, run: {{demo: sleep}}}}
  - {{name: client-b, namespace: flt, node: node-2, serviceAccount: client, run: {{demo: sleep}}}}
"""


def load(target: str, source: str = "client-b", *args: str) -> dict:
    target = target if ":" in target else f"{target}:8080"
    return json.loads(meshlab("load", target, "--from", source, "--json", "--lab", LAB, *args, timeout=90).stdout)


def fault(*args: str) -> dict:
    return json.loads(meshlab("fault", *args, "--json", "--lab", LAB).stdout)


def faults() -> list[dict]:
    return json.loads(meshlab("fault", "list", "--json", "--lab", LAB).stdout)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("topo"), LAB, TOPOLOGY) as path:
        yield path


@pytest.fixture(autouse=True)
def no_faults_left(lab):
    yield
    meshlab("fault", "rm", "--all", "--lab", LAB, check=False)


def p50(target: str = "echo", source: str = "client-b") -> float:
    result = load(target, source, "-n", "30", "-c", "1", "-d", "60s")
    assert result["codes"] == {"200": 30}, result
    return result["latency_ms"]["p50"]


def test_latency_raises_p50_by_its_value_and_removal_restores(lab) -> None:
    before = p50()
    added = fault("add", "latency", "echo", "--param", "latency=200")
    assert added["id"] and added["layer"] == "l4"
    during = p50()
    assert 180 <= during - before <= 220, (before, during)
    meshlab("fault", "rm", added["id"], "--lab", LAB)
    after = p50()
    assert after - before < 50, (before, after)


@pytest.mark.slow
def test_bandwidth_makes_a_megabyte_take_ten_seconds(lab) -> None:
    fault("add", "bandwidth", "echo", "--param", "rate=100")
    result = load("echo", "client-b", "-n", "1", "-c", "1", "--path", "/?size=1000000", "--timeout", "30s")
    assert result["codes"] == {"200": 1}, result
    assert result["bytes_received"] >= 1_000_000
    assert 9_000 <= result["latency_ms"]["max"] <= 12_000, result["latency_ms"]


def test_reset_peer_resets_and_removal_restores(lab) -> None:
    added = fault("add", "reset_peer", "echo", "--param", "timeout=0")
    result = load("echo", "client-b", "-n", "5", "-c", "1")
    assert "200" not in result["codes"], result
    assert any("reset" in e.lower() for e in result["errors"]), result["errors"]
    meshlab("fault", "rm", added["id"], "--lab", LAB)
    assert load("echo", "client-b", "-n", "5", "-c", "1")["codes"] == {"200": 5}


def test_timeout_holds_the_connection(lab) -> None:
    fault("add", "timeout", "echo", "--param", "timeout=0", "--direction", "upstream")
    result = load("echo", "client-b", "-n", "2", "-c", "1", "--timeout", "1s")
    assert "200" not in result["codes"], result
    assert any("time" in e.lower() for e in result["errors"]), result["errors"]


def test_limit_data_cuts_the_response(lab) -> None:
    fault("add", "limit_data", "echo", "--param", "bytes=500")
    result = load("echo", "client-b", "-n", "3", "-c", "1", "--path", "/?size=100000")
    assert "200" not in result["codes"] and result["errors"], result


def test_slicer_still_delivers_but_slower(lab) -> None:
    before = p50()
    fault("add", "slicer", "echo", "--param", "average_size=10", "--param", "delay=10ms")
    result = load("echo", "client-b", "-n", "3", "-c", "1", "--path", "/?size=1000")
    assert result["codes"] == {"200": 3}, result
    assert result["latency_ms"]["p50"] - before >= 500  # ~100 slices 10 ms apart


def test_ttl_is_reverted_by_the_control_plane_alone(lab) -> None:
    added = fault("add", "reset_peer", "echo", "--ttl", "2s")
    assert added["expires"] - added["created"] == pytest.approx(2, abs=0.01)
    time.sleep(3)  # no client attached meanwhile
    assert faults() == []
    assert load("echo", "client-b", "-n", "3", "-c", "1")["codes"] == {"200": 3}


def test_faults_survive_a_control_plane_restart(lab) -> None:
    added = fault("add", "latency", "echo", "--param", "latency=100")
    pid = running_pid(lab_dir(LAB))
    assert pid
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while running_pid(lab_dir(LAB)) and time.monotonic() < deadline:
        time.sleep(0.2)
    meshlab("up", str(lab), timeout=180)  # starts the control plane again
    assert [f["id"] for f in faults()] == [added["id"]]
    assert p50() >= 90  # and the ztunnels still apply it


def test_partition_cuts_cross_node_traffic_only(lab) -> None:
    fault("add", "partition", "node-2")
    cross = load("echo", "client-b", "-n", "5", "-c", "1")
    assert "200" not in cross["codes"], cross
    assert load("echo", "client-a", "-n", "5", "-c", "1")["codes"] == {"200": 5}
    meshlab("fault", "rm", "--all", "--lab", LAB)
    assert load("echo", "client-b", "-n", "5", "-c", "1")["codes"] == {"200": 5}


def test_adding_and_removing_faults_never_drops_untargeted_traffic(lab) -> None:
    results: dict = {}

    def run() -> None:
        results["other"] = load("other", "client-b", "-d", "6s", "-c", "2", "--qps", "40")
    runner = threading.Thread(target=run)
    runner.start()
    for kind, params in (("reset_peer", []), ("latency", ["--param", "latency=300"]), ("timeout", [])):
        added = fault("add", kind, "echo", *params)
        time.sleep(0.5)
        meshlab("fault", "rm", added["id"], "--lab", LAB)
        time.sleep(0.3)
    runner.join(60)
    other = results["other"]
    assert other["count"] > 50 and other["codes"] == {"200": other["count"]} and not other["errors"], other


def test_bad_input_gets_clear_errors(lab) -> None:
    out = meshlab("fault", "add", "earthquake", "echo", "--lab", LAB, check=False)
    assert out.returncode == 2 and "unknown fault kind 'earthquake'" in out.stderr and "latency" in out.stderr
    out = meshlab("fault", "add", "latency", "echo", "--param", "latency=soon", "--lab", LAB, check=False)
    assert out.returncode == 2 and "param latency" in out.stderr
    out = meshlab("fault", "add", "latency", "echo", "--lab", LAB, check=False)
    assert out.returncode == 2 and "latency" in out.stderr and "needs it" in out.stderr
    out = meshlab("fault", "add", "latency", "nowhere", "--param", "latency=1", "--lab", LAB, check=False)
    assert out.returncode == 2 and "target 'nowhere'" in out.stderr
    out = meshlab("fault", "add", "pause_node", "echo", "--lab", LAB, check=False)
    assert out.returncode == 2 and "is a service" in out.stderr
    out = meshlab("fault", "rm", "f999", "--lab", LAB, check=False)
    assert out.returncode == 3 and "no fault 'f999'" in out.stderr
    assert "Traceback" not in out.stderr


def test_expired_certificate_fails_new_connections_until_renewed(lab) -> None:
    added = fault("add", "expire_cert", "echo-v1")
    assert "200" not in load("echo", "client-b", "-n", "3", "-c", "1")["codes"]
    meshlab("fault", "rm", added["id"], "--lab", LAB)
    deadline = time.monotonic() + 10  # the ztunnel asks the CA for a fresh certificate
    while time.monotonic() < deadline:
        if load("echo", "client-b", "-n", "3", "-c", "1")["codes"] == {"200": 3}:
            break
        time.sleep(0.5)
    assert load("echo", "client-b", "-n", "3", "-c", "1")["codes"] == {"200": 3}


def test_revoked_identity_is_refused_by_the_ca_and_peers(lab) -> None:
    fault("add", "revoke", "echo-v1", "--ttl", "3s")
    assert "200" not in load("echo", "client-b", "-n", "3", "-c", "1")["codes"]
    assert load("other", "client-b", "-n", "3", "-c", "1")["codes"] == {"200": 3}  # another identity is fine
    time.sleep(3.5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and load("echo", "client-b", "-n", "1", "-c", "1")["codes"] != {"200": 1}:
        time.sleep(0.5)
    assert load("echo", "client-b", "-n", "3", "-c", "1")["codes"] == {"200": 3}


def test_pause_node_and_kill_agent(lab) -> None:
    added = fault("add", "pause_node", "node-1")
    assert "200" not in load("echo", "client-b", "-n", "1", "-c", "1", "--timeout", "1s")["codes"]
    meshlab("fault", "rm", added["id"], "--lab", LAB)
    assert load("echo", "client-b", "-n", "3", "-c", "1")["codes"] == {"200": 3}
    done = fault("add", "kill_agent", "node-1")
    assert done["oneShot"] and faults() == []
    deadline = time.monotonic() + 15  # the supervisor restarts the ztunnel
    while time.monotonic() < deadline and load("echo", "client-b", "-n", "1", "-c", "1")["codes"] != {"200": 1}:
        time.sleep(0.5)
    assert load("echo", "client-b", "-n", "3", "-c", "1")["codes"] == {"200": 3}


def node_states() -> dict[str, str]:
    status = json.loads(meshlab("status", LAB, "--json").stdout)
    return {name: node["state"] for name, node in status["nodes"].items()}


def test_stop_node_refuses_its_traffic_until_removed(lab) -> None:
    results: dict = {}

    def run() -> None:  # node-2's own traffic, through the stop and the start of node-1
        results["near"] = load("near", "client-b", "-d", "8s", "-c", "1", "--qps", "20")
    runner = threading.Thread(target=run)
    runner.start()
    time.sleep(0.5)
    added = fault("add", "stop_node", "node-1")
    assert node_states() == {"node-1": "stopped", "node-2": "running"}
    status = json.loads(meshlab("status", LAB, "--json").stdout)
    assert status["nodes"]["node-1"]["processes"] == [] and "error" not in status["nodes"]["node-1"]
    # Nothing of node-1 listens any more: refused at once, not a hang until the client's timeout.
    cut = load("echo", "client-b", "-n", "3", "-c", "1", "--timeout", "10s")
    assert "200" not in cut["codes"] and cut["errors"], cut
    assert not any("time" in e.lower() for e in cut["errors"]), cut["errors"]
    meshlab("fault", "rm", added["id"], "--lab", LAB)
    assert node_states() == {"node-1": "running", "node-2": "running"}
    status = json.loads(meshlab("status", LAB, "--json").stdout)
    assert {p["name"] for p in status["nodes"]["node-1"]["processes"]} >= {"ztunnel", "echo-v1", "other-v1",
                                                                          "client-a"}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and load("echo", "client-b", "-n", "1", "-c", "1")["codes"] != {"200": 1}:
        time.sleep(0.5)
    assert load("echo", "client-b", "-n", "3", "-c", "1")["codes"] == {"200": 3}
    assert load("echo", "client-a", "-n", "3", "-c", "1")["codes"] == {"200": 3}  # node-1's own traffic too
    runner.join(60)
    near = results["near"]
    assert near["count"] > 50 and near["codes"] == {"200": near["count"]} and not near["errors"], near


def test_stop_node_with_a_ttl_is_started_again_by_the_control_plane(lab) -> None:
    fault("add", "stop_node", "node-1", "--ttl", "2s")
    assert node_states()["node-1"] == "stopped"
    deadline = time.monotonic() + 30  # expiry, then the ztunnel rejoins and gets its certificates
    while time.monotonic() < deadline and load("echo", "client-b", "-n", "1", "-c", "1")["codes"] != {"200": 1}:
        time.sleep(0.5)
    assert faults() == []
    assert load("echo", "client-b", "-n", "3", "-c", "1")["codes"] == {"200": 3}
