"""`meshlab bench scale`: a generated N-node × M-workload ambient lab on the local provider.

Measures the time `up` takes, the control plane's memory (RSS and peak), and how long a
config change takes to be ACKed by every agent: each change applies a DENY
AuthorizationPolicy for a principal that does not exist (so traffic is unaffected), and
the lab API's apply answers once every agent runs the new version (checked against
proxy-status). Workloads are `sleep infinity` processes selected by M services, so the
per-node cost is the ztunnel and the supervisor, not demo apps.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from lab.bench import procstat
from lab.bench.benchlab import BenchLab, require_local
from lab.bench.report import machine
from lab.controlplane.launch import running_pid
from lab.errors import LabError
from lab.state import lab_dir

NAMESPACE = "scale"
MAX_NODES = 120  # the local provider's capture ranges (127.<b>.<129+i>.0/24) stop at 126 nodes
MAX_WORKLOADS = 100

POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: bench-scale
  namespace: scale
spec:
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/nowhere/sa/change-{n}"]
"""


def scale_topology(nodes: int, workloads: int) -> dict[str, Any]:
    """N nodes, M `sleep infinity` workloads on each, M services selecting one workload per node each."""
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"--nodes: {nodes} is out of range (1..{MAX_NODES} on the local provider)")
    if not 1 <= workloads <= MAX_WORKLOADS:
        raise ValueError(f"--workloads: {workloads} is out of range (1..{MAX_WORKLOADS} per node)")
    return {
        "name": "bench-scale",
        "nodes": [{"name": f"node-{k}"} for k in range(1, nodes + 1)],
        "namespaces": [{"name": NAMESPACE, "mode": "ambient"}],
        "services": [{"name": f"svc-{i}", "namespace": NAMESPACE, "ports": [{"port": 8080}],
                      "selector": {"tier": f"app-{i}"}} for i in range(1, workloads + 1)],
        "workloads": [{"name": f"w-{k}-{i}", "namespace": NAMESPACE, "node": f"node-{k}",
                       "serviceAccount": f"app-{i}", "labels": {"tier": f"app-{i}"},
                       "run": {"command": ["sleep", "infinity"]}}
                      for k in range(1, nodes + 1) for i in range(1, workloads + 1)],
    }


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))]


def run_scale_bench(nodes: int = 50, workloads: int = 4, changes: int = 20, provider: str = "local",
                    progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Bring the generated lab up, then time `changes` config changes until every agent ACKed them."""
    require_local(provider)
    topology = scale_topology(nodes, workloads)
    if changes < 1:
        raise ValueError("--changes: need at least one config change")
    with ExitStack() as stack:
        progress(f"bringing up {nodes} nodes × {workloads} workloads")
        lab = BenchLab(stack, topology, provider, ready_timeout=max(120.0, nodes * 6.0))
        agents = lab.client.proxy_status()["agents"]
        pid = running_pid(lab_dir(lab.name))
        cp_before = procstat.sample(pid) if pid else None
        seconds: list[float] = []
        for n in range(changes):
            started = time.perf_counter()
            answer = lab.client.call("POST", "/v1/config", {
                "documents": [{"source": "bench-scale-policy.yaml", "text": POLICY.format(n=n)}],
                "namespace": NAMESPACE, "waitSeconds": 30})
            elapsed = time.perf_counter() - started
            status = lab.client.proxy_status()
            behind = [a["agent"] for a in status["agents"] if a["acked"] != answer["version"]]
            if not answer["synced"] or behind:
                raise LabError(f"bench scale: config version {answer['version']} not ACKed within 30 s by "
                               f"{', '.join(behind[:5]) or 'some agents'}")
            seconds.append(elapsed)
        cp_after = procstat.sample(pid) if pid else None
    ms = [s * 1000 for s in seconds]
    return {
        "suite": "scale", "machine": machine(), "nodes": nodes, "workloads_per_node": workloads,
        "agents": len(agents), "up_s": round(lab.up_seconds, 2), "up_retries": lab.up_retries,
        "control_plane": {
            "rss_mb": round(cp_after.rss_bytes / 2**20, 1) if cp_after else None,
            "peak_rss_mb": round(cp_after.peak_rss_bytes / 2**20, 1) if cp_after else None,
            "cpu_s_per_change": round((cp_after.cpu_s - cp_before.cpu_s) / changes, 4)
            if cp_after and cp_before else None},
        "config_ack_ms": {"changes": changes, "p50": round(statistics.median(ms), 1),
                          "p99": round(_percentile(ms, 99), 1), "max": round(max(ms), 1)},
    }


def format_scale(result: dict[str, Any]) -> str:
    cp, ack = result["control_plane"], result["config_ack_ms"]
    return "\n".join([
        f"scale: {result['nodes']} nodes × {result['workloads_per_node']} workloads, {result['agents']} agents",
        f"  up in {result['up_s']} s{' (after a retry)' if result.get('up_retries') else ''}; control plane RSS {cp['rss_mb']} MB (peak {cp['peak_rss_mb']} MB), "
        f"{cp['cpu_s_per_change']} CPU s per change",
        f"  config change ACKed by every agent: p50 {ack['p50']} ms, p99 {ack['p99']} ms, max {ack['max']} ms "
        f"over {ack['changes']} changes",
    ])
