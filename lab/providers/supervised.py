"""What local and docker providers share: their nodes run the node supervisor, reached on its control socket.

A subclass says how to check that a node can answer (`_check_reachable`: a
paused node answers nothing, so fail at once) and where its folder is; the
supervisor calls (processes, usage, config, logs on disk) are the same.
"""

from __future__ import annotations

import abc
import asyncio
import os
from pathlib import Path
from typing import Any

from lab.errors import ProvisionError
from lab.providers.base import ProcessSpec, ProcessStatus, Provider, ResourceUsage
from lab.providers.nodeclient import NodeClient, SupervisorUnreachable, connect_unix

PING_TIMEOUT = 2.0
STOP_TIMEOUT = 10.0  # a supervisor stops its processes with SIGTERM, then SIGKILL after 3 s


def tail_file(path: Path, lines: int) -> str:
    """The last `lines` lines of a file that may be large (logs are appended across restarts)."""
    if lines <= 0:
        return ""
    with open(path, "rb") as f:
        end = pos = f.seek(0, os.SEEK_END)
        chunk = b""
        # One newline more than asked for, so the first line kept is whole.
        while pos > 0 and chunk.count(b"\n") <= lines:
            pos = max(0, pos - 65536)
            f.seek(pos)
            chunk = f.read(end - pos)
    kept = chunk.splitlines()[-lines:]
    return b"\n".join(kept).decode(errors="replace") + ("\n" if kept else "")


class SupervisedProvider(Provider):
    """A provider whose nodes each run a node supervisor with a control socket in the node's folder."""

    def __init__(self, lab: str, lab_dir: Path) -> None:
        super().__init__(lab, lab_dir)
        self._clients: dict[str, NodeClient] = {}
        self._connecting: dict[str, asyncio.Lock] = {}

    def node_dir(self, node: str) -> Path:
        return self.lab_dir / "nodes" / node

    @abc.abstractmethod
    async def _check_reachable(self, node: str) -> None:
        """Raise ProvisionError at once when the node cannot answer (paused, stopped)."""

    async def _client(self, node: str) -> NodeClient:
        async with self._connecting.setdefault(node, asyncio.Lock()):
            client = self._clients.get(node)
            if client is None or client.closed:
                client = await connect_unix(self.node_dir(node) / "control.sock", node, timeout=PING_TIMEOUT)
                self._clients[node] = client
            return client

    async def _call(self, node: str, op: str, *, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        await self._check_reachable(node)
        try:
            return await (await self._client(node)).call(op, timeout=timeout, **fields)
        except SupervisorUnreachable:
            # A cached connection may predate a supervisor restart: one fresh try. Every op is idempotent.
            await self._forget(node)
            return await (await self._client(node)).call(op, timeout=timeout, **fields)

    async def _ping(self, node: str) -> dict[str, Any] | None:
        """The supervisor's ping answer, or None when no supervisor of this node answers."""
        try:
            answer = await self._call(node, "ping", timeout=PING_TIMEOUT)
        except ProvisionError:
            await self._forget(node)
            return None
        return answer if answer.get("node") == node and answer.get("lab", self.lab) == self.lab else None

    async def _forget(self, node: str) -> None:
        client = self._clients.pop(node, None)
        if client is not None:
            await client.close()

    async def start_process(self, node: str, spec: ProcessSpec) -> None:
        await self._call(node, "start", spec=spec.to_json())

    async def stop_process(self, node: str, name: str) -> None:
        await self._call(node, "stop", name=name, timeout=STOP_TIMEOUT)

    async def signal_process(self, node: str, name: str, signal: int) -> None:
        await self._call(node, "signal", name=name, signal=signal)

    async def restart_process(self, node: str, name: str, env: dict[str, str] | None = None) -> None:
        await self._call(node, "restart", name=name, env=env or {}, timeout=STOP_TIMEOUT + 10)

    async def list_processes(self, node: str) -> list[ProcessStatus]:
        answer = await self._call(node, "list")
        return [ProcessStatus(name=p["name"], state=p["state"], pid=p.get("pid"), restarts=p.get("restarts", 0),
                              ready=bool(p.get("ready")), exit_code=p.get("exit_code"),
                              started_at=p.get("started_at"), labels=p.get("labels") or {})
                for p in answer.get("processes", [])]

    async def _log_file(self, node: str, name: str, tail: int) -> str | None:
        """The tail of a process's log file in the node's folder, None when there is none."""
        try:
            return await asyncio.to_thread(tail_file, self.node_dir(node) / "logs" / f"{name}.log", tail)
        except FileNotFoundError:
            return None

    async def resource_usage(self, node: str) -> dict[str, ResourceUsage]:
        answer = await self._call(node, "usage")
        return {name: ResourceUsage(u["pid"], u["rss_bytes"], u["cpu_seconds"])
                for name, u in answer.get("usage", {}).items()}

    async def push_config(self, node: str, section: str, value: Any) -> None:
        await self._call(node, "config", section=section, value=value)

    async def restore_processes(self, node: str, roles: list[str] | None = None) -> list[str]:
        answer = await self._call(node, "restore", roles=None if roles is None else list(roles))
        return [str(name) for name in answer.get("restored", [])]

    async def close(self) -> None:
        for node in list(self._clients):
            await self._forget(node)
