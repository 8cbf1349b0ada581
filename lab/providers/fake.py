"""The fake provider: nodes and processes as in-memory records, for fast tests of the orchestrator.

Nothing runs. A started process is running and ready at once; a test makes it
crash with `fail_process`, which applies the restart policy immediately (no
backoff delay). State lives in a class-level registry shared by every instance
of a lab, like the machines a real provider talks to; `clean` empties it.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from lab.errors import ProvisionError
from lab.providers.base import (ExecResult, NodeInfo, NodeSpec, ProcessSpec, ProcessStatus, Provider,
                                ResourceUsage)

ExecHandler = Callable[[str, list[str], dict[str, str]], ExecResult]


@dataclass
class FakeProcess:
    spec: ProcessSpec
    pid: int | None
    state: str = "running"
    restarts: int = 0
    exit_code: int | None = None
    started_at: float | None = field(default_factory=time.time)
    log: list[str] = field(default_factory=list)

    def status(self) -> ProcessStatus:
        return ProcessStatus(self.spec.name, self.state, self.pid, self.restarts,  # type: ignore[arg-type]
                             self.state == "running", self.exit_code, self.started_at, dict(self.spec.labels))


@dataclass
class FakeNode:
    spec: NodeSpec
    processes: dict[str, FakeProcess] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    execs: list[list[str]] = field(default_factory=list)
    paused: bool = False
    stopped: bool = False
    restore: dict[str, ProcessSpec] = field(default_factory=dict)  # recorded by stop_node


class FakeProvider(Provider):
    """A provider whose nodes exist only in this process's memory."""

    name = "fake"
    registry: ClassVar[dict[str, dict[str, FakeNode]]] = {}  # lab -> node name -> node
    _pids: ClassVar[itertools.count[int]] = itertools.count(10_000)

    def __init__(self, lab: str, lab_dir: Path) -> None:
        super().__init__(lab, lab_dir)
        # Tests may set this to script `exec`; by default a command succeeds with no output.
        self.exec_handler: ExecHandler | None = None

    @property
    def nodes(self) -> dict[str, FakeNode]:
        return self.registry.setdefault(self.lab, {})

    def agent_command(self, node: str) -> tuple[str, ...]:
        return ("python3", "agents.pyz")

    def _node(self, name: str, *, answering: bool = True) -> FakeNode:
        node = self.nodes.get(name)
        if node is None:
            raise ProvisionError(f"no node {name!r} in lab {self.lab!r}")
        if answering and node.paused:
            raise ProvisionError(f"node {name} is paused: its supervisor answers nothing until resumed")
        if answering and node.stopped:
            raise ProvisionError(f"node {name} is stopped: no supervisor runs there")
        return node

    def _process(self, node: str, name: str) -> FakeProcess:
        process = self._node(node).processes.get(name)
        if process is None:
            raise ProvisionError(f"node {node}: no process named {name!r} on node {node}")
        return process

    # -- nodes --------------------------------------------------------------------
    async def create_node(self, spec: NodeSpec, agent_pyz: Path) -> NodeInfo:
        node = self.nodes.get(spec.name)
        if node is None or node.spec.address != spec.address:
            node = self.nodes[spec.name] = FakeNode(spec)
        return await self.node_info(spec.name)

    async def destroy_node(self, name: str) -> None:
        self.nodes.pop(name, None)

    async def node_info(self, name: str) -> NodeInfo:
        node = self._node(name, answering=False)
        state = "stopped" if node.stopped else "paused" if node.paused else "running"
        return NodeInfo(self.lab, name, node.spec.address, state, self.name, {"processes": len(node.processes)})

    # -- files and commands ------------------------------------------------------------
    async def copy_file(self, node: str, src: Path, dest: str) -> None:
        if Path(dest).is_absolute() or ".." in Path(dest).parts:
            raise ProvisionError(f"node {node}: copy destination must be inside the node's folder, not {dest!r}")
        try:
            self._node(node).files[dest] = Path(src).read_bytes()
        except OSError as e:
            raise ProvisionError(f"node {node}: cannot copy {src}: {e}") from None

    async def exec(self, node: str, argv: list[str], env: dict[str, str] | None = None,
                   timeout: float = 60.0) -> ExecResult:
        self._node(node).execs.append(list(argv))
        if self.exec_handler is not None:
            return self.exec_handler(node, list(argv), dict(env or {}))
        return ExecResult(0, "", "")

    # -- supervised processes --------------------------------------------------------------
    async def start_process(self, node: str, spec: ProcessSpec) -> None:
        processes = self._node(node).processes
        self._node(node).restore.pop(spec.name, None)  # started by request: its record is superseded
        current = processes.get(spec.name)
        if current is not None and current.spec == spec and current.state == "running":
            return
        processes[spec.name] = FakeProcess(spec, next(self._pids), log=[f"started {' '.join(spec.argv)}"])

    async def stop_process(self, node: str, name: str) -> None:
        self._process(node, name)
        del self._node(node).processes[name]
        self._node(node).restore.pop(name, None)

    async def signal_process(self, node: str, name: str, signal: int) -> None:
        self._process(node, name).log.append(f"signal {signal}")

    async def list_processes(self, node: str) -> list[ProcessStatus]:
        return [p.status() for _, p in sorted(self._node(node).processes.items())]

    async def logs(self, node: str, name: str, tail: int = 100) -> str:
        lines = self._process(node, name).log[-tail:] if tail > 0 else []
        return "".join(f"{line}\n" for line in lines)

    async def resource_usage(self, node: str) -> dict[str, ResourceUsage]:
        return {name: ResourceUsage(p.pid, 1 << 20, 0.0)
                for name, p in self._node(node).processes.items() if p.pid is not None}

    async def push_config(self, node: str, section: str, value: Any) -> None:
        self._node(node).config[section] = value

    def fail_process(self, node: str, name: str, exit_code: int) -> None:
        """Make a process exit with `exit_code` now; its restart policy applies at once."""
        process = self._process(node, name)
        process.exit_code = exit_code
        process.log.append(f"exited with code {exit_code}")
        policy = process.spec.restart
        if policy == "never" or (policy == "on-failure" and exit_code == 0):
            process.state, process.pid = ("exited" if exit_code == 0 else "failed"), None
            return
        process.restarts += 1
        process.pid, process.started_at, process.state = next(self._pids), time.time(), "running"
        process.log.append("started again")

    # -- node faults ---------------------------------------------------------------------------
    async def pause_node(self, node: str) -> None:
        self._node(node, answering=False).paused = True

    async def resume_node(self, node: str) -> None:
        self._node(node, answering=False).paused = False

    async def stop_node(self, node: str) -> None:
        record = self._node(node, answering=False)
        if record.stopped:
            return
        kept = {name: p.spec for name, p in record.processes.items()
                if p.state in ("starting", "running", "backoff") and p.spec.restart != "never"}
        record.restore = {**record.restore, **kept}
        record.processes.clear()
        record.paused, record.stopped = False, True

    async def start_node(self, node: str) -> None:
        self._node(node, answering=False).stopped = False

    async def restore_processes(self, node: str, roles: list[str] | None = None) -> list[str]:
        record = self._node(node)
        restored = []
        for name, spec in list(record.restore.items()):
            if roles is not None and spec.labels.get("role", "") not in roles:
                continue
            del record.restore[name]
            if name not in record.processes:
                await self.start_process(node, spec)
                restored.append(name)
        return restored

    # -- leftovers -------------------------------------------------------------------------------
    @classmethod
    async def clean(cls, lab: str | None) -> list[str]:
        labs = [lab] if lab is not None else list(cls.registry)
        removed = []
        for name in labs:
            for node in cls.registry.pop(name, {}):
                removed.append(f"fake node {node} of lab {name}")
        return removed
