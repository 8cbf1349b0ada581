"""The cost model: a topology's data-plane memory and CPU in sidecar mode versus ambient mode.

One lab of the topology (bookinfo by default, plus an idle `bench-client` workload to
send from) is measured twice under the same bounded load: in ambient mode with one
waypoint per namespace (L7 in both modes, so the comparison is like for like), then in
sidecar mode. The data plane is every ztunnel and waypoint in the first case and every
sidecar in the second. From the per-proxy figures the report projects one node with N
meshed workloads:

  memory  sidecar: N × (mean sidecar RSS)
          ambient: one ztunnel + (waypoints per node, as measured) × waypoint RSS
  CPU     both:    N × (data-plane CPU seconds per second per workload, as measured)
          (CPU follows the traffic, not the proxy count; memory is where the modes differ)
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from lab.bench import svg
from lab.bench.benchlab import BenchLab, require_local
from lab.bench.report import machine, table
from lab.errors import LabError

CLIENT = "bench-client"
PROJECTION = (1, 2, 4, 8, 16, 32, 64)


def cost_topology(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The topology with an idle client workload added; its meshed namespaces."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LabError(f"bench cost: cannot read topology {path}: {exc}") from None
    if not isinstance(doc, dict) or not doc.get("services"):
        raise LabError(f"bench cost: topology {path} has no services to send load to")
    namespaces = sorted({s["namespace"] for s in doc["services"]})
    first = doc["services"][0]
    doc["name"] = f"bench-cost-{doc.get('name', 'lab')}"
    doc["workloads"] = list(doc.get("workloads") or []) + [{
        "name": CLIENT, "namespace": first["namespace"], "node": doc["nodes"][0]["name"],
        "serviceAccount": CLIENT, "run": {"demo": "sleep"}}]
    return doc, namespaces


def default_target(doc: dict[str, Any]) -> str:
    """Bookinfo's front page, or the first service's first port."""
    names = {s["name"]: s for s in doc["services"]}
    if "productpage" in names:
        return "productpage:9080/productpage"
    first = doc["services"][0]
    return f"{first['name']}:{first['ports'][0]['port']}/"


def _measure(lab: BenchLab, roles: tuple[str, ...], target: str, qps: float, duration_s: float) -> dict[str, Any]:
    lab.load(target, CLIENT, connections=4, count=50, duration_s=10.0)  # warm-up: connections and certificates
    before = lab.processes(roles)
    report = lab.load(target, CLIENT, qps=qps, connections=8, duration_s=duration_s)
    wall = report["duration_s"]  # the load's own span, without the load generator's start-up
    after = lab.processes(roles)
    procs = {}
    for name, a in after.items():
        cpu = a["cpu_s"] - before[name]["cpu_s"] if name in before else a["cpu_s"]
        procs[name] = {"role": a["role"], "rss_mb": round(a["rss_bytes"] / 2**20, 1),
                       "peak_rss_mb": round(a["peak_rss_bytes"] / 2**20, 1), "cpu_s": round(cpu, 3)}
    by_role: dict[str, Any] = {}
    for role in roles:
        mine = [p for p in procs.values() if p["role"] == role]
        if mine:
            by_role[role] = {"count": len(mine), "mean_rss_mb": round(sum(p["rss_mb"] for p in mine) / len(mine), 1),
                             "cpu_s": round(sum(p["cpu_s"] for p in mine), 3)}
    requests = report["count"] - sum(report["errors"].values())
    total_cpu = sum(p["cpu_s"] for p in procs.values())
    return {"requests": requests, "rps": report["qps"], "errors": sum(report["errors"].values()),
            "latency_ms": {k: report["latency_ms"][k] for k in ("p50", "p90", "p99")},
            "seconds": round(wall, 2), "proxies": procs, "roles": by_role,
            "total_rss_mb": round(sum(p["rss_mb"] for p in procs.values()), 1),
            "total_cpu_s": round(total_cpu, 3),
            "cpu_s_per_1000": round(total_cpu / requests * 1000, 4) if requests else None}


def run_cost_bench(topology: Path, qps: float = 20.0, duration_s: float = 5.0, target: str | None = None,
                   plot: Path | None = None, provider: str = "local",
                   progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Measure both modes under the same load, project to N workloads per node, write the plot."""
    require_local(provider)
    if qps <= 0:
        raise ValueError("--qps: the cost model needs a fixed rate above 0")
    doc, namespaces = cost_topology(topology)
    target = target or default_target(doc)
    modes: dict[str, Any] = {}
    with ExitStack() as stack:
        progress(f"bringing up {topology.name} for the cost model")
        lab = BenchLab(stack, doc, provider)
        meshed = sum(1 for w in lab.state["workloads"].values() if w["namespace"] in namespaces)
        for ns in namespaces:
            lab.set_mode(ns, "ambient")
            lab.set_waypoint(ns, True)
        progress("ambient mode (ztunnels + waypoints) under load")
        modes["ambient"] = _measure(lab, ("ztunnel", "waypoint"), target, qps, duration_s)
        for ns in namespaces:
            lab.set_waypoint(ns, False)
            lab.set_mode(ns, "sidecar")
        progress("sidecar mode under load")
        modes["sidecar"] = _measure(lab, ("sidecar",), target, qps, duration_s)
        nodes = len(lab.state["nodes"])
    result = {"suite": "cost", "machine": machine(), "topology": str(topology), "target": target, "qps": qps,
              "duration_s": duration_s, "nodes": nodes, "meshed_workloads": meshed, "modes": modes,
              "projection": project(modes, nodes, meshed)}
    if plot is not None:
        write_plot(result, plot)
        result["plot"] = str(plot)
    return result


def project(modes: dict[str, Any], nodes: int, workloads: int) -> dict[str, Any]:
    """Per node with N meshed workloads: data-plane MB and CPU s/s in each mode (see the module docstring)."""
    amb, side = modes["ambient"]["roles"], modes["sidecar"]["roles"]
    zt = amb.get("ztunnel", {"mean_rss_mb": 0.0, "count": 0})
    wp = amb.get("waypoint", {"mean_rss_mb": 0.0, "count": 0})
    sc = side.get("sidecar", {"mean_rss_mb": 0.0})
    per_workload_cpu = {m: modes[m]["total_cpu_s"] / modes[m]["seconds"] / max(workloads, 1)
                        for m in ("ambient", "sidecar")}
    waypoints_per_node = wp["count"] / max(nodes, 1)
    rows = []
    for n in PROJECTION:
        rows.append({"workloads": n,
                     "sidecar_mb": round(n * sc["mean_rss_mb"], 1),
                     "ambient_mb": round(zt["mean_rss_mb"] + waypoints_per_node * wp["mean_rss_mb"], 1),
                     "sidecar_cpu": round(n * per_workload_cpu["sidecar"], 4),
                     "ambient_cpu": round(n * per_workload_cpu["ambient"], 4)})
    return {"per_node": rows, "sidecar_rss_mb": sc["mean_rss_mb"], "ztunnel_rss_mb": zt["mean_rss_mb"],
            "waypoint_rss_mb": wp["mean_rss_mb"], "waypoints_per_node": round(waypoints_per_node, 3),
            "cpu_s_per_s_per_workload": {m: round(v, 5) for m, v in per_workload_cpu.items()}}


def write_plot(result: dict[str, Any], path: Path) -> None:
    rows = result["projection"]["per_node"]
    panels = [
        svg.Panel("data-plane memory per node", "meshed workloads per node", "MB (RSS)",
                  {"sidecar": [(r["workloads"], r["sidecar_mb"]) for r in rows],
                   "ambient": [(r["workloads"], r["ambient_mb"]) for r in rows]}),
        svg.Panel(f"data-plane CPU per node at {result['qps']:g} rps", "meshed workloads per node", "CPU s per s",
                  {"sidecar": [(r["workloads"], r["sidecar_cpu"]) for r in rows],
                   "ambient": [(r["workloads"], r["ambient_cpu"]) for r in rows]}),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(svg.render(panels))


def format_cost(result: dict[str, Any]) -> str:
    modes = result["modes"]
    head = (f"cost model: {Path(result['topology']).name}, {result['nodes']} nodes, {result['meshed_workloads']} "
            f"meshed workloads, {result['target']} at {result['qps']:g} rps for {result['duration_s']:g} s")
    measured = table(["mode", "proxies", "total RSS MB", "CPU s", "CPU s/1k req", "rps", "p50 ms", "p99 ms", "errors"],
                     [[m, ", ".join(f"{r['count']} {role}" for role, r in modes[m]["roles"].items()),
                       modes[m]["total_rss_mb"], modes[m]["total_cpu_s"], modes[m]["cpu_s_per_1000"], modes[m]["rps"],
                       modes[m]["latency_ms"]["p50"], modes[m]["latency_ms"]["p99"], modes[m]["errors"]]
                      for m in ("sidecar", "ambient")])
    proj = result["projection"]
    projected = table(["workloads/node", "sidecar MB", "ambient MB", "sidecar CPU s/s", "ambient CPU s/s"],
                      [[r["workloads"], r["sidecar_mb"], r["ambient_mb"], r["sidecar_cpu"], r["ambient_cpu"]]
                       for r in proj["per_node"]])
    lines = [head, measured,
             f"per proxy: sidecar {proj['sidecar_rss_mb']} MB, ztunnel {proj['ztunnel_rss_mb']} MB, "
             f"waypoint {proj['waypoint_rss_mb']} MB ({proj['waypoints_per_node']} per node)",
             "projection to one node:", projected]
    if result.get("plot"):
        lines.append(f"plot: {result['plot']}")
    return "\n".join(lines)
