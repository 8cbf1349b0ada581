"""Istio's Bookinfo L7 tasks on docker nodes: waypoints and sidecars behind transparent capture (iptables).

The tasks of tests/lab/test_l7_bookinfo.py run unchanged against a lab of containers: its module
fixtures `mode` (ambient with a waypoint, then sidecar) and `applied` are reused, over a `bookinfo`
fixture of this module that brings the same lab up with `--provider docker` under a name of its own.
On top: a plain socket from a workload to a service VIP is captured by its proxy (the waypoint, or
the workload's own sidecar) and carried over mutual TLS; plaintext to a sidecar workload's address is
captured by its sidecar's inbound side; a waypoint's address comes and goes with it.
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from collections.abc import Iterator
import pytest

from lab.state import lab_dir
from tests.lab import ambient_scenarios as scenarios
from tests.lab import test_l7_bookinfo as l7
from tests.lab.test_docker_ambient import PROBE, nat_rules, probe, run
from tests.lab.test_l7_bookinfo import (  # noqa: F401  (fixtures and tasks collected here, on docker)
    applied, mode, test_abort_for_jason_shows_ratings_unavailable, test_circuit_breaker_rejects_overflow_with_503_uo,
    test_l7_authorization_allows_only_get_from_productpage, test_outlier_detection_ejects_the_failing_host,
    test_request_routing_all_v1_then_jason_to_v2, test_retries_recover_from_a_50_percent_abort,
    test_traffic_shifting_50_50_then_all_v3, test_traffic_shifting_with_httproute_weights_90_10)
from tests.support import labelled, meshlab

pytestmark = [pytest.mark.docker, pytest.mark.slow]
PRODUCTPAGE = scenarios.BOOKINFO_SA + "productpage"


@pytest.fixture(scope="module")
def bookinfo(node_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The L7 tasks' bookinfo lab on docker nodes; the tasks' helpers are pointed at it meanwhile."""
    name = f"bookinfo-l7{uuid.uuid4().hex[:6]}"
    topo = l7.lab_topology(tmp_path_factory.mktemp("topology"))
    topo.write_text(re.sub(r"(?m)^name: bookinfo$", f"name: {name}", topo.read_text()))
    local_lab, l7.LAB = l7.LAB, name
    try:
        meshlab("up", str(topo), "--provider", "docker", timeout=240)
        yield name
        meshlab("down", name)
        assert labelled(name) == []
    finally:
        l7.LAB = local_lab
        meshlab("down", name, check=False)
        meshlab("clean", name, check=False)


def status(name: str) -> dict:
    return json.loads(meshlab("status", name, "--json").stdout)


def eth0_addresses(name: str, node: str) -> set[str]:
    result = run(name, node, lambda p: p.exec(node, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]))
    return {w[3].split("/")[0] for w in map(str.split, result.stdout.splitlines()) if len(w) > 3}


def counter(address: str, name: str, **labels: str) -> float:
    return sum(s.value for s in scenarios.metrics(address)
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def log_entries(name: str, node: str, process: str, source_address: str) -> list[dict]:
    """The proxy's access log lines (JSON) about requests from `source_address` (ip:port)."""
    path = lab_dir(name) / "nodes" / node / "logs" / f"{process}.log"
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]  # whole lines: one may be half-written
            if line.startswith("{") and source_address in line]


def test_a_plain_socket_to_a_vip_reaches_the_l7_proxy_and_goes_on_over_mtls(bookinfo: str, mode: str) -> None:
    """The issue's transparency check, for a waypoint and for a sidecar namespace: the client knows nothing
    of the mesh (plain TCP to the VIP, `Host: probe`), its L7 proxy names it by its principal, and the
    request goes on to the destination over mutual TLS."""
    state = status(bookinfo)
    details = state["workloads"]["details-v1"]  # on node-2; productpage-v1 is on node-1
    edge = {"destination_service_name": "details", "source_principal": PRODUCTPAGE, "response_code": "200"}
    if mode == "waypoint":
        waypoint = next(iter(state["waypoints"].values()))
        proxy, process, reporter = waypoint["address"], "waypoint-bookinfo-waypoint", "waypoint"
        edge["connection_security_policy"] = "mutual_tls"  # from productpage's ztunnel, over HBONE
        # The waypoint's upstream is a pooled HBONE connection to details' ztunnel: a connection-level
        # counter there, which this request may not move, but which says how the waypoint reaches it.
        destination = (state["nodes"]["node-2"]["address"], "istio_tcp_connections_opened_total",
                       {"reporter": "destination", "destination_workload": "details-v1",
                        "source_principal": waypoint["identity"], "connection_security_policy": "mutual_tls"})
    else:
        proxy, process, reporter = state["workloads"]["productpage-v1"]["sidecarAddress"], \
            "sidecar-productpage-v1", "source"
        destination = (details["sidecarAddress"], "istio_requests_total",
                       {"reporter": "destination", "destination_workload": "details-v1",
                        "source_principal": PRODUCTPAGE, "connection_security_policy": "mutual_tls"})
    before = counter(proxy, "istio_requests_total", reporter=reporter, **edge)
    before_destination = counter(destination[0], destination[1], **destination[2])

    port, answer = probe(bookinfo, state, "productpage-v1", "details", "/details/0")
    assert port is not None and answer == "HTTP/1.1 200 OK", answer

    assert counter(proxy, "istio_requests_total", reporter=reporter, **edge) - before == 1
    after_destination = counter(destination[0], destination[1], **destination[2])
    if mode == "sidecar":  # one request, seen by details' own sidecar with productpage's principal
        assert after_destination - before_destination == 1
    else:
        assert after_destination >= 1
    source = f"{state['workloads']['productpage-v1']['address']}:{port}"
    node = waypoint["node"] if mode == "waypoint" else "node-1"
    entries = log_entries(bookinfo, node, process, source)
    assert entries, f"no access log entry from {source} in {process}.log"
    entry = entries[-1]
    assert entry["reporter"] == reporter and entry["response_code"] == 200 and entry["path"] == "/details/0"
    assert entry["source"]["principal"] == PRODUCTPAGE
    assert entry["destination"]["service"] == "details.bookinfo.svc.cluster.local"
    assert entry["upstream_host"].startswith(details["address"])
    rules = nat_rules(bookinfo, "node-1")
    if mode == "sidecar":
        own = state["workloads"]["productpage-v1"]["sidecarPorts"]
        assert f"outbound of productpage-v1 to its sidecar\" -j REDIRECT --to-ports {own['outbound']}" in rules
    else:
        assert "outbound of productpage-v1\" -j REDIRECT --to-ports 15001" in rules


def test_plaintext_to_a_sidecar_workload_is_captured_by_its_sidecar(bookinfo: str, mode: str) -> None:
    """A caller outside the mesh (a node's own process) dials a sidecar workload's address: its sidecar serves
    the request (reporter destination, no mTLS); in ambient mode the node's ztunnel does, at L4."""
    state = status(bookinfo)
    details = state["workloads"]["details-v1"]
    caller = state["nodes"]["node-3"]["address"]
    argv = ["python3", "-c", PROBE, caller, details["address"], "9080", "/details/1"]
    if mode == "sidecar":
        where, name = details["sidecarAddress"], "istio_requests_total"
        labels = {"reporter": "destination", "destination_workload": "details-v1", "connection_security_policy": "none"}
    else:
        where, name = state["nodes"]["node-2"]["address"], "istio_tcp_connections_opened_total"
        labels = {"reporter": "destination", "destination_workload": "details-v1"}
    before = counter(where, name, **labels)
    result = run(bookinfo, "node-3", lambda p: p.exec("node-3", argv, timeout=15))
    lines = result.stdout.split("\n")
    assert lines[0].isdigit() and lines[1] == "HTTP/1.1 200 OK", result.stdout
    assert counter(where, name, **labels) - before == 1
    if mode == "sidecar":
        entries = log_entries(bookinfo, "node-2", "sidecar-details-v1", f"{caller}:{lines[0]}")
        assert entries and entries[-1]["reporter"] == "destination" and entries[-1]["path"] == "/details/1"


def test_a_service_waypoint_address_comes_and_goes_with_it(bookinfo: str) -> None:
    """`waypoint enable --service` puts the waypoint's address on its node's eth0 live; disable takes it off."""
    enabled = json.loads(meshlab("waypoint", "enable", "bookinfo", "--service", "ratings", "--json",
                                 "--lab", bookinfo).stdout)
    try:
        entry = enabled["waypoint"]
        assert entry["node"] == "node-3" and entry["address"].endswith((".225", ".224"))
        assert entry["address"] in eth0_addresses(bookinfo, "node-3")
        with urllib.request.urlopen(f"http://{entry['address']}:15021/healthz/ready", timeout=5) as ready:
            assert ready.status == 200  # it serves there, reachable from the host
    finally:
        meshlab("waypoint", "disable", "bookinfo", "--service", "ratings", "--lab", bookinfo)
    assert entry["address"] not in eth0_addresses(bookinfo, "node-3")
    assert "bookinfo/ratings-waypoint" not in status(bookinfo)["waypoints"]


def test_lab_network_layout_of_the_l7_proxies(bookinfo: str) -> None:
    """Sidecar addresses (.128 + k) and ports (15101 + 10s / 15106 + 10s) are planned with the workloads."""
    state = status(bookinfo)
    subnet = state["docker"]["subnet"].rsplit(".", 1)[0]
    productpage, sleep = state["workloads"]["productpage-v1"], state["workloads"]["sleep"]
    assert productpage["sidecarAddress"] == f"{subnet}.128"
    assert productpage["sidecarPorts"] == {"outbound": 15101, "inbound": 15106}
    assert sleep["node"] == "node-1" and sleep["sidecarPorts"] == {"outbound": 15111, "inbound": 15116}
    assert {productpage["address"], productpage["sidecarAddress"], sleep["sidecarAddress"]} <= \
        eth0_addresses(bookinfo, "node-1")
