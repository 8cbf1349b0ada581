"""Small real runs of the bench suites against labs: every path produces numbers, ratios are computed,
the JSON round-trips through --compare, the plot is a valid SVG. Shapes only: no timing thresholds."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lab.bench import cost, l7, scale
from lab.bench.haproxy import haproxy_binary
from lab.bench.l4 import stunnel_binary
from tests.support import ROOT, meshlab

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def _baselines_installed() -> bool:
    if os.environ.get("CI"):
        assert haproxy_binary() and stunnel_binary(), "CI installs haproxy and stunnel4 (scripts/install-bench-tools.sh)"
    return bool(haproxy_binary() and stunnel_binary())


def test_l7_bench_measures_every_http_path_and_the_waypoint_ratio() -> None:
    baselines = _baselines_installed()
    result = l7.run_l7_bench(0.5, l7.HTTP_PATHS, ("50", "max"))
    paths = result["paths"]
    assert list(paths) == list(l7.HTTP_PATHS)
    measured = [p for p in l7.HTTP_PATHS if baselines or p not in ("haproxy", "stunnel")]
    for name in measured:
        entry = paths[name]
        assert "error" not in entry, (name, entry)
        for rate in ("50", "max"):
            run = entry["rates"][rate]
            assert run["count"] > 0 and run["rps"] > 0 and run["errors"] < run["count"], (name, rate, run)
            lat = run["latency_ms"]
            assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"], (name, lat)
        if name != "direct":
            assert entry["proxies"], name
            for proc in entry["proxies"].values():
                assert proc["cpu_s_per_1000"] is not None and proc["peak_rss_mb"] > 0, (name, proc)
    assert {p["role"] for p in paths["waypoint"]["proxies"].values()} == {"ztunnel", "waypoint"}
    assert {p["role"] for p in paths["sidecar"]["proxies"].values()} == {"sidecar"}
    assert len(paths["sidecar"]["proxies"]) == 2 and len(paths["ztunnel"]["proxies"]) == 2
    if baselines:
        assert result["ratios"]["waypoint_rps_over_haproxy"] > 0
        assert result["ratios"]["waypoint_requests_per_cpu_s_over_haproxy"] > 0
    assert result["machine"]["cpus"] and result["machine"]["python"]


def test_cost_model_measures_both_modes_and_writes_the_plot(tmp_path: Path) -> None:
    plot = tmp_path / "cost.svg"
    result = cost.run_cost_bench(ROOT / "topologies" / "bookinfo.yaml", qps=10, duration_s=1.0, plot=plot)
    ambient, sidecar = result["modes"]["ambient"], result["modes"]["sidecar"]
    assert ambient["roles"]["ztunnel"]["count"] == 3 and ambient["roles"]["waypoint"]["count"] == 1
    assert sidecar["roles"]["sidecar"]["count"] == result["meshed_workloads"] == 7  # 6 bookinfo + the client
    for mode in (ambient, sidecar):
        assert mode["requests"] > 0 and mode["total_rss_mb"] > 0 and mode["cpu_s_per_1000"] is not None
    rows = result["projection"]["per_node"]
    assert [r["workloads"] for r in rows] == list(cost.PROJECTION)
    assert rows[-1]["sidecar_mb"] > rows[0]["sidecar_mb"] and rows[-1]["ambient_mb"] == rows[0]["ambient_mb"]
    assert result["plot"] == str(plot) and ET.parse(plot).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    assert "plot: " + str(plot) in cost.format_cost(result)


def test_scale_bench_times_config_acks_from_every_agent() -> None:
    result = scale.run_scale_bench(nodes=3, workloads=2, changes=3)
    assert result["agents"] == 3 and result["up_s"] > 0
    ack = result["config_ack_ms"]
    assert ack["changes"] == 3 and 0 < ack["p50"] <= ack["p99"] <= ack["max"]
    assert result["control_plane"]["rss_mb"] > 0
    assert "config change ACKed by every agent" in scale.format_scale(result)


def test_bench_verb_writes_json_and_compares_runs(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    proc = meshlab("bench", "--skip", "l4,cost,scale", "--paths", "direct,ztunnel", "--rates", "20,max",
                   "--duration", "0.5", "-o", str(out), timeout=300)
    assert f"wrote {out}" in proc.stdout and "ztunnel" in proc.stdout and "Targets" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["suite"] == "all" and set(doc["http"]["paths"]) == {"direct", "ztunnel"}
    assert any(t["name"] == "ztunnel peak RSS" and t["value"] for t in doc["targets"])
    same = meshlab("bench", "--compare", str(out), "--against", str(out), "--json").stdout
    changes = json.loads(same)["compare"]["changes"]
    assert "http.paths.ztunnel.rates.max.rps" in changes
    assert all(c["change_pct"] in (0.0, None) for c in changes.values())
