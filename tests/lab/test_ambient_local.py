"""bookinfo in ambient mode on the local provider: mTLS between every workload, end to end."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from lab.controlplane.launch import running_pid
from lab.providers.proctags import find_tagged
from lab.state import lab_dir
from tests.lab import ambient_scenarios as scenarios
from tests.support import meshlab

ROOT = Path(__file__).resolve().parents[2]
BOOKINFO = ROOT / "topologies" / "bookinfo.yaml"

pytestmark = pytest.mark.slow


def load(*args: str) -> dict:
    return scenarios.load("bookinfo", *args)


@pytest.fixture(scope="module")
def ambient_bookinfo():
    meshlab("up", str(BOOKINFO))
    out = meshlab("mode", "bookinfo", "ambient")
    assert "none -> ambient" in out.stdout
    state = json.loads(meshlab("status", "bookinfo", "--json").stdout)
    yield state
    meshlab("down", "bookinfo", check=False)


def test_pages_are_served_as_in_mode_none_with_mtls_on_every_hop(ambient_bookinfo) -> None:
    scenarios.pages_are_served_with_mtls_on_every_hop("bookinfo", ambient_bookinfo)


def test_proxy_status_and_certificates(ambient_bookinfo) -> None:
    scenarios.proxy_status_and_certificates("bookinfo")


def test_killing_the_control_plane_loses_no_request(ambient_bookinfo) -> None:
    results: dict = {}

    def run() -> None:
        results["load"] = load("productpage:9080/productpage", "--qps", "20", "-d", "6s", "-c", "2")

    loader = threading.Thread(target=run)
    loader.start()
    time.sleep(1.5)
    pid = running_pid(lab_dir("bookinfo"))
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    loader.join(60)
    result = results["load"]
    assert result["count"] > 60 and result["codes"] == {"200": result["count"]}, result
    # `up` again restarts the control plane; every agent reconnects and resyncs.
    meshlab("up", str(BOOKINFO))
    meshlab("mode", "bookinfo", "ambient")
    status = json.loads(meshlab("proxy-status", "--json", "--lab", "bookinfo").stdout)
    assert {a["status"] for a in status["agents"]} == {"SYNCED"}, status




def test_lab_api_serves_traffic_nodes_logs_and_events(ambient_bookinfo) -> None:
    from lab.client import LabClient

    client = LabClient("bookinfo")
    client.traffic()
    load("productpage:9080/productpage", "-n", "20", "-c", "1")
    traffic = client.traffic()
    assert traffic["scraped"] == 3
    edges = {(e["source"], e["destination"]): e for e in traffic["edges"]}
    edge = edges[("productpage-v1", "details-v1")]
    assert edge["security"] == "mutual_tls" and edge["service"].startswith("details.bookinfo")
    assert edge["connectionsOpened"] >= 20 and edge["rates"]["connectionsOpenedPerSecond"] > 0
    nodes = client.nodes()
    assert {p["name"] for p in nodes["nodes"]["node-3"]["processes"]} >= {"ztunnel", "ratings-v1"}
    logs = client.logs("node-3", "ratings-v1", tail=5)["text"]
    assert "GET /ratings/" in logs
    assert any("ambient" in e["message"] for e in client.events()["events"])


def test_load_runs_through_the_api_can_be_stopped(ambient_bookinfo) -> None:
    from lab.client import LabClient

    client = LabClient("bookinfo")
    short = client.start_load("productpage:9080/productpage", qps=20, duration="1s")
    long = client.start_load("productpage:9080/productpage", qps=5, duration="60s")
    time.sleep(2.5)
    client.stop_load(long["id"])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        runs = {r["id"]: r for r in client.loads()["runs"]}
        if runs[short["id"]]["state"] == "done" and runs[long["id"]]["state"] == "stopped":
            break
        time.sleep(0.3)
    assert runs[short["id"]]["state"] == "done", runs
    assert runs[short["id"]]["result"]["codes"] == {"200": runs[short["id"]]["result"]["count"]}
    assert runs[long["id"]]["state"] == "stopped" and 5 <= runs[long["id"]]["result"]["count"] < 100


def test_down_leaves_no_process_of_the_lab() -> None:
    meshlab("down", "bookinfo", check=False)
    assert find_tagged(lab="bookinfo") == []
