"""A throwaway lab for the benchmarks: its own MESHLAB_HOME, brought up and torn down in one `with`.

The bench drives it like a user would (the orchestrator, the lab API client, the load
generator run on a node as a workload) and reads what every proxy process costs.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from contextlib import ExitStack
from typing import Any

import yaml

from lab import orchestrator
from lab.bench import procstat
from lab.client import LabClient
from lab.errors import LabError
from lab.topology.loader import parse_topology

PROXY_ROLES = ("ztunnel", "waypoint", "sidecar")


class BenchLab:
    """One lab of a generated topology, in a temporary MESHLAB_HOME that lives as long as `stack`."""

    def __init__(self, stack: ExitStack, topology: dict[str, Any], provider: str = "local",
                 ready_timeout: float = 120.0, retries: int = 1) -> None:
        self.name = str(topology["name"])
        self.provider = provider
        home = stack.enter_context(tempfile.TemporaryDirectory(prefix="meshlab-bench-home-"))
        old_home = os.environ.get("MESHLAB_HOME")
        os.environ["MESHLAB_HOME"] = home
        stack.callback(lambda: os.environ.__setitem__("MESHLAB_HOME", old_home) if old_home is not None
                       else os.environ.pop("MESHLAB_HOME", None))
        topo = parse_topology(yaml.safe_dump(topology, sort_keys=False), f"{self.name}.yaml")
        stack.callback(lambda: asyncio.run(orchestrator.down(self.name)))
        started = time.monotonic()
        self.up_retries = 0
        while True:
            try:
                self.state = asyncio.run(orchestrator.up(topo, provider=provider, timeout=ready_timeout))
                break
            except LabError:
                # A busy host can miss a start-up deadline; a second `up` reconciles, as a user would run it.
                if self.up_retries >= retries:
                    raise
                self.up_retries += 1
        self.up_seconds = time.monotonic() - started
        self.client = LabClient(self.name, timeout=300.0)

    # -- mesh actions ---------------------------------------------------------
    def set_mode(self, namespace: str, mode: str) -> dict[str, Any]:
        return self.client.set_mode(namespace, mode)

    def set_waypoint(self, namespace: str, enabled: bool) -> dict[str, Any]:
        answer = self.client.set_waypoint(namespace, enabled)
        self.client.wait_synced(timeout=30.0)
        return answer

    def address(self, workload: str) -> str:
        return str(self.state["workloads"][workload]["address"])

    # -- load -----------------------------------------------------------------
    def load(self, target: str, source: str, *, qps: float = 0.0, connections: int = 4,
             duration_s: float = 3.0, count: int | None = None) -> dict[str, Any]:
        """One bounded run of the lab's load generator, as workload `source`; its JSON report."""
        args = ["--qps", f"{qps:g}", "-c", str(connections), "-t", f"{duration_s:g}s", "--timeout", "5s"]
        if count:
            args += ["-n", str(count)]
        return asyncio.run(orchestrator.exec_load(self.name, target, source, args))

    # -- what the proxies cost ------------------------------------------------
    def processes(self, roles: tuple[str, ...] = PROXY_ROLES) -> dict[str, dict[str, Any]]:
        """`node/process` → {role, pid, cpu_s, rss_bytes, peak_rss_bytes} for the processes of `roles`."""
        out: dict[str, dict[str, Any]] = {}
        for p in self.client.usage()["processes"]:
            if p["role"] not in roles:
                continue
            entry = {"role": p["role"], "pid": p["pid"], "cpu_s": float(p["cpuSeconds"]),
                     "rss_bytes": int(p["rssBytes"]), "peak_rss_bytes": int(p["rssBytes"])}
            local = self.provider == "local" and p.get("pid")
            here = procstat.sample(int(p["pid"])) if local else None
            if here is not None:  # /proc has finer CPU ticks and the peak (VmHWM)
                entry.update(cpu_s=here.cpu_s, rss_bytes=here.rss_bytes, peak_rss_bytes=here.peak_rss_bytes)
            out[f"{p['node']}/{p['process']}"] = entry
        return out


def require_local(provider: str) -> None:
    """The bench's baselines and sidecars run on this host: only the local provider is supported for now."""
    if provider != "local":
        raise LabError(f"bench: provider '{provider}' is not supported yet: the C baselines and the sidecars run "
                       f"on this host, so the bench runs on the local provider only (use --provider local)")
