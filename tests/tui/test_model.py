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
from tui.traffic import OUTSIDE, EdgeRow, RateHistory, call_order, edges_of


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
    assert not any(e.has_l7 for e in edges_of(recording["traffic"][-1]))
    waypoint = edge("a", "b", rates={"requestsPerSecond": 3.0}, p50=4.0, p99=20.0, errorRate=0.5)
    assert waypoint.has_l7 and waypoint.error_rate == 0.5


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
    inbound = [e for e in entries if e.matches("ratings INBOUND")]
    assert inbound and all(e.destination == "ratings-v1" and e.direction == "inbound" for e in inbound)
    lines = agent_lines(recording["logs"]["node-1"])
    assert any("config version" in ln for ln in lines) and not any(ln.startswith("{") for ln in lines)


def test_certificate_rotation_is_at_half_life_from_arrival(recording: dict[str, Any]) -> None:
    (cert,) = certificates_for(recording["certs"], "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage",
                               "node-1")
    assert units.span(cert.rotation_at - FROZEN_NOW) == "10h 59m"  # the agent logged renewal at 21:59:41
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
    assert [a.name for a in mesh.nodes[0].agents] == ["ztunnel"]  # the load run is not an agent
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
