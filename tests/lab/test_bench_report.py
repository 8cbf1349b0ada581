"""The bench's pieces without a lab: upstream, HAProxy baseline, plot, compare, projections, bad options."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from contextlib import ExitStack
from pathlib import Path

import pytest

from lab.bench import cost, l7, matrix, report, scale, svg
from lab.bench.haproxy import haproxy_binary, start_haproxy
from lab.errors import LabError
from tests.support import ROOT, meshlab


@pytest.fixture
def upstream():
    """The bench's fixed-200 server in its own process, as a workload runs it (`python -c SOURCE`)."""
    from lab.bench.upstream import workload_command

    env = dict(os.environ, MESH_BIND_ADDR="127.0.0.1", MESH_PORT="0")
    proc = subprocess.Popen(workload_command(), stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        yield int(json.loads(proc.stdout.readline())["port"])
    finally:
        proc.terminate()
        proc.wait(5)
        proc.stdout.close()


def _exchange(port: int, data: bytes, until: bytes, host: str = "127.0.0.1") -> bytes:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(data)
        got = b""
        while got.count(until) < data.count(b"GET ") + data.count(b"POST ") and (chunk := s.recv(65536)):
            got += chunk
        return got


def test_upstream_answers_pipelined_requests_and_skips_bodies(upstream: int) -> None:
    requests = (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
                b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
                b"GET /y HTTP/1.1\r\nHost: a\r\n\r\n")
    answer = _exchange(upstream, requests, b"ok\n")
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 3 and answer.endswith(b"ok\n")


def test_upstream_refuses_chunked_bodies_with_501(upstream: int) -> None:
    with socket.create_connection(("127.0.0.1", upstream), timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 501 ") and s.recv(4096) == b""


def test_haproxy_baseline_forwards_keep_alive_requests(upstream: int, tmp_path: Path) -> None:
    if haproxy_binary() is None:
        assert not os.environ.get("CI"), "CI installs haproxy (scripts/install-bench-tools.sh)"
        pytest.skip("haproxy not installed (scripts/install-bench-tools.sh)")
    with ExitStack() as stack:
        pid, port = start_haproxy(stack, tmp_path, f"127.0.0.1:{upstream}")
        assert pid > 0
        answer = _exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 3, b"ok\n")
        assert answer.count(b" 200 ") == 3
    assert "nbthread 1" in (tmp_path / "haproxy.cfg").read_text()


def test_plot_is_valid_svg_with_one_line_per_series(tmp_path: Path) -> None:
    doc = svg.render([svg.Panel("memory", "workloads", "MB", {"sidecar": [(1, 46.0), (64, 2900.0)],
                                                                "ambient": [(1, 70.0), (64, 70.0)]}),
                      svg.Panel("cpu & more <x>", "workloads", "s/s", {"a": [(0, 0.0), (2, 0.004)]})])
    root = ET.fromstring(doc)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    lines = root.findall(".//{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 3
    assert svg.nice_ticks(2900.0)[-1] >= 2900.0 and svg.nice_ticks(0.0) == [0.0, 1.0]


def _modes() -> dict:
    def mode(roles: dict, cpu: float) -> dict:
        return {"roles": roles, "total_cpu_s": cpu, "seconds": 2.0}
    return {"ambient": mode({"ztunnel": {"count": 3, "mean_rss_mb": 40.0, "cpu_s": 1.0},
                             "waypoint": {"count": 1, "mean_rss_mb": 60.0, "cpu_s": 1.0}}, 2.0),
            "sidecar": mode({"sidecar": {"count": 6, "mean_rss_mb": 45.0, "cpu_s": 1.2}}, 1.2)}


def test_projection_is_linear_for_sidecars_and_flat_for_ambient_memory(tmp_path: Path) -> None:
    proj = cost.project(_modes(), nodes=3, workloads=6)
    rows = {r["workloads"]: r for r in proj["per_node"]}
    assert rows[8]["sidecar_mb"] == 8 * 45.0
    assert rows[1]["ambient_mb"] == rows[64]["ambient_mb"] == round(40.0 + 60.0 / 3, 1)
    assert rows[4]["sidecar_cpu"] == pytest.approx(4 * 1.2 / 2.0 / 6, abs=1e-4)
    result = {"qps": 20.0, "projection": proj}
    plot = tmp_path / "sub" / "cost.svg"
    cost.write_plot(result, plot)
    assert ET.parse(plot).getroot().tag.endswith("svg")


def _http(rps: dict[str, float], p99: dict[str, float]) -> dict:
    def path(name: str, procs: dict) -> dict:
        rates = {rate: {"rps": rps[name], "count": 100, "errors": 0, "proxy_cpu_per_wall_s": 0.5,
                        "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": p99[name], "p999": 9.0}}
                 for rate in ("1000", "max")}
        return {"requests": 200, "rates": rates, "proxies": procs, "proxy_cpu_s_per_1000": 0.1}
    return {"direct": path("direct", {}),
            "stunnel": path("stunnel", {"stunnel-client": {"role": "stunnel", "cpu_s_per_1000": 0.1,
                                                           "peak_rss_mb": 11.0}}),
            "ztunnel": path("ztunnel", {"a/ztunnel": {"role": "ztunnel", "cpu_s_per_1000": 0.2, "peak_rss_mb": 45.0}}),
            "haproxy": path("haproxy", {"haproxy": {"role": "haproxy", "cpu_s_per_1000": 0.05, "peak_rss_mb": 14.0}}),
            "waypoint": path("waypoint", {"a/waypoint-x": {"role": "waypoint", "cpu_s_per_1000": 0.5,
                                                           "peak_rss_mb": 50.0}})}


def test_targets_are_ratios_against_baselines_of_the_same_run() -> None:
    http = _http({"direct": 3000, "stunnel": 2000, "ztunnel": 1000, "haproxy": 2000, "waypoint": 500},
                 {"direct": 2.0, "stunnel": 4.0, "ztunnel": 5.0, "haproxy": 3.0, "waypoint": 10.0})
    result = {"rates": ["1000", "max"], "http": {"paths": http},
              "l4": {"ratios": {"throughput_ztunnel_over_stunnel": 1.2}},
              "scale": {"nodes": 50, "config_ack_ms": {"p99": 800.0}}}
    got = {t["name"]: t for t in matrix.targets(result)}
    assert got["ztunnel pair throughput / stunnel's"]["met"] is True
    assert got["ztunnel added p99 at 1,000 rps / stunnel's"]["value"] == 1.5
    assert got["waypoint rps / HAProxy's (max rate)"]["value"] == 0.25
    assert got["waypoint requests per CPU s / HAProxy's"]["value"] == 0.1
    assert got["ztunnel peak RSS"]["met"] is False and got["ztunnel CPU per 1,000 requests"]["met"] is False
    assert got["config change ACKed by all agents, 50 nodes, p99"]["met"] is True
    result["machine"], result["targets"] = report.machine(), list(got.values())
    del result["l4"], result["scale"]  # synthetic stand-ins, not full sections
    text = matrix.format_matrix(result)
    assert "waypoint" in text and "NO" in text and "yes" in text
    assert "HAProxy was 50% busy" in text  # the client, not HAProxy, set HAProxy's rate


def test_compare_shows_the_change_of_every_figure(tmp_path: Path) -> None:
    old = {"suite": "l7", "machine": {"cpus": 2}, "paths": {"waypoint": {"rates": {"max": {"rps": 200.0}}}},
           "ratios": {"waypoint_rps_over_haproxy": 0.1}}
    new = json.loads(json.dumps(old))
    new["paths"]["waypoint"]["rates"]["max"]["rps"] = 300.0
    new["ratios"]["extra"] = 1.0
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    assert report.load_result(str(tmp_path / "new.json")) == new  # JSON round trip
    diff = report.compare(old, new)
    assert diff["changes"]["paths.waypoint.rates.max.rps"] == {"old": 200.0, "new": 300.0, "change_pct": 50.0}
    assert diff["only_new"] == ["ratios.extra"] and "machine.cpus" not in diff["changes"]
    out = meshlab("bench", "--compare", str(tmp_path / "old.json"), "--against", str(tmp_path / "new.json")).stdout
    assert "paths.waypoint.rates.max.rps" in out and "+50.0%" in out
    doc = json.loads(meshlab("bench", "--compare", str(tmp_path / "old.json"), "--against",
                             str(tmp_path / "new.json"), "--json").stdout)
    assert doc["compare"]["changes"]["ratios.waypoint_rps_over_haproxy"]["change_pct"] == 0.0


@pytest.mark.parametrize(("text", "message"), [("", "not JSON"), ("[1]", "not a meshlab bench result"),
                                                ('{"a": 1}', "no 'suite' field")])
def test_compare_names_a_bad_file(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    with pytest.raises(LabError, match=message):
        report.load_result(str(bad))
    with pytest.raises(LabError, match="cannot read"):
        report.load_result(str(tmp_path / "missing.json"))


@pytest.mark.parametrize(("args", "message"), [
    (["l7", "--rates", "100,fast"], "--rates: 'fast' is not a positive number"),
    (["l7", "--paths", "direct,envoy"], "--paths: unknown path(s) envoy"),
    (["scale", "--nodes", "500"], "--nodes: 500 is out of range"),
    (["scale", "--workloads", "0"], "--workloads: 0 is out of range"),
    (["all", "--skip", "gpu"], "--skip: unknown section(s) gpu"),
    (["l7", "--duration", "-1"], "--duration: -1 is out of range"),
    (["cost", "--qps", "0"], "--qps: the cost model needs a fixed rate above 0"),
    (["l7", "--provider", "docker"], "only local is supported|runs on the local provider only"),
    (["--against", "x.json"], "--against NEW.json needs --compare"),
])
def test_bad_options_give_a_clear_error_and_no_traceback(args: list[str], message: str) -> None:
    proc = meshlab("bench", *args, check=False, timeout=60)
    assert proc.returncode in (1, 2), proc.stderr
    assert "Traceback" not in proc.stderr
    assert __import__("re").search(message.replace("(", r"\(").replace(")", r"\)"), proc.stderr), proc.stderr


def test_generated_topologies_validate() -> None:
    from lab.topology.loader import parse_topology
    import yaml

    topo = parse_topology(yaml.safe_dump(scale.scale_topology(3, 2)), "scale.yaml")
    assert len(topo.nodes) == 3 and len(topo.workloads) == 6
    topo = parse_topology(yaml.safe_dump(l7.bench_topology(sys.executable)), "l7.yaml")
    assert {w.name for w in topo.workloads} == {"upstream-v1", "client"}
    doc, namespaces = cost.cost_topology(ROOT / "topologies" / "bookinfo.yaml")
    assert namespaces == ["bookinfo"] and doc["workloads"][-1]["name"] == cost.CLIENT
    assert cost.default_target(doc) == "productpage:9080/productpage"
