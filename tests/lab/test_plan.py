"""The plan: addresses, processes and the resolver table a topology turns into (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.addressing import allocate_block, node_address, workload_address
from lab.errors import LabError
from lab.plan import plan_lab
from lab.topology.loader import load_topology

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"
AGENT = ("python3", "agents.pyz")


@pytest.fixture
def bookinfo_plan():
    return plan_lab(load_topology(TOPOLOGIES / "bookinfo.yaml"), "127.150.0.0/16", "bookinfo", lambda n: AGENT)


@pytest.mark.parametrize("used, expected", [
    (set(), "127.100.0.0/16"),
    ({"127.100.0.0/16"}, "127.101.0.0/16"),
    ({"127.100.0.0/16", "127.102.0.0/16"}, "127.101.0.0/16"),
])
def test_allocate_block_takes_the_first_free_one(used: set[str], expected: str) -> None:
    assert allocate_block(used) == expected


def test_allocate_block_fails_clearly_when_full() -> None:
    with pytest.raises(LabError, match="no free address block"):
        allocate_block({f"127.{b}.0.0/16" for b in range(100, 255)})


@pytest.mark.parametrize("index, slot, node, workload", [
    (0, 0, "127.150.1.1", "127.150.1.10"),
    (2, 3, "127.150.3.1", "127.150.3.13"),
])
def test_addresses(index: int, slot: int, node: str, workload: str) -> None:
    assert node_address("127.150.0.0/16", index) == node
    assert workload_address("127.150.0.0/16", index, slot) == workload


def test_every_workload_gets_a_unique_address_on_its_node(bookinfo_plan) -> None:
    addrs = {p.workload.name: p.address for p in bookinfo_plan.placements}
    assert len(set(addrs.values())) == len(addrs) == 6
    assert addrs["productpage-v1"] == "127.150.1.10"
    assert addrs["reviews-v2"].startswith("127.150.3.")


def test_workload_process_carries_the_env_contract(bookinfo_plan) -> None:
    spec = next(p for p in bookinfo_plan.processes["node-3"] if p.name == "reviews-v3")
    assert spec.argv == (*AGENT, "demo", "reviews")
    assert spec.env["MESH_BIND_ADDR"] == bookinfo_plan.placement("reviews-v3").address
    assert spec.env["MESH_PORT"] == "9080"
    assert spec.env["MESH_RESOLVER"] == "127.150.3.1:15053"
    assert spec.env["MESH_VERSION"] == "v3"
    assert spec.env["MESH_SERVICE_ACCOUNT"] == "bookinfo-reviews"
    assert spec.ready_tcp == (spec.env["MESH_BIND_ADDR"], 9080)
    assert spec.restart == "always"


def test_resolver_table_lists_every_endpoint(bookinfo_plan) -> None:
    from lab import mesh
    from lab.orchestrator import _state_document

    state = _state_document(bookinfo_plan, "bookinfo.yaml", "running", None)
    table = mesh.resolver_table(state, "node-2")
    services = {s["name"]: s for s in table["services"]}
    assert set(services) == {"productpage", "details", "reviews", "ratings"}
    assert sorted(e["labels"]["version"] for e in services["reviews"]["endpoints"]) == ["v1", "v2", "v3"]
    assert services["details"]["ports"] == [{"name": "http", "port": 9080, "targetPort": 9080, "protocol": "http"}]
    assert services["details"]["vip"] == "127.150.130.2"  # node-2's capture range, second service
    assert table["namespaces"] == {"bookinfo": {"mode": "none"}}
    assert all(e["inboundCapture"] is None for e in services["reviews"]["endpoints"])  # not in the mesh


def test_ztunnel_snapshot_in_ambient_mode(bookinfo_plan) -> None:
    from lab import mesh
    from lab.orchestrator import _state_document

    state = _state_document(bookinfo_plan, "bookinfo.yaml", "running", None)
    state["namespaces"]["bookinfo"]["mode"] = "ambient"
    snap = mesh.ztunnel_snapshot(state, "node-3", {"peerAuthentications": [], "authorizationPolicies": []}, 60)
    workloads = {w["name"]: w for w in snap["workloads"]}
    assert workloads["reviews-v2"]["inboundCapture"] == "127.150.131.100"  # node-3, slot 0
    assert workloads["details-v1"]["inboundCapture"] is None  # not on this node
    assert workloads["details-v1"]["nodeAddress"] == "127.150.2.1" and workloads["details-v1"]["hbonePort"] == 15008
    assert workloads["reviews-v2"]["identity"] == "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews"
    ratings = next(s for s in snap["services"] if s["name"] == "ratings")
    assert ratings["vip"] == "127.150.131.4" and ratings["endpoints"] == ["ratings-v1"]
    assert ratings["hostname"] == "ratings.bookinfo.svc.cluster.local"
    assert snap["certTtlSeconds"] == 60 and snap["nodeAddress"] == "127.150.3.1"
    assert mesh.node_identities(state)["node-1"] == {"spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage"}


def test_command_workloads_run_through_the_shell(tmp_path: Path) -> None:
    from lab.topology.loader import parse_topology

    topo = parse_topology("""
name: web
nodes: [{name: n1}]
namespaces: [{name: web}]
services:
  - name: files
    namespace: web
    ports: [{port: 8000}]
    workloads:
      - name: files-v1
        node: n1
        run: {command: "python3 -m http.server $MESH_PORT --bind $MESH_BIND_ADDR", env: {GREETING: hi}}
""", "web.yaml")
    plan = plan_lab(topo, "127.151.0.0/16", "web", lambda n: AGENT)
    spec = plan.processes["n1"][0]
    assert spec.argv == ("sh", "-c", "python3 -m http.server $MESH_PORT --bind $MESH_BIND_ADDR")
    assert spec.env["GREETING"] == "hi" and spec.env["MESH_PORT"] == "8000"


def test_docker_nodes_get_addresses_on_the_lab_network_and_local_ones_keep_the_block() -> None:
    from dataclasses import replace

    from lab.controlplane.bootstrap import channel_addresses, node_channel_address

    topo = load_topology(TOPOLOGIES / "bookinfo.yaml")
    nodes = [replace(n, provider="docker") if n.name != "node-1" else n for n in topo.nodes]
    plan = plan_lab(replace(topo, nodes=nodes), "127.150.0.0/16", "bookinfo", lambda n: AGENT, "10.210.7.0/24")
    addresses = {n.name: n.address for n in plan.nodes}
    assert addresses == {"node-1": "127.150.1.1", "node-2": "10.210.7.3", "node-3": "10.210.7.4"}
    assert plan.nodes[1].settings["docker"] == {"subnet": "10.210.7.0/24"}
    assert "docker" not in plan.nodes[0].settings
    assert plan.placement("productpage-v1").address == "127.150.1.10"
    assert [plan.placement(w).address for w in ("details-v1", "reviews-v1", "reviews-v2")] == [
        "10.210.7.32", "10.210.7.33", "10.210.7.34"]
    state = {"block": "127.150.0.0/16", "docker": {"subnet": "10.210.7.0/24", "gateway": "10.210.7.1"},
             "nodes": {"node-1": {"provider": "local"}, "node-2": {"provider": "docker"}}}
    assert node_channel_address(state, "node-1") == "127.150.0.1"
    assert node_channel_address(state, "node-2") == "10.210.7.1"
    assert channel_addresses(state) == ["10.210.7.1", "127.150.0.1"]
