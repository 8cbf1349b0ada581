"""Bounded load runs started from the lab API: the load generator as a supervised process on a node.

Running it under the node's supervisor (restart `never`) makes a run stoppable
(SIGTERM ends it early, and it still prints its report) and keeps it going if
the control plane restarts. The report is the last JSON line of its log.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from lab.errors import LabError
from lab.handle import Lab, load_origin
from lab.providers.base import ProcessSpec

MAX_DURATION_S = 3600


@dataclass
class LoadRun:
    id: str
    node: str
    target: str
    args: list[str]
    started: float = field(default_factory=time.time)
    state: str = "running"  # running | done | failed | stopped
    result: dict[str, Any] | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "node": self.node, "target": self.target, "args": self.args, "state": self.state,
                "startedAt": self.started, "result": self.result, "error": self.error}


def loadgen_args(body: dict[str, Any]) -> list[str]:
    """Command-line arguments of the load generator from an API request body (always bounded)."""
    args = ["--json", "--qps", str(float(body.get("qps", 10))), "--connections", str(int(body.get("connections", 2))),
            "--duration", str(body.get("duration", "30s"))]
    if body.get("n"):
        args += ["-n", str(int(body["n"]))]
    for h in body.get("headers") or []:
        args += ["--header", str(h)]
    return args


class LoadRuns:
    """The load runs of one lab, by id."""

    def __init__(self, lab: str) -> None:
        self.lab = lab
        self.runs: dict[str, LoadRun] = {}
        self._ids = itertools.count(1)

    async def start(self, state: dict[str, Any], body: dict[str, Any]) -> LoadRun:
        target = str(body.get("target") or "")
        if not target:
            raise LabError("a load run needs a target, e.g. productpage:9080/productpage")
        node, env = load_origin(state, body.get("from"))
        run = LoadRun(f"load-{next(self._ids)}-{int(time.time())}", node, target, loadgen_args(body))
        lab = Lab(self.lab)
        try:
            provider = lab.provider_of(node, state)
            spec = ProcessSpec(name=run.id, argv=(*provider.agent_command(node), "loadgen", target, *run.args),
                               env=env, restart="never", labels={"role": "load"})
            await provider.start_process(node, spec)
        finally:
            await lab.close()
        self.runs[run.id] = run
        return run

    async def stop(self, state: dict[str, Any], run_id: str) -> LoadRun:
        run = self._get(run_id)
        if run.state == "running":
            lab = Lab(self.lab)
            try:
                await lab.provider_of(run.node, state).signal_process(run.node, run.id, 15)
            finally:
                await lab.close()
            run.state = "stopping"
        return run

    async def refresh(self, state: dict[str, Any]) -> list[LoadRun]:
        """Pick up the reports of runs that finished since the last look."""
        pending = [r for r in self.runs.values() if r.state in ("running", "stopping")]
        if not pending:
            return list(self.runs.values())
        lab = Lab(self.lab)
        try:
            for run in pending:
                provider = lab.provider_of(run.node, state)
                status = {p.name: p for p in await provider.list_processes(run.node)}.get(run.id)
                if status is not None and status.state in ("starting", "running"):
                    continue
                run.result = _last_json(await provider.logs(run.node, run.id, tail=50))
                run.state = ("stopped" if run.state == "stopping" else "done") if run.result else "failed"
                if run.result is None:
                    run.error = "the load generator printed no report (see its log)"
                await provider.stop_process(run.node, run.id)  # forget the finished process
        finally:
            await lab.close()
        return list(self.runs.values())

    def _get(self, run_id: str) -> LoadRun:
        if run_id not in self.runs:
            raise LabError(f"no load run '{run_id}' (runs: {', '.join(self.runs) or 'none'})")
        return self.runs[run_id]


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None
