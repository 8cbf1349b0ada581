"""Waypoints and sidecars in the lab state, and what the agents are told about them (pure)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from agents.node.resolver import Resolver
from agents.proxy.view import MeshView
from agents.ztunnel.config import ConfigError, parse_snapshot
from lab import dataplane, mesh
from lab.errors import LabError
from lab.orchestrator import _state_document
from lab.plan import plan_lab
from lab.topology.loader import load_topology, parse_topology

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"
AGENT = ("python3", "agents.pyz")
NO_POLICY: dict = {"peerAuthentications": [], "authorizationPolicies": []}


@pytest.fixture
def state() -> dict:
    plan = plan_lab(load_topology(TOPOLOGIES / "bookinfo.yaml"), "127.150.0.0/16", "bookinfo", lambda n: AGENT)
    return _state_document(plan, "bookinfo.yaml", "running", None)


def test_a_namespace_waypoint_is_placed_once_and_kept(state: dict) -> None:
    entry = dataplane.add_waypoint(state, "bookinfo")
    assert entry == {"name": "waypoint", "namespace": "bookinfo", "service": None, "node": "node-1",
                     "address": "127.150.1.2", "identity": "spiffe://cluster.local/ns/bookinfo/sa/waypoint"}
    assert dataplane.add_waypoint(state, "bookinfo") is entry  # idempotent
    reviews = dataplane.add_waypoint(state, "bookinfo", "reviews")
    assert reviews["name"] == "reviews-waypoint" and reviews["node"] == "node-2"
    assert reviews["address"] == "127.150.2.2"
    assert dataplane.remove_waypoint(state, "bookinfo") == entry
    again = dataplane.add_waypoint(state, "bookinfo")
    assert again["address"] == "127.150.1.2"


def test_waypoint_errors_name_what_is_wrong(state: dict) -> None:
    with pytest.raises(LabError, match="no namespace 'nope'"):
        dataplane.add_waypoint(state, "nope")
    with pytest.raises(LabError, match=r"no service 'nope' in namespace 'bookinfo' \(services: details, "):
        dataplane.add_waypoint(state, "bookinfo", "nope")


def test_services_use_their_own_waypoint_else_the_namespace_one_only_in_ambient(state: dict) -> None:
    dataplane.add_waypoint(state, "bookinfo")
    dataplane.add_waypoint(state, "bookinfo", "reviews")
    assert dataplane.waypoint_of(state, "ratings.bookinfo") is None  # mode none
    state["namespaces"]["bookinfo"]["mode"] = "ambient"
    assert dataplane.waypoint_of(state, "ratings.bookinfo")["name"] == "waypoint"
    assert dataplane.waypoint_of(state, "reviews.bookinfo")["name"] == "reviews-waypoint"
    snapshot = mesh.ztunnel_snapshot(state, "node-3", NO_POLICY, 3600)
    refs = {s["name"]: s["waypoint"] for s in snapshot["services"]}
    assert refs["ratings"]["address"] == "127.150.1.2" and refs["reviews"]["address"] == "127.150.2.2"
    parsed = parse_snapshot(snapshot, "node-3")
    assert {s.name: s.waypoint.identity for s in parsed.services}["reviews"].endswith("/sa/reviews-waypoint")
    state["namespaces"]["bookinfo"]["mode"] = "sidecar"  # sidecars do their own L7
    assert all(s["waypoint"] is None for s in mesh.ztunnel_snapshot(state, "node-3", NO_POLICY, 3600)["services"])


def test_the_ca_lets_a_node_ask_for_its_waypoints_identity(state: dict) -> None:
    dataplane.add_waypoint(state, "bookinfo", "ratings")
    identities = mesh.node_identities(state)
    assert "spiffe://cluster.local/ns/bookinfo/sa/ratings-waypoint" in identities["node-3"]
    assert "spiffe://cluster.local/ns/bookinfo/sa/ratings-waypoint" not in identities["node-1"]


def test_sidecar_workloads_are_reached_at_their_own_address_and_through_their_sidecar(state: dict) -> None:
    state["namespaces"]["bookinfo"]["mode"] = "sidecar"
    reviews = state["workloads"]["reviews-v1"]
    snapshot = mesh.ztunnel_snapshot(state, "node-1", NO_POLICY, 3600)
    entry = next(w for w in snapshot["workloads"] if w["name"] == "reviews-v1")
    assert entry["hboneAddress"] == reviews["address"] and entry["inboundCapture"] is None
    assert parse_snapshot(snapshot, "node-1").by_name[("bookinfo", "reviews-v1")].hbone_target == \
        (reviews["address"], 15008)
    table = mesh.resolver_table(state, "node-2")
    assert table["sidecars"] == {reviews["address"]: reviews["sidecarAddress"],
                                 state["workloads"]["details-v1"]["address"]:
                                     state["workloads"]["details-v1"]["sidecarAddress"]}
    resolver = Resolver(table)
    answer = resolver.resolve("ratings", 9080, "bookinfo", reviews["address"])
    assert (answer.address, answer.port, answer.via) == (reviews["sidecarAddress"], 9080, "sidecar")
    outside = resolver.resolve("reviews", 9080, "default", "127.0.0.1")
    assert outside.via == "sidecar-inbound"


def test_sidecar_and_waypoint_processes(state: dict) -> None:
    entry = dataplane.add_waypoint(state, "bookinfo")
    spec = dataplane.waypoint_process(entry, "127.150.0.1:15012", AGENT)
    assert spec.name == "waypoint-bookinfo-waypoint" and spec.ready_tcp == ("127.150.1.2", 15021)
    assert spec.argv[2:9] == ("waypoint", "--node", "node-1", "--namespace", "bookinfo", "--name", "waypoint")
    sidecar = dataplane.sidecar_process(state, "ratings-v1", "127.150.0.1:15012", AGENT)
    assert sidecar.name == "sidecar-ratings-v1" and "--workload" in sidecar.argv
    ssh = copy.deepcopy(state)
    ssh["workloads"]["ratings-v1"]["sidecarAddress"] = ""
    ssh["nodes"]["node-3"]["provider"] = "ssh"
    with pytest.raises(LabError, match=r"workload ratings-v1: sidecars run on .* only for now \(node node-3 is ssh\)"):
        dataplane.sidecar_process(ssh, "ratings-v1", "x", AGENT)


def test_a_waypoint_snapshot_and_its_view(state: dict) -> None:
    state["namespaces"]["bookinfo"]["mode"] = "ambient"
    entry = dataplane.add_waypoint(state, "bookinfo")
    raw = mesh.waypoint_snapshot(state, entry, {**NO_POLICY, "routeTables": {}, "destinationRules": {}}, 3600)
    view = MeshView(parse_snapshot(raw, "node-1"), "waypoint")
    service, port = view.service_by_authority("reviews.bookinfo.svc.cluster.local:9080")
    assert (service.name, port) == ("reviews", 9080)
    assert view.service_for("reviews:9080", 9080) == "reviews.bookinfo"
    assert view.service_for("ratings.bookinfo", 9080) == "ratings.bookinfo"
    assert view.service_for("nowhere:9080", 9080) == ""
    assert {e["workload"] for e in view.endpoints("reviews.bookinfo", 9080)} == {"reviews-v1", "reviews-v2",
                                                                                  "reviews-v3"}
    with pytest.raises(ConfigError, match="not for a sidecar"):
        MeshView(parse_snapshot(raw, "node-1"), "sidecar")


def test_services_with_a_selector_pick_workloads_by_label() -> None:
    text = (TOPOLOGIES / "bookinfo.yaml").read_text() + """
  - name: reviews-v2-only
    namespace: bookinfo
    ports: [{port: 9080}]
    selector: {app: reviews, version: v2}
"""
    text = text.replace("\nworkloads:", "\nworkloads_unused:") if "\nworkloads:" in text else text
    topology = parse_topology(text.encode(), "extra.yaml")
    plan = plan_lab(topology, "127.150.0.0/16", "bookinfo", lambda n: AGENT)
    doc = _state_document(plan, "extra.yaml", "running", None)
    assert mesh.endpoints_of(doc, "reviews-v2-only.bookinfo") == ["reviews-v2"]
    assert mesh.endpoints_of(doc, "reviews.bookinfo") == ["reviews-v1", "reviews-v2", "reviews-v3"]


def test_a_selector_with_workloads_is_refused_with_its_line() -> None:
    text = (TOPOLOGIES / "echo.yaml").read_text().replace("    workloads:\n", "    selector: {app: x}\n    workloads:\n", 1)
    with pytest.raises(Exception, match=r"selector.*give either workloads or a selector, not both"):
        parse_topology(text.encode(), "bad.yaml")
