"""bookinfo in ambient mode on the local provider: mTLS between every workload, end to end."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab.controlplane.launch import running_pid
from lab.providers.proctags import find_tagged
from lab.state import lab_dir
from tests.support import meshlab

ROOT = Path(__file__).resolve().parents[2]
BOOKINFO = ROOT / "topologies" / "bookinfo.yaml"

pytestmark = pytest.mark.slow


def load(*args: str) -> dict:
    return json.loads(meshlab("load", *args, "--json", "--lab", "bookinfo").stdout)


def metrics(address: str) -> list:
    with urllib.request.urlopen(f"http://{address}:15020/metrics", timeout=5) as r:
        return [s for fam in text_string_to_metric_families(r.read().decode()) for s in fam.samples]


def tcp_total(state: dict, name: str, **labels: str) -> float:
    """Sum of a ztunnel counter over every node, for samples matching `labels`."""
    total = 0.0
    for node in state["nodes"].values():
        for s in metrics(node["address"]):
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


@pytest.fixture(scope="module")
def ambient_bookinfo():
    meshlab("up", str(BOOKINFO))
    out = meshlab("mode", "bookinfo", "ambient")
    assert "none -> ambient" in out.stdout
    state = json.loads(meshlab("status", "bookinfo", "--json").stdout)
    yield state
    meshlab("down", "bookinfo", check=False)


def test_pages_are_served_as_in_mode_none_with_mtls_on_every_hop(ambient_bookinfo) -> None:
    state = ambient_bookinfo
    before_tls = tcp_total(state, "istio_tcp_connections_opened_total", reporter="destination",
                           connection_security_policy="mutual_tls")
    result = load("productpage:9080/productpage", "-n", "60", "-c", "2", "--count-body", r"reviews-v\d")
    assert result["codes"] == {"200": 60}
    assert set(result["body_matches"]) == {"reviews-v1", "reviews-v2", "reviews-v3"}
    # productpage -> details and -> reviews once per page; reviews v2/v3 -> ratings: every one over HBONE.
    ratings_calls = result["body_matches"]["reviews-v2"] + result["body_matches"]["reviews-v3"]
    expected = 60 + 60 + ratings_calls
    tls = tcp_total(state, "istio_tcp_connections_opened_total", reporter="destination",
                    connection_security_policy="mutual_tls") - before_tls
    assert tls == expected
    edge = tcp_total(state, "istio_tcp_connections_opened_total", reporter="destination",
                     source_workload="reviews-v2", destination_workload="ratings-v1",
                     connection_security_policy="mutual_tls",
                     source_principal="spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews")
    assert edge >= result["body_matches"]["reviews-v2"]


def test_proxy_status_and_certificates(ambient_bookinfo) -> None:
    status = json.loads(meshlab("proxy-status", "--json", "--lab", "bookinfo").stdout)
    assert {a["node"] for a in status["agents"]} == {"node-1", "node-2", "node-3"}
    assert {a["status"] for a in status["agents"]} == {"SYNCED"}
    certs = json.loads(meshlab("certs", "--json", "--lab", "bookinfo").stdout)
    held = {(c["identity"].rsplit("/", 1)[1], c["holder"]) for c in certs}
    assert ("bookinfo-reviews", "ztunnel/node-3") in held and ("bookinfo-details", "ztunnel/node-2") in held
    text = meshlab("proxy-status", "--lab", "bookinfo").stdout
    assert "SYNCED" in text and "ztunnel" in text
    text = meshlab("certs", "--lab", "bookinfo").stdout
    assert "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-ratings" in text and "ztunnel/node-3" in text


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
