"""The TUI's pure parts: call order, rate history, units, access logs, certificates, cost, mesh view, topologies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.tui.recorded_lab import FROZEN_NOW
from tui import units
from tui.accesslog import agent_lines, parse_logs
from tui.certificates import certificates_for
from tui.cost import CostMeter, totals_by_role
from tui.labs import providers, running_labs, topologies
from tui.mesh import MeshRef, MeshView
from tui.screens.config_editor import first_problem_line
from tui.screens.main import traffic_hint
from lab.faults.catalogue import KINDS as LAB_KINDS
from lab.faults.catalogue import check_params, kinds_json
from lab.faults.store import DIRECTIONS
from tests.tui.recorded_lab import RecordedLab
from tui.agents import AgentRef, agent_for, agents_of
from tui.configdump import dump_summary, dump_text
from tui.faultcatalogue import FaultCatalogue
from tui.livefaults import countdown, live_faults, parse_ttl
from tui.quick_actions import WaypointToggle, waypoint_summary, waypoint_toggle
from tui.screens.fault_dialog import fault_summary
from tui.screens.mode_dialog import mode_summary
from tui.traffic import OUTSIDE, EdgeRow, RateHistory, call_order, edges_of, fold_unanswered


def edge(source: str, destination: str, security: str = "mutual_tls", conns: float = 1.0, **extra: Any) -> EdgeRow:
    return EdgeRow.from_json({"source": source, "destination": destination, "service": destination.split("-")[0],
                              "security": security, "rates": {"connectionsOpenedPerSecond": conns}, **extra})


def test_call_order_draws_each_call_tree_from_its_entry() -> None:
    edges = [edge("reviews-v2", "ratings-v1"), edge("productpage-v1", "details-v1"),
             edge("unknown", "productpage-v1", "none"), edge("productpage-v1", "reviews-v2")]
    assert [r.label for r in call_order(edges)] == [
        f"{OUTSIDE} ─▶ productpage-v1", "├─▶ details-v1", "└─▶ reviews-v2", "    └─▶ ratings-v1"]


def test_call_order_places_edges_of_a_cycle_too() -> None:
    rows = call_order([edge("a", "b"), edge("b", "a")])
    assert sorted(r.edge.key for r in rows) == [("a", "b", "b"), ("b", "a", "a")]


def test_l7_fields_show_only_when_an_l7_proxy_reported(recording: dict[str, Any]) -> None:
    edges = {e.key[:2]: e for e in edges_of(recording["traffic"][-1])}
    assert edges[("productpage-v1", "details-v1")].has_l7  # the waypoint reports it
    assert not edges[("productpage-v1", "waypoint")].has_l7  # the ztunnel's hop into the waypoint: TCP only
    waypoint = edge("a", "b", rates={"requestsPerSecond": 3.0}, p50=4.0, p99=20.0, errorRate=0.5)
    assert waypoint.has_l7 and waypoint.error_rate == 0.5


def test_requests_a_waypoint_aborted_fold_into_the_callers_edge(recording: dict[str, Any]) -> None:
    raw = [e["destination"] for e in recording["traffic"][-1]["edges"] if e["source"] == "reviews-v2"]
    assert "unknown" in raw  # the aborts reached no workload
    edges = {e.key[:2]: e for e in edges_of(recording["traffic"][-1])}
    assert ("reviews-v2", "unknown") not in edges
    ratings = edges[("reviews-v2", "ratings-v1")]
    assert dict(ratings.codes).keys() == {"200", "503"} and 0.3 < ratings.errors / ratings.requests < 0.7
    lone = edge("a", "unknown", rates={"requestsPerSecond": 1.0}, requests=5, errors=5, codes={"503": 5})
    assert [e.destination for e in fold_unanswered([lone])] == ["unknown"]  # nothing to fold it into


def test_error_rate_and_codes_over_the_last_ten_polls() -> None:
    history = RateHistory()
    for i in range(15):  # 10 requests a poll; from poll 5 on, half of them fail
        bad = max(0, i - 4) * 5
        history.add([edge("a", "b", requests=10 * (i + 1), errors=bad, codes={"200": 10 * (i + 1) - bad, "503": bad},
                          errorRate=0.5 if bad else 0.0)])
    latest = history.totals[("a", "b", "b")][-1]
    figures = history.window(latest)
    assert figures.requests == 100 and figures.error_rate == pytest.approx(0.5)
    assert figures.codes == (("200", 0.5), ("503", 0.5))
    history.add([edge("a", "b", requests=3, errors=0, codes={"200": 3})])  # the proxy restarted: counts begin again
    assert history.window(history.totals[("a", "b", "b")][-1]).error_rate == 0.0


def test_the_fault_form_is_made_from_the_labs_catalogue() -> None:
    catalogue = FaultCatalogue.from_json({"kinds": kinds_json(), "directions": list(DIRECTIONS)})  # as the route
    assert {k.name for k in catalogue.kinds} == set(LAB_KINDS)
    assert [k.layer for k in catalogue.kinds][:2] == ["l7", "l7"]  # what a learner reaches for first
    for kind in catalogue.kinds:
        theirs = LAB_KINDS[kind.name]
        assert (kind.layer, kind.targets, kind.one_shot, kind.direction) == (
            theirs.layer, theirs.targets, theirs.one_shot, theirs.direction)
        assert [(p.name, p.required) for p in kind.params] == [(p.name, p.required) for p in theirs.params]
        # every value the form fills in (defaults, examples for required fields) is one the lab takes
        check_params(kind.name, {p.name: p.default for p in kind.params if p.default})
    latency, slicer = catalogue.by_name["latency"], catalogue.by_name["slicer"]
    assert [(p.default, p.unit) for p in latency.params] == [("200", "ms"), ("0", "ms")]  # an example, the lab's 0
    assert slicer.params[2].unit == "us" and catalogue.by_name["rotate_root"].params[0].default == "true"
    assert catalogue.slots == 3 and catalogue.directions == ("upstream", "downstream", "both")
    with pytest.raises(ValueError, match="no kinds"):
        FaultCatalogue.from_json({"kinds": []})


def test_the_recorded_catalogue_has_the_labs_kinds_and_parameters() -> None:
    """The snapshots show a recorded answer (help texts may change); re-record when this fails."""
    def shape(kinds: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
        return [(k["name"], [p["name"] for p in k["params"]]) for k in kinds]
    assert shape(RecordedLab().fault_kinds()["kinds"]) == shape(kinds_json())


def test_ttl_and_countdown() -> None:
    assert parse_ttl("") is None and parse_ttl("30s") == 30 and parse_ttl("5m") == 300 and parse_ttl("90") == 90
    for bad in ("soon", "-5s", "0"):
        with pytest.raises(ValueError, match="ttl"):
            parse_ttl(bad)
    assert countdown(None) == "until removed" and countdown(4.2) == "5s" and countdown(125) == "2m05s"


def test_live_faults_and_the_add_summary(recording: dict[str, Any]) -> None:
    abort, latency = live_faults(recording["faults"])
    assert abort.short == "abort ratings.bookinfo percentage=50 status=503" and latency.expires is None
    assert abort.left(FROZEN_NOW) == pytest.approx(abort.expires - FROZEN_NOW)
    answer = {"id": "f3", "kind": "abort", "targetText": "ratings.bookinfo", "params": {"status": 503},
              "created": 100.0, "expires": 160.0, "version": 8}
    assert fault_summary(answer) == "fault f3 added: abort on ratings.bookinfo status=503, expires in 1m00s (config v8)"
    assert "done once" in fault_summary({"kind": "kill_agent", "targetText": "node-1", "oneShot": True})


def test_waypoint_key_acts_on_the_namespace_or_the_service(recording: dict[str, Any]) -> None:
    mesh = MeshView.from_nodes(recording["nodes"])
    (ns,) = mesh.namespaces
    assert ns.waypoint and ns.waypoint_at is not None and ns.waypoint_at.node == "node-1"
    assert waypoint_toggle(mesh, MeshRef("namespace", "bookinfo", "bookinfo")) == WaypointToggle("bookinfo", None,
                                                                                                  False)
    assert waypoint_toggle(mesh, MeshRef("service", "reviews", "bookinfo")) == WaypointToggle("bookinfo", "reviews",
                                                                                               True)
    answer = {"waypoint": {"name": "waypoint", "namespace": "bookinfo", "node": "node-1", "address": "127.1.1.2"},
              "enabled": True, "changed": True, "version": 4}
    assert waypoint_summary(answer).startswith("waypoint bookinfo/waypoint enabled on node-1 at 127.1.1.2")


def test_mode_summary_says_what_restarted_and_what_failed() -> None:
    text = mode_summary({"namespace": "bookinfo", "mode": "sidecar", "previous": "ambient", "changed": True,
                         "version": 7, "synced": True, "seconds": 9.2, "failedRequests": 9,
                         "restarted": ["details-v1", "ratings-v1"]})
    assert text.splitlines() == ["namespace bookinfo: mode ambient → sidecar in 9.2s (config v7, agents synced)",
                                 "restarted 2 workloads: details-v1, ratings-v1",
                                 "⚠ 9 requests failed during the switch"]


def test_rate_history_keeps_a_minute_and_counts_missing_edges_as_idle() -> None:
    history = RateHistory(length=60)
    for i in range(70):
        history.add([edge("a", "b", conns=float(i))] if i < 69 else [])
    series = history.edge_connections(("a", "b", "b"))
    assert len(series) == 60 and series[-1] == 0.0 and series[-2] == 68.0
    assert len(history.total_connections) == 60


def test_units() -> None:
    assert units.rate(0) == "·" and units.rate(25.49) == "25.5" and units.rate(150) == "150"
    assert units.compact_size(13107.2) == "12.8K" and units.size(512) == "512 B"
    assert units.span(43140) == "11h 59m" and units.span(-90) == "1m 30s ago"
    assert units.bars([0, 5, 10], 4, top=10) == " ▁▅█"


def test_access_log_entries_and_agent_lines(recording: dict[str, Any]) -> None:
    entries = parse_logs(recording["logs"])
    assert entries and all(e.mtls for e in entries)
    assert [e.time for e in entries] == sorted(e.time for e in entries)
    inbound = [e for e in entries if e.matches("details INBOUND")]
    assert inbound and all(e.destination == "details-v1" and e.direction == "inbound" for e in inbound)
    lines = agent_lines(recording["logs"]["node-1"])
    assert any("config version" in ln for ln in lines) and not any(ln.startswith("{") for ln in lines)


def test_certificate_rotation_is_at_half_life_from_arrival(recording: dict[str, Any]) -> None:
    (cert,) = certificates_for(recording["certs"], "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage",
                               "node-1")
    assert units.span(cert.rotation_at - FROZEN_NOW) == "11h 56m"  # the agent logged renewal at 23:51:35
    held = certificates_for(recording["certs"], "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews", "node-3")
    assert [c.holder for c in held] == ["ztunnel/node-3", "ztunnel/node-2"]


def test_cost_totals_by_role_and_cpu_percent_between_samples(recording: dict[str, Any]) -> None:
    meter = CostMeter()
    rows, errors = meter.sample(recording["usage"], 100.0)
    assert errors == [] and all(r.cpu_percent is None for r in rows)
    later = {"processes": [{**p, "cpuSeconds": p["cpuSeconds"] + 0.5} for p in recording["usage"]["processes"]]}
    rows, _ = meter.sample(later, 102.0)
    totals = {t.role: t for t in totals_by_role(rows)}
    assert list(totals)[0] == "ztunnel" and totals["ztunnel"].processes == 3
    assert totals["ztunnel"].cpu_percent == pytest.approx(3 * 25.0)


def test_mesh_view_and_what_actions_apply_to(recording: dict[str, Any]) -> None:
    mesh = MeshView.from_nodes(recording["nodes"])
    assert [n.name for n in mesh.nodes] == ["node-1", "node-2", "node-3"]
    assert [a.name for a in mesh.nodes[0].agents] == ["waypoint-bookinfo-waypoint", "ztunnel"]  # not the load run
    assert mesh.fault_target(MeshRef("service", "ratings", "bookinfo")) == "ratings.bookinfo"
    namespace = mesh.namespace_for(None)
    workload = mesh.workload_for(MeshRef("service", "reviews", "bookinfo"))
    node = mesh.node_for(MeshRef("workload", "ratings-v1", "bookinfo", "node-3"))
    assert namespace and workload and node
    assert (namespace.name, workload.name, node.name) == ("bookinfo", "reviews-v1", "node-3")
    assert "press l" in traffic_hint(mesh).lower()


def test_problem_lines_point_the_editor_at_the_first_one() -> None:
    assert first_problem_line(["whole-file problem (editor.yaml)", "spec.x: bad (editor.yaml:7)"]) == 7
    assert first_problem_line(["no location"]) is None


def test_start_screen_choices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "t.yaml").write_text("# A tiny lab: one node\nname: tiny\n")
    (choice,) = topologies([tmp_path])
    assert (choice.name, choice.summary) == ("tiny", "A tiny lab")
    assert [(p.name, bool(p.blocked)) for p in providers("no engine")] == [("local", False), ("docker", True)]
    monkeypatch.setenv("MESHLAB_HOME", str(tmp_path))
    (tmp_path / "labs" / "one").mkdir(parents=True)
    (tmp_path / "labs" / "one" / "state.json").write_text("{}")
    (tmp_path / "labs" / "leftover").mkdir()
    assert running_labs() == ["one"]


def test_p_opens_the_agent_under_the_cursor(recording: dict[str, Any]) -> None:
    mesh = MeshView.from_nodes(recording["nodes"])
    node1 = next(n for n in mesh.nodes if n.name == "node-1")
    assert [a.agent for a in agents_of(mesh, node1)] == ["ztunnel", "waypoint:bookinfo/waypoint"]
    waypoint = AgentRef("waypoint:bookinfo/waypoint", "waypoint-bookinfo-waypoint", "node-1")
    cases = {MeshRef("agent", "waypoint-bookinfo-waypoint", node="node-1"): waypoint,
             MeshRef("namespace", "bookinfo"): waypoint,  # its waypoint
             MeshRef("service", "ratings", "bookinfo"): waypoint,  # the namespace's waypoint serves it
             MeshRef("workload", "ratings-v1", "bookinfo", "node-3"): AgentRef("ztunnel", "ztunnel", "node-3"),
             MeshRef("node", "node-2"): AgentRef("ztunnel", "ztunnel", "node-2")}
    for ref, want in cases.items():
        found = agent_for(mesh, ref)
        assert found is not None and found[1] == want, ref
    assert waypoint.title == "waypoint:bookinfo/waypoint" and AgentRef("ztunnel", "ztunnel", "n").title == "ztunnel/n"


def test_a_workload_with_a_sidecar_opens_its_sidecar(recording: dict[str, Any]) -> None:
    nodes = recording["nodes"]
    nodes["namespaces"]["bookinfo"] = {"mode": "sidecar", "waypoint": False}
    nodes["waypoints"] = {}
    for node in nodes["nodes"].values():
        node["processes"] = [p for p in node["processes"] if p["labels"].get("role") != "waypoint"]
    nodes["nodes"]["node-3"]["processes"].append({"name": "sidecar-ratings-v1", "state": "running", "restarts": 0,
                                                  "labels": {"role": "sidecar", "workload": "ratings-v1"}})
    mesh = MeshView.from_nodes(nodes)
    found = agent_for(mesh, MeshRef("workload", "ratings-v1", "bookinfo", "node-3"))
    assert found is not None and found[1] == AgentRef("sidecar:ratings-v1", "sidecar-ratings-v1", "node-3")
    assert [a.agent for a in agents_of(mesh, found[0])] == ["ztunnel", "sidecar:ratings-v1"]


def test_config_dump_summary_and_text(recording: dict[str, Any]) -> None:
    from rich.console import Console

    def shown(dump: dict[str, Any]) -> str:
        console = Console(width=100, record=True)
        console.print(dump_summary(dump))
        return console.export_text()

    waypoint = recording["configDumps"]["waypoint:bookinfo/waypoint@node-1"]["dump"]
    text = shown(waypoint)
    assert "v7" in text and "namespace bookinfo as spiffe://cluster.local/ns/bookinfo/sa/waypoint" in text
    assert "1 PeerAuthentication" in text and "abort" in text and "connected" in text
    ztunnel = recording["configDumps"]["ztunnel@node-1"]["dump"]
    assert "HBONE 127.105.1.1:15008" in shown(ztunnel) and "1 root" in shown(ztunnel)
    assert "-----BEGIN CERTIFICATE----- … (" in dump_text(ztunnel) and "MII" not in dump_text(ztunnel)
    rejected = {**ztunnel, "rejected": {"version": 8, "error": "ConfigError: bad"}, "snapshot": None}
    assert "no config yet" in shown(rejected) and "v8: ConfigError: bad" in shown(rejected)
