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
from lab.faults.catalogue import check_params
from tui.faultkinds import KINDS, countdown, live_faults, parse_ttl
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


def test_the_faults_panel_offers_exactly_the_labs_fault_kinds() -> None:
    for kind in KINDS:
        theirs = LAB_KINDS[kind.name]
        assert (kind.layer, kind.targets, kind.one_shot) == (theirs.layer, theirs.targets, theirs.one_shot), kind
        assert [(p.name, p.required) for p in kind.params] == [(p.name, p.required) for p in theirs.params], kind
        assert kind.direction == theirs.direction
        # every default the form fills in is one the lab takes
        check_params(kind.name, {p.name: p.default for p in kind.params if p.default})
    assert {k.name for k in KINDS} == set(LAB_KINDS)


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
