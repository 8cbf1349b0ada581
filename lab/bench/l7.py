"""HTTP request/response bench: keep-alive requests per second and latency through each mesh path.

One two-node lab (`source` runs the idle `client` workload the load generator runs as,
`destination` runs `upstream-v1`, the fixed-200 server of lab/bench/upstream.py) is
switched between modes so that every path has the same client and the same upstream:

  direct    client → upstream                                     (namespace mode none)
  haproxy   client → HAProxy (HTTP mode, nbthread 1) → upstream    (the C L7 baseline)
  stunnel   client → stunnel → mTLS 1.3 → stunnel → upstream       (the C L4 baseline)
  ztunnel   client → ztunnel → HBONE → ztunnel → upstream          (ambient, L4 only)
  waypoint  client → ztunnel → HBONE → waypoint → HBONE → ztunnel → upstream  (ambient + waypoint)
  sidecar   client → sidecar → HBONE → sidecar → upstream          (sidecar mode)

Each path runs the load generator (coordinated-omission safe) at every rate asked for
(`max` = as fast as it goes), and the CPU seconds and peak RSS of every proxy process
on the path are read before and after, giving CPU per 1,000 requests.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from lab.bench import procstat
from lab.bench.benchlab import BenchLab, require_local
from lab.bench.haproxy import haproxy_binary, start_haproxy
from lab.bench.l4 import _start_stunnel_pair, make_certs, stunnel_binary
from lab.bench.upstream import workload_command
from lab.errors import LabError

L7_PATHS = ("direct", "haproxy", "waypoint", "sidecar")
HTTP_PATHS = ("direct", "haproxy", "stunnel", "ztunnel", "waypoint", "sidecar")
NAMESPACE = "bench"
PORT = 8080
CONNECTIONS = 8  # per fixed-rate run: enough that 1,000 rps is not held back by one connection's round trip
MAX_CONNECTIONS = 32  # at the max rate: enough in flight that a fast proxy is not waiting on the client's turns
WARMUP_REQUESTS = 200

Processes = Callable[[], dict[str, dict[str, Any]]]


def bench_topology(python: str = sys.executable) -> dict[str, Any]:
    """The bench lab: the fixed-200 upstream on one node, the idle client on the other."""
    return {
        "name": "bench-l7",
        "nodes": [{"name": "source"}, {"name": "destination"}],
        "namespaces": [{"name": NAMESPACE, "mode": "none"}],
        "services": [{"name": "upstream", "namespace": NAMESPACE, "ports": [{"port": PORT}],
                      "workloads": [{"name": "upstream-v1", "node": "destination", "serviceAccount": "upstream",
                                     "run": {"command": workload_command(python)}}]}],
        "workloads": [{"name": "client", "namespace": NAMESPACE, "node": "source", "serviceAccount": "client",
                       "run": {"demo": "sleep"}}],
    }


def parse_rates(text: str) -> tuple[str, ...]:
    """`100,1000,max` → ('100', '1000', 'max'); ValueError naming the bad item."""
    rates = tuple(r.strip() for r in text.split(",") if r.strip())
    if not rates:
        raise ValueError("--rates: give at least one rate (e.g. 100,1000,max)")
    for r in rates:
        if r != "max" and not (r.isdigit() and int(r) > 0):
            raise ValueError(f"--rates: {r!r} is not a positive number of requests per second or 'max'")
    return rates


def check_paths(paths: tuple[str, ...], known: tuple[str, ...]) -> None:
    bad = [p for p in paths if p not in known]
    if bad or not paths:
        raise ValueError(f"--paths: unknown path(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(known)}")


# ---------------------------------------------------------------- one path


def _host_processes(pids: dict[str, int]) -> Processes:
    def read() -> dict[str, dict[str, Any]]:
        out = {}
        for name, pid in pids.items():
            s = procstat.sample(pid)
            if s is not None:
                out[name] = {"role": name.split("-")[0], "pid": pid, "cpu_s": s.cpu_s, "rss_bytes": s.rss_bytes,
                             "peak_rss_bytes": s.peak_rss_bytes}
        return out
    return read


def measure_path(lab: BenchLab, target: str, processes: Processes, rates: tuple[str, ...],
                 duration_s: float) -> dict[str, Any]:
    """Warm up, then one load run per rate; latency, rps and the proxies' CPU and peak RSS."""
    lab.load(target, "client", connections=CONNECTIONS, count=WARMUP_REQUESTS, duration_s=10.0)
    before = processes()
    runs: dict[str, Any] = {}
    requests = 0
    for rate in rates:
        start = processes()
        report = lab.load(target, "client", qps=0.0 if rate == "max" else float(rate),
                          connections=MAX_CONNECTIONS if rate == "max" else CONNECTIONS, duration_s=duration_s)
        end = processes()
        errors = sum(report["errors"].values())
        runs[rate] = {"rps": report["qps"], "count": report["count"], "errors": errors,
                      "latency_ms": {k: report["latency_ms"][k] for k in ("p50", "p90", "p99", "p999")}}
        busy = sum(end[n]["cpu_s"] - start[n]["cpu_s"] for n in end if n in start)
        if end and report["duration_s"] > 0:
            runs[rate]["proxy_cpu_per_wall_s"] = round(busy / report["duration_s"], 3)
        requests += report["count"] - errors
    after = processes()
    proxies = {}
    for name, a in after.items():
        cpu = a["cpu_s"] - before[name]["cpu_s"] if name in before else None
        proxies[name] = {"role": a["role"], "cpu_s": None if cpu is None else round(cpu, 3),
                         "cpu_s_per_1000": None if cpu is None or not requests else round(cpu / requests * 1000, 4),
                         "peak_rss_mb": round(a["peak_rss_bytes"] / 2**20, 1)}
    total = [p["cpu_s"] for p in proxies.values() if p["cpu_s"] is not None]
    return {"requests": requests, "rates": runs, "proxies": proxies,
            "proxy_cpu_s_per_1000": round(sum(total) / requests * 1000, 4) if proxies and requests else None}


# ---------------------------------------------------------------- all paths in one lab


def run_http_paths(paths: tuple[str, ...] = L7_PATHS, rates: tuple[str, ...] = ("max",), duration_s: float = 3.0,
                   provider: str = "local", progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Measure `paths` (a subset of HTTP_PATHS) at `rates` in one lab; `{"paths": {...}}`."""
    check_paths(paths, HTTP_PATHS)
    require_local(provider)
    out: dict[str, Any] = {}
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meshlab-bench-l7-")))
        progress("bringing up the bench lab")
        lab = BenchLab(stack, bench_topology(), provider)
        upstream = f"{lab.address('upstream-v1')}:{PORT}"
        mesh_target = f"upstream.{NAMESPACE}:{PORT}/"

        def run(name: str, target: str, processes: Processes) -> None:
            progress(f"measuring {name}")
            try:
                out[name] = measure_path(lab, target, processes, rates, duration_s)
            except LabError as exc:
                out[name] = {"error": str(exc)}

        for name in [p for p in ("direct", "haproxy", "stunnel") if p in paths]:
            with ExitStack() as path_stack:
                if name == "direct":
                    run(name, f"http://{upstream}/", lambda: {})
                elif name == "haproxy":
                    if haproxy_binary() is None:
                        out[name] = {"skipped": "haproxy not installed (scripts/install-bench-tools.sh)"}
                        continue
                    pid, port = start_haproxy(path_stack, folder, upstream)
                    run(name, f"http://127.0.0.1:{port}/", _host_processes({"haproxy": pid}))
                else:
                    if stunnel_binary() is None:
                        out[name] = {"skipped": "stunnel not installed (scripts/install-bench-tools.sh)"}
                        continue
                    if not (folder / "root.pem").exists():
                        make_certs(folder)
                    host, _, port_text = upstream.rpartition(":")
                    pids, port = _start_stunnel_pair(path_stack, folder, int(port_text), host)
                    run(name, f"http://127.0.0.1:{port}/",
                        _host_processes({"stunnel-client": pids[1], "stunnel-server": pids[0]}))
        if {"ztunnel", "waypoint"} & set(paths):
            progress("namespace bench → ambient")
            lab.set_mode(NAMESPACE, "ambient")
            if "ztunnel" in paths:
                run("ztunnel", mesh_target, lambda: lab.processes(("ztunnel",)))
            if "waypoint" in paths:
                lab.set_waypoint(NAMESPACE, True)
                run("waypoint", mesh_target, lambda: lab.processes(("ztunnel", "waypoint")))
                lab.set_waypoint(NAMESPACE, False)
        if "sidecar" in paths:
            progress("namespace bench → sidecar (restarts the workloads with their sidecars)")
            lab.set_mode(NAMESPACE, "sidecar")
            run("sidecar", mesh_target, lambda: lab.processes(("sidecar",)))
    return {"paths": {name: out[name] for name in paths if name in out}}


# ---------------------------------------------------------------- `meshlab bench l7`


def l7_ratios(paths: dict[str, Any], rate: str = "max") -> dict[str, Any]:
    """Waypoint against HAProxy at `rate`: requests per second, and requests per CPU second of the one proxy."""
    way, ha = paths.get("waypoint", {}), paths.get("haproxy", {})
    if rate not in way.get("rates", {}) or rate not in ha.get("rates", {}):
        return {}
    out: dict[str, Any] = {"waypoint_rps_over_haproxy": _div(way["rates"][rate]["rps"], ha["rates"][rate]["rps"])}
    wp_cpu = [p["cpu_s_per_1000"] for p in way["proxies"].values() if p["role"] == "waypoint"]
    ha_cpu = [p["cpu_s_per_1000"] for p in ha["proxies"].values()]
    if wp_cpu and ha_cpu and wp_cpu[0] and ha_cpu[0]:
        # Requests one CPU second of the proxy process serves: fair even when the client is the limit.
        out["waypoint_requests_per_cpu_s_over_haproxy"] = _div(ha_cpu[0], wp_cpu[0])
    busy = ha["rates"][rate].get("proxy_cpu_per_wall_s")
    if busy is not None and busy < 0.9:
        out["note"] = (f"HAProxy was {busy:.0%} busy: the Python load generator, not HAProxy, set its rate, "
                       f"so the rps ratio flatters the waypoint; the CPU ratio is the fairer one")
    return out


def run_l7_bench(duration_s: float = 3.0, paths: tuple[str, ...] = L7_PATHS, rates: tuple[str, ...] = ("max",),
                 provider: str = "local", progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """`meshlab bench l7`: the L7 paths and HAProxy in one run, with the waypoint/HAProxy ratios."""
    from lab.bench.report import machine

    result = {"suite": "l7", "machine": machine(), "duration_s": duration_s, "rates": list(rates),
              **run_http_paths(paths, rates, duration_s, provider, progress)}
    result["ratios"] = l7_ratios(result["paths"], "max" if "max" in rates else rates[-1])
    return result


def _div(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None
