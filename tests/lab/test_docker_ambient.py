"""bookinfo in ambient mode on the docker provider: transparent capture with iptables inside the nodes.

The ambient scenarios of the local provider (tests/lab/ambient_scenarios.py) run unchanged; on top:
a plain socket to a service VIP is captured and carried over mutual TLS, a partition between two
nodes breaks exactly their mesh traffic until healed, and `mode none` removes every capture rule.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from lab.handle import Lab
from lab.providers import proctags
from lab.providers.base import Provider
from lab.state import lab_dir
from tests.lab import ambient_scenarios as scenarios
from tests.lab.ambient_scenarios import PROBE
from tests.support import labelled, meshlab

ROOT = Path(__file__).resolve().parents[2]
BOOKINFO = ROOT / "topologies" / "bookinfo.yaml"

pytestmark = [pytest.mark.docker, pytest.mark.slow]
T = TypeVar("T")



def run(lab: str, node: str, call: Callable[[Provider], Awaitable[T]]) -> T:
    """Call the provider of `node` (as the lab's own process would) from a synchronous test."""
    async def go() -> T:
        handle = Lab(lab)
        try:
            return await call(handle.provider_of(node, handle.state.load()))
        finally:
            await handle.close()
    return asyncio.run(go())


def probe(lab: str, state: dict, workload: str, service: str, path: str) -> tuple[int | None, str]:
    """Connect as `workload` (from its address, on its node) to `service`'s VIP: (local port, status or error)."""
    w = state["workloads"][workload]
    vip = state["services"][f"{service}.bookinfo"]["vips"][w["node"]]
    argv = ["python3", "-c", PROBE, w["address"], vip, "9080", path]
    result = run(lab, w["node"], lambda p: p.exec(w["node"], argv, timeout=15))
    lines = result.stdout.split("\n")
    port = int(lines[0]) if lines[0].isdigit() else None
    return port, (lines[1] if port is not None else lines[0]).strip()


def nat_rules(lab: str, node: str) -> str:
    result = run(lab, node, lambda p: p.exec(node, ["iptables", "-w", "-t", "nat", "-S"]))
    assert result.exit_code == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def docker_bookinfo(node_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict]]:
    """bookinfo on docker under a name of its own, switched to ambient."""
    name = f"bookinfo-amb{uuid.uuid4().hex[:6]}"
    topo = tmp_path_factory.mktemp("topo") / "bookinfo.yaml"
    topo.write_text(re.sub(r"(?m)^name: bookinfo$", f"name: {name}", BOOKINFO.read_text()))
    try:
        meshlab("up", str(topo), "--provider", "docker")
        assert "none -> ambient" in meshlab("mode", "bookinfo", "ambient", "--lab", name).stdout
        yield name, json.loads(meshlab("status", name, "--json").stdout)
    finally:
        meshlab("down", name, check=False)
        meshlab("clean", name, check=False)


def test_bookinfo_pages_over_mtls_on_every_hop(docker_bookinfo: tuple[str, dict]) -> None:
    name, state = docker_bookinfo
    assert {v["capture"] for v in state["nodes"].values()} == {"transparent"}
    assert {s["vips"]["node-1"] for s in state["services"].values()} == {
        "10.96.0.16", "10.96.0.17", "10.96.0.18", "10.96.0.19"}
    scenarios.pages_are_served_with_mtls_on_every_hop(name, state)


def test_proxy_status_and_certificates(docker_bookinfo: tuple[str, dict]) -> None:
    scenarios.proxy_status_and_certificates(docker_bookinfo[0])


def test_a_plain_socket_to_a_vip_is_captured_and_carried_over_mtls(docker_bookinfo: tuple[str, dict]) -> None:
    name, state = docker_bookinfo
    node1, node2 = state["nodes"]["node-1"]["address"], state["nodes"]["node-2"]["address"]
    edge = {"source_workload": "productpage-v1", "destination_workload": "details-v1",
            "source_principal": scenarios.BOOKINFO_SA + "productpage", "connection_security_policy": "mutual_tls"}
    before = {reporter: scenarios.tcp_total(state, "istio_tcp_connections_opened_total", reporter=reporter, **edge)
              for reporter in ("source", "destination")}
    port, status = probe(name, state, "productpage-v1", "details", "/details/0")
    assert port is not None and status == "HTTP/1.1 200 OK", status
    after = {reporter: scenarios.tcp_total(state, "istio_tcp_connections_opened_total", reporter=reporter, **edge)
             for reporter in ("source", "destination")}
    assert after["source"] - before["source"] >= 1 and after["destination"] - before["destination"] >= 1
    assert any(s.labels.get("destination_workload") == "details-v1" for s in scenarios.metrics(node2)
               if s.name == "istio_tcp_connections_opened_total")
    # The source node's access log has this very connection: from the workload's address and port to the VIP.
    log = lab_dir(name) / "nodes" / "node-1" / "logs" / "ztunnel.log"
    source_address = f"{state['workloads']['productpage-v1']['address']}:{port}"
    entries = [json.loads(line) for line in log.read_text().split("\n")[:-1] if source_address in line]
    assert entries, f"no access log entry from {source_address} on {node1}"
    entry = entries[-1]
    assert entry["direction"] == "outbound" and entry["protocol"] == "hbone" and entry["outcome"] == "ok"
    assert entry["source"]["identity"] == scenarios.BOOKINFO_SA + "productpage"
    assert entry["destination"]["identity"] == scenarios.BOOKINFO_SA + "details"
    assert entry["destination"]["address"] == f"{state['services']['details.bookinfo']['vips']['node-1']}:9080"
    rules = nat_rules(name, "node-1")
    assert "-A OUTPUT -j MESHLAB_OUTPUT" in rules and "--to-ports 15001" in rules and "--to-ports 15006" in rules


def test_a_partition_breaks_only_the_traffic_between_its_two_nodes(docker_bookinfo: tuple[str, dict]) -> None:
    name, state = docker_bookinfo
    # productpage-v1 on node-1; details-v1, reviews-v1 on node-2; ratings-v1 on node-3.
    assert probe(name, state, "productpage-v1", "ratings", "/ratings/0")[1] == "HTTP/1.1 200 OK"
    run(name, "node-1", lambda p: p.partition("node-1", "node-3"))
    try:
        _, status = probe(name, state, "productpage-v1", "ratings", "/ratings/0")
        print(f"\nnode-1 -> node-3 while partitioned: {status}")
        assert not status.startswith("HTTP/1.1 200"), status  # node-1 <-> node-3: cut
        assert probe(name, state, "productpage-v1", "details", "/details/0")[1] == "HTTP/1.1 200 OK"  # 1 <-> 2
        assert probe(name, state, "reviews-v1", "ratings", "/ratings/0")[1] == "HTTP/1.1 200 OK"  # 2 <-> 3
    finally:
        run(name, "node-1", lambda p: p.heal_partition("node-1", "node-3"))
    assert probe(name, state, "productpage-v1", "ratings", "/ratings/0")[1] == "HTTP/1.1 200 OK"


def test_mode_none_removes_the_capture_rules_and_down_leaves_nothing(docker_bookinfo: tuple[str, dict]) -> None:
    name, state = docker_bookinfo
    assert "ambient -> none" in meshlab("mode", "bookinfo", "none", "--lab", name).stdout
    for node in state["nodes"]:
        assert "MESHLAB" not in nat_rules(name, node)
    result = scenarios.load(name, "productpage:9080/productpage", "-n", "10", "-c", "1")
    assert result["codes"] == {"200": 10}
    assert "none -> ambient" in meshlab("mode", "bookinfo", "ambient", "--lab", name).stdout
    assert "MESHLAB_OUTPUT" in nat_rules(name, "node-3")
    meshlab("down", name)
    assert labelled(name) == []
    assert proctags.find_tagged(lab=name) == []
