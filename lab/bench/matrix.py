"""`meshlab bench` (and `make bench`): every path, the cost model and the scale check in one run.

Sections of the result: `l4` (one stream's bulk throughput and CPU per GB: direct, the
ztunnel pair, the bare HBONE pair, stunnel), `http` (request latency p50/p90/p99/p99.9
at fixed rates and at the maximum, CPU per 1,000 requests and peak RSS of every proxy:
direct, ztunnel pair, ztunnel + waypoint, sidecar pair, stunnel pair, HAProxy), `cost`
(sidecar versus ambient for a topology) and `scale` (config ACK time on an N-node lab).
`targets` holds the issue's ratios, each against a baseline measured in the same run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab.bench import cost, l4, l7, scale
from lab.bench.report import http_table, machine, machine_line, proxy_table, ratios_lines, table
from lab.errors import LabError

SECTIONS = ("l4", "http", "cost", "scale")
DEFAULT_RATES = ("100", "1000", "max")


def run_matrix(*, duration_s: float = 3.0, rates: tuple[str, ...] = DEFAULT_RATES,
               paths: tuple[str, ...] = l7.HTTP_PATHS, skip: tuple[str, ...] = (),
               topology: Path | None = None, qps: float = 20.0, plot: Path | None = None,
               nodes: int = 50, workloads: int = 4, changes: int = 20, provider: str = "local",
               progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run every section not in `skip`; see the module docstring."""
    bad = [s for s in skip if s not in SECTIONS]
    if bad:
        raise ValueError(f"--skip: unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    l7.check_paths(paths, l7.HTTP_PATHS)
    if not 1 <= nodes <= scale.MAX_NODES or not 1 <= workloads <= scale.MAX_WORKLOADS:
        scale.scale_topology(nodes, workloads)  # raises the clear error
    result: dict[str, Any] = {"suite": "all", "machine": machine(), "duration_s": duration_s, "rates": list(rates),
                              "provider": provider}
    sections: dict[str, Callable[[], dict[str, Any]]] = {
        "l4": lambda: l4.run_l4_bench(duration_s, sizes=(64,), paths=("direct", "ztunnel", "hbone", "stunnel")),
        "http": lambda: l7.run_http_paths(paths, rates, duration_s, provider, lambda s: progress(f"http: {s}")),
        "cost": lambda: cost.run_cost_bench(topology or cost_default_topology(), qps, max(duration_s, 3.0), plot=plot,
                                            provider=provider, progress=lambda s: progress(f"cost: {s}")),
        "scale": lambda: scale.run_scale_bench(nodes, workloads, changes, provider, lambda s: progress(f"scale: {s}")),
    }
    errors = {}
    for name, run in sections.items():
        if name in skip:
            continue
        if name == "l4":
            progress("l4: one stream's throughput (direct, ztunnel pair, HBONE pair, stunnel)")
        try:
            result[name] = run()
        except (LabError, OSError, RuntimeError) as exc:  # one failed section must not throw away the others' figures
            progress(f"{name}: failed: {exc}")
            errors[name] = str(exc)
    if errors:
        result["errors"] = errors
    result["targets"] = targets(result)
    return result


def cost_default_topology() -> Path:
    return Path(__file__).resolve().parent.parent.parent / "topologies" / "bookinfo.yaml"


def _added_p99(http: dict[str, Any], path: str, rate: str) -> float | None:
    try:
        return http[path]["rates"][rate]["latency_ms"]["p99"] - http["direct"]["rates"][rate]["latency_ms"]["p99"]
    except KeyError:
        return None


def _target(name: str, value: float | None, goal: str, met: bool | None, unit: str = "") -> dict[str, Any]:
    return {"name": name, "value": value, "target": goal, "met": met, "unit": unit}


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets as measured in this run (value None when a path did not run)."""
    out = []
    ratios = result.get("l4", {}).get("ratios", {})
    tput = ratios.get("throughput_ztunnel_over_stunnel")
    out.append(_target("ztunnel pair throughput / stunnel's", tput, ">= 1.0", None if tput is None else tput >= 1.0))
    http = result.get("http", {}).get("paths", {})
    rate = "1000" if "1000" in result.get("rates", []) else None
    if rate:
        zt, st = _added_p99(http, "ztunnel", rate), _added_p99(http, "stunnel", rate)
        ratio = round(zt / st, 2) if zt is not None and st and st > 0 else None
        out.append(_target("ztunnel added p99 at 1,000 rps / stunnel's", ratio, "<= 1.5",
                           None if ratio is None else ratio <= 1.5))
    l7r = l7.l7_ratios(http, "max") if "max" in result.get("rates", []) else {}
    wp = l7r.get("waypoint_rps_over_haproxy")
    out.append(_target("waypoint rps / HAProxy's (max rate)", wp, ">= 0.5", None if wp is None else wp >= 0.5))
    if "waypoint_requests_per_cpu_s_over_haproxy" in l7r:
        v = l7r["waypoint_requests_per_cpu_s_over_haproxy"]
        out.append(_target("waypoint requests per CPU s / HAProxy's", v, ">= 0.5 (same goal, CPU-fair)", v >= 0.5))
    zprocs = [p for p in http.get("ztunnel", {}).get("proxies", {}).values()]
    if zprocs:
        rss = max(p["peak_rss_mb"] for p in zprocs)
        cpu = max(p["cpu_s_per_1000"] or 0.0 for p in zprocs)
        out.append(_target("ztunnel peak RSS", rss, "<= 30", rss <= 30, "MB"))
        out.append(_target("ztunnel CPU per 1,000 requests", cpu, "<= 0.1", cpu <= 0.1, "s"))
    sc = result.get("scale")
    if sc:
        p99 = sc["config_ack_ms"]["p99"]
        out.append(_target(f"config change ACKed by all agents, {sc['nodes']} nodes, p99", p99, "<= 1000",
                           p99 <= 1000, "ms"))
    return out


def format_matrix(result: dict[str, Any]) -> str:
    lines = [f"meshlab bench on {machine_line(result['machine'])}"]
    if "l4" in result:
        lines += ["", "== L4: one stream, bulk", l4.format_table(result["l4"])]
    if "http" in result:
        lines += ["", "== HTTP/1.1 keep-alive requests (load generator, coordinated-omission safe)",
                  http_table(result["http"]["paths"], result["rates"]), "",
                  proxy_table(result["http"]["paths"])]
    if "cost" in result:
        lines += ["", "== Cost model: sidecar vs ambient", cost.format_cost(result["cost"])]
    if "scale" in result:
        lines += ["", "== Scale", scale.format_scale(result["scale"])]
    for name, error in result.get("errors", {}).items():
        lines += ["", f"== {name}: FAILED: {error}"]
    if result.get("targets"):
        lines += ["", "== Targets (ratios against baselines measured in this run)",
                  table(["target", "measured", "goal", "met"],
                        [[t["name"], "-" if t["value"] is None else f"{t['value']}{(' ' + t['unit']) if t['unit'] else ''}",
                          t["target"], {True: "yes", False: "NO", None: "-"}[t["met"]]] for t in result["targets"]])]
    note = l7.l7_ratios(result.get("http", {}).get("paths", {})).get("note")
    if note:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def format_l7(result: dict[str, Any]) -> str:
    return "\n".join([f"meshlab bench l7 on {machine_line(result['machine'])}",
                      http_table(result["paths"], result["rates"]), "", proxy_table(result["paths"]),
                      *ratios_lines(result.get("ratios", {}))])
