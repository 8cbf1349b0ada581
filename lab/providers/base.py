"""The provider interface: the cut-off between the lab and the machines it runs on.

A provider creates and destroys nodes, copies files onto them, runs and
supervises processes there, reports resource use per process and applies
node-level faults. Every implementation (fake, local, docker, ssh) passes the
one conformance suite in `tests/providers/conformance.py`.

On every provider a node runs one *node supervisor* (`agents/node`), started by
`create_node`. It owns the node's processes (restart with backoff, exit codes,
restart counts, log files) and serves the node's mesh resolver, so a node keeps
working when the lab's own process is gone. Providers differ only in how the
supervisor is started and reached.
"""

from __future__ import annotations

import abc
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ProcessState = Literal["starting", "running", "backoff", "exited", "stopped", "failed"]
RestartPolicy = Literal["always", "on-failure", "never"]


@dataclass(frozen=True)
class NodeSpec:
    """What the lab asks of a provider for one node."""

    lab: str
    name: str
    index: int  # 0-based position in the topology; the local provider derives addresses from it
    address: str  # the node's own address (local: e.g. 127.101.1.1)
    workload_addresses: tuple[str, ...] = ()  # addresses the node must be able to bind
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeInfo:
    lab: str
    name: str
    address: str
    state: str  # "running", "stopped", "paused", "unreachable"
    provider: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessSpec:
    """A process the node supervisor runs and keeps running."""

    name: str  # unique on the node
    argv: tuple[str, ...]  # exec form; use ("sh", "-c", line) for a shell line
    env: dict[str, str] = field(default_factory=dict)
    restart: RestartPolicy = "always"
    # When set, the process counts as ready once host:port accepts a TCP connection.
    ready_tcp: tuple[str, int] | None = None
    labels: dict[str, str] = field(default_factory=dict)  # workload, app, role, ...

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "argv": list(self.argv),
            "env": dict(self.env),
            "restart": self.restart,
            "ready_tcp": list(self.ready_tcp) if self.ready_tcp else None,
            "labels": dict(self.labels),
        }


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    state: ProcessState
    pid: int | None
    restarts: int
    ready: bool
    exit_code: int | None  # of the last exit, if any
    started_at: float | None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ResourceUsage:
    pid: int
    rss_bytes: int
    cpu_seconds: float


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str


class Provider(abc.ABC):
    """One lab's view of the machines its nodes run on."""

    name: str

    def __init__(self, lab: str, lab_dir: Path) -> None:
        self.lab = lab
        self.lab_dir = lab_dir

    def agent_command(self, node: str) -> tuple[str, ...]:
        """How to run the agent zipapp on `node`: interpreter and zipapp path."""
        return (sys.executable, str(self.lab_dir / "agents.pyz"))

    # -- nodes ------------------------------------------------------------
    @abc.abstractmethod
    async def create_node(self, spec: NodeSpec, agent_pyz: Path) -> NodeInfo:
        """Create the node and start its supervisor from `agent_pyz`; adopt it if it already runs."""

    @abc.abstractmethod
    async def destroy_node(self, name: str) -> None:
        """Stop every process of the node and remove the node; no error if it is already gone."""

    @abc.abstractmethod
    async def node_info(self, name: str) -> NodeInfo: ...

    # -- files and commands -------------------------------------------------
    @abc.abstractmethod
    async def copy_file(self, node: str, src: Path, dest: str) -> None:
        """Copy a host file onto the node; `dest` is relative to the node's folder."""

    @abc.abstractmethod
    async def exec(self, node: str, argv: list[str], env: dict[str, str] | None = None,
                   timeout: float = 60.0) -> ExecResult:
        """Run a command on the node to completion (not supervised)."""

    # -- supervised processes ---------------------------------------------
    @abc.abstractmethod
    async def start_process(self, node: str, spec: ProcessSpec) -> None:
        """Start (or, if the spec changed, restart) a supervised process; idempotent."""

    @abc.abstractmethod
    async def stop_process(self, node: str, name: str) -> None: ...

    @abc.abstractmethod
    async def list_processes(self, node: str) -> list[ProcessStatus]: ...

    async def restart_process(self, node: str, name: str, env: dict[str, str] | None = None) -> None:
        """Restart a supervised process, changing its environment (`env`; "" removes a variable)."""
        raise NotImplementedError(f"{self.name}: restarting a process is not supported")

    async def signal_process(self, node: str, name: str, signal: int) -> None:
        """Send a signal to a supervised process (SIGTERM ends a load run early, SIGSTOP pauses an agent)."""
        from lab.errors import ProviderNotSupported

        raise ProviderNotSupported(f"the {self.name} provider cannot signal processes")

    @abc.abstractmethod
    async def logs(self, node: str, name: str, tail: int = 100) -> str: ...

    @abc.abstractmethod
    async def resource_usage(self, node: str) -> dict[str, ResourceUsage]:
        """RSS and CPU per running process name."""

    @abc.abstractmethod
    async def push_config(self, node: str, section: str, value: Any) -> None:
        """Hand the node supervisor a named config section (for example the resolver table)."""

    # -- node faults --------------------------------------------------------
    @abc.abstractmethod
    async def pause_node(self, node: str) -> None: ...

    @abc.abstractmethod
    async def resume_node(self, node: str) -> None: ...

    async def stop_node(self, node: str) -> None:
        """Take the node down like a machine that powers off: every process of it ends (connections to its
        workloads are refused), and its supervisor records what it kept running for `restore_processes`."""
        from lab.errors import ProviderNotSupported

        raise ProviderNotSupported(f"the {self.name} provider cannot stop a node and start it again "
                                   f"(try pause_node: it freezes every process of the node)")

    async def start_node(self, node: str) -> None:
        """Bring a stopped node back (its supervisor answers; nothing else runs yet); no-op if it runs."""
        from lab.errors import ProviderNotSupported

        raise ProviderNotSupported(f"the {self.name} provider cannot start a stopped node")

    async def restore_processes(self, node: str, roles: list[str] | None = None) -> list[str]:
        """Start again what ran when the node stopped (only the processes whose role label is in `roles`,
        when given), with the specs they had then; returns the names started."""
        from lab.errors import ProviderNotSupported

        raise ProviderNotSupported(f"the {self.name} provider cannot restore a node's processes")

    async def partition(self, node: str, peer: str | None, direction: str = "both") -> None:
        from lab.errors import ProviderNotSupported

        raise ProviderNotSupported(f"the {self.name} provider cannot partition nodes")

    async def heal_partition(self, node: str, peer: str | None) -> None:
        from lab.errors import ProviderNotSupported

        raise ProviderNotSupported(f"the {self.name} provider cannot partition nodes")

    # -- leftovers ------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    async def clean(cls, lab: str | None) -> list[str]:
        """Remove what a lab (or every lab, when `lab` is None) left behind, found by its tags.

        Works without any state: after the lab's own process was SIGKILLed. Returns what was removed.
        """

    async def close(self) -> None:
        """Release connections to nodes (the nodes keep running)."""
