"""The control plane side of the agent channel: sessions, snapshots, ACK/NACK and certificates.

The wire format is documented in `agents/common/channel.py`. Each connected
agent has a session; `publish()` sends every session the snapshot of the
newest version for its node, and `proxy_status()` tells, per agent, which
version it ACKed and whether it is synced, stale or disconnected.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from lab.errors import LabError

log = logging.getLogger("meshlab.controlplane")

MAX_MESSAGE = 64 * 1024 * 1024


@dataclass
class AgentRecord:
    """What the control plane knows of one agent, connected or not."""

    node: str
    agent: str
    acked: int = 0
    nacked: int | None = None
    nack_error: str | None = None
    sent: int = 0
    connected: bool = False
    connected_at: float | None = None
    last_seen: float | None = None
    address: str | None = None
    writer: asyncio.StreamWriter | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return f"{self.agent}/{self.node}"

    def status(self, latest: int) -> str:
        if not self.connected:
            return "DISCONNECTED"
        if self.acked == latest:
            return "SYNCED"
        if self.nacked == latest:
            return "NACKED"
        return "STALE"


class AgentChannelServer:
    """Serves agents: checks bootstrap tokens, streams config, signs CSRs."""

    def __init__(self, tokens: dict[str, str], snapshot_for: Callable[[str, str], dict[str, Any]],
                 sign: Callable[[str, str, str, bytes], tuple[bytes, bytes]], ttl: timedelta) -> None:
        self.tokens = tokens  # node -> bootstrap token
        self.snapshot_for = snapshot_for  # (node, agent) -> config for the current version
        self.sign = sign  # (node, holder, identity, csr) -> (leaf, root); raises LabError when refused
        self.ttl = ttl
        self.version = 1
        self.agents: dict[str, AgentRecord] = {}
        self.acked = asyncio.Condition()
        self._servers: dict[str, asyncio.Server] = {}

    @property
    def hosts(self) -> list[str]:
        return list(self._servers)

    async def start(self, host: str, port: int, context: ssl.SSLContext) -> int:
        """Listen on `host` too (one server per address). The socket is bound with IP_FREEBIND, so an
        address that appears later (a docker network's gateway, made with the network) works."""
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if sys.platform == "linux":
                sock.setsockopt(socket.SOL_IP, getattr(socket, "IP_FREEBIND", 15), 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        server = await asyncio.start_server(self._serve, sock=sock, ssl=context, limit=MAX_MESSAGE)
        self._servers[host] = server
        return int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for server in self._servers.values():
            server.close()
        for a in self.agents.values():
            if a.writer:
                a.writer.close()

    def publish(self) -> int:
        """A new config version: send every connected agent its snapshot."""
        self.version += 1
        for record in self.agents.values():
            if record.connected:
                self._send_config(record)
        return self.version

    def forget(self, agents: list[str]) -> None:
        """Drop the records of agents that were removed on purpose (`waypoint:ns/name/node-1`), not lost."""
        for key in agents:
            record = self.agents.get(key)
            if record is not None and not record.connected:
                del self.agents[key]

    def proxy_status(self) -> list[dict[str, Any]]:
        return [{"agent": a.agent, "node": a.node, "status": a.status(self.version), "acked": a.acked,
                 "sent": a.sent, "latest": self.version, "nackError": a.nack_error if a.nacked else None,
                 "connectedAt": a.connected_at, "lastSeen": a.last_seen, "address": a.address}
                for a in sorted(self.agents.values(), key=lambda r: (r.node, r.agent))]

    def synced(self, expect: list[str] = ()) -> bool:  # type: ignore[assignment]
        """Every connected agent, and every agent in `expect` ("ztunnel/node-1"), has ACKed the latest version."""
        if any(key not in self.agents or not self.agents[key].connected for key in expect):
            return False
        return all(a.acked == self.version for a in self.agents.values() if a.connected)

    async def wait_synced(self, timeout: float, expect: list[str] = ()) -> bool:  # type: ignore[assignment]
        """Wait until `synced(expect)`."""
        async def synced() -> None:
            async with self.acked:
                await self.acked.wait_for(lambda: self.synced(expect))
        try:
            await asyncio.wait_for(synced(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def _send_config(self, record: AgentRecord) -> None:
        assert record.writer is not None
        config = self.snapshot_for(record.node, record.agent)
        record.sent = self.version
        record.writer.write(json.dumps({"type": "config", "version": self.version, "config": config}).encode()
                            + b"\n")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        record: AgentRecord | None = None
        try:
            hello = json.loads(await asyncio.wait_for(reader.readline(), 10) or b"{}")
            record = self._admit(hello, writer)
            if record is None:
                return
            record.address = f"{peer[0]}:{peer[1]}" if peer else None
            self._send_config(record)
            async with self.acked:
                self.acked.notify_all()
            while line := await reader.readline():
                record.last_seen = time.time()
                await self._dispatch(record, json.loads(line), writer)
        except (ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, ssl.SSLError) as e:
            log.info("agent channel from %s closed: %s", peer, e)
        except asyncio.CancelledError:
            # The control plane is shutting down. Ending quietly keeps asyncio's stream callback
            # (Python 3.11) from logging the cancelled handler as an error.
            pass
        finally:
            if record is not None and record.writer is writer:
                record.connected, record.writer = False, None
                async with self.acked:
                    self.acked.notify_all()
            writer.close()

    def _admit(self, hello: dict[str, Any], writer: asyncio.StreamWriter) -> AgentRecord | None:
        node, agent, token = str(hello.get("node")), str(hello.get("agent")), str(hello.get("token", ""))
        expected = self.tokens.get(node)
        if hello.get("type") != "hello" or expected is None or not hmac.compare_digest(expected, token):
            log.warning("agent %s/%s refused: bad bootstrap token", agent, node)
            writer.write(json.dumps({"type": "denied", "error": "bad bootstrap token"}).encode() + b"\n")
            return None
        key = f"{agent}/{node}"
        record = self.agents.get(key) or AgentRecord(node, agent)
        if record.writer is not None:  # a reconnect while the old session lingers: the new one wins
            record.writer.close()
        record.acked = max(record.acked, int(hello.get("version") or 0))
        record.connected, record.writer = True, writer
        record.connected_at = record.last_seen = time.time()
        self.agents[key] = record
        log.info("agent %s connected (last ACKed version %d)", key, record.acked)
        return record

    async def _dispatch(self, record: AgentRecord, msg: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        kind = msg.get("type")
        if kind in ("ack", "nack"):
            version = int(msg.get("version", 0))
            if kind == "ack":
                record.acked = version
            else:
                record.nacked, record.nack_error = version, str(msg.get("error"))
                log.warning("agent %s NACKed version %d: %s", record.key, version, record.nack_error)
            async with self.acked:
                self.acked.notify_all()
        elif kind == "csr":
            answer: dict[str, Any] = {"id": msg.get("id")}
            try:
                leaf, root = await asyncio.to_thread(self.sign, record.node, record.key, str(msg.get("identity")),
                                                     str(msg.get("csr", "")).encode())
                answer.update(type="cert", leaf=leaf.decode(), root=root.decode())
            except LabError as e:
                answer.update(type="error", error=str(e))
            writer.write(json.dumps(answer).encode() + b"\n")
