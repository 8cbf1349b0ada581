"""The agent side of the control plane's agent channel (like istiod's 15012): config and certificates.

Theory of operation: an agent holds one TLS connection to the control plane
(the server's certificate is checked against the lab root the lab copied onto
the node), says hello with its node's bootstrap token, and then receives a
stream of versioned config snapshots. It answers every version with an ACK, or
a NACK when `on_config` rejects it (keeping its last good config). Certificate
requests (CSR in, leaf + root out) travel on the same connection.

When the connection drops, the agent keeps serving with what it has and
reconnects with exponential backoff and jitter; on reconnect it tells the
control plane which version it last ACKed.

The control plane's certificate is checked against the bootstrap root file and
every root a snapshot's `trust` section announced (a root rotation re-issues the
control plane's certificate too); the announced roots are also written to the
bootstrap root file, so a restarted agent trusts them. An agent that was away
during a rotation missed those snapshots and trusts only the old root; the
control plane writes the new bundle into every node's bootstrap root file (as
Istio mounts `istio-ca-root-cert` into pods), so when a handshake fails
certificate verification the agent re-reads that file and retries with it.

Wire format: one JSON object per line, in both directions.
  agent -> cp  {"type": "hello", "node", "agent", "token", "version"}
  cp -> agent  {"type": "config", "version": N, "config": {...}}
  agent -> cp  {"type": "ack", "version": N} | {"type": "nack", "version": N, "error": "..."}
  agent -> cp  {"type": "csr", "id": K, "identity": "spiffe://...", "csr": PEM}
  cp -> agent  {"type": "cert", "id": K, "leaf": PEM, "root": PEM} | {"type": "error", "id": K, "error": "..."}
  cp -> agent  {"type": "denied", "error": "..."}  (bad token: the agent stops retrying quickly)
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("meshlab.channel")

MAX_MESSAGE = 64 * 1024 * 1024
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0

ConfigHandler = Callable[[int, dict[str, Any]], Awaitable[None]]


class ChannelError(Exception):
    """The control plane refused a request (for example a certificate for an identity not on this node)."""


class AgentChannel:
    """One agent's connection to the control plane, kept alive for the agent's lifetime."""

    def __init__(self, host: str, port: int, root_pem_file: str, node: str, agent: str, token: str,
                 on_config: ConfigHandler) -> None:
        self.host, self.port = host, port
        self.node, self.agent, self.token = node, agent, token
        self.on_config = on_config
        self.root_pem_file = root_pem_file
        self._roots: list[str] = []  # roots announced in snapshots (`trust.roots`)
        self._file_pem = self._read_root_file(strict=True)  # the bootstrap file's roots the context was built with
        self._file_rejected: str | None = None  # a bootstrap file content that held no usable root
        self._untrusted_logged = False  # "not signed by a root we trust" is logged once per outage
        self._ssl = self._context()
        self.version = 0  # last ACKed
        self.connected = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"channel-{self.agent}")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._writer:
            self._writer.close()

    async def request_cert(self, identity: str, csr_pem: bytes, timeout: float = 30.0) -> tuple[bytes, bytes]:
        """Send a CSR; returns (leaf PEM, root PEM). Waits for the channel when it is down."""
        await asyncio.wait_for(self.connected.wait(), timeout)
        req_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        try:
            self._send({"type": "csr", "id": req_id, "identity": identity, "csr": csr_pem.decode()})
            answer = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(req_id, None)
        if answer["type"] == "error":
            raise ChannelError(answer["error"])
        return answer["leaf"].encode(), answer["root"].encode()

    def _read_root_file(self, strict: bool = False) -> str | None:
        """The bootstrap root file's PEM text; None when it is unreadable, unless `strict` (at start)."""
        try:
            with open(self.root_pem_file, encoding="ascii") as f:
                return f.read()
        except (OSError, ValueError):
            if strict:
                raise
            return None

    def _context(self) -> ssl.SSLContext:
        """The context that checks the control plane: the bootstrap root file plus the announced roots.
        Not create_default_context(): without a cafile it would trust the system's CAs too."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        loaded = False
        if self._file_pem:
            try:
                ctx.load_verify_locations(cadata=self._file_pem)
                loaded = True
            except (ssl.SSLError, ValueError):
                if not self._roots:
                    raise
                # the announced roots are enough
        if self._roots:
            ctx.load_verify_locations(cadata="".join(self._roots))
        elif not loaded:
            raise ssl.SSLError(f"{self.root_pem_file} holds no root certificate")
        ctx.check_hostname = False  # the serving cert is checked against the lab root; SAN is an IP
        return ctx

    def _reread_root_file(self, error: ssl.SSLCertVerificationError) -> None:
        """The control plane's certificate did not verify: if the lab wrote a new trust bundle into the
        bootstrap root file (a root rotation while this agent was away), retry with it."""
        reason = error.verify_message or str(error)
        pem = self._read_root_file()
        if pem is not None and pem != self._file_pem and pem != self._file_rejected:
            previous, self._file_pem = self._file_pem, pem
            try:
                self._ssl = self._context()
            except (ssl.SSLError, ValueError) as e:
                self._file_pem, self._file_rejected = previous, pem
                log.warning("%s changed but is unusable (%s); keeping the roots this agent had",
                            self.root_pem_file, e)
                return
            log.warning("the control plane's certificate did not verify (%s); %s holds a new trust bundle "
                        "(%d root(s): the lab's root changed while this agent was away): retrying with it",
                        reason, self.root_pem_file, pem.count("BEGIN CERTIFICATE"))
            self._untrusted_logged = False
        elif not self._untrusted_logged:
            log.warning("the control plane's certificate did not verify (%s) against the roots this agent "
                        "trusts; waiting for a new trust bundle in %s (retrying with backoff)",
                        reason, self.root_pem_file)
            self._untrusted_logged = True

    def _learn_roots(self, config: Any) -> None:
        """Trust the roots a snapshot announces, from the next connection on, and keep them on disk."""
        roots = (config.get("trust") or {}).get("roots") if isinstance(config, dict) else None
        if not isinstance(roots, list) or not roots or roots == self._roots:
            return
        try:
            candidate = [str(r) for r in roots]
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata="".join(candidate))
        except (ssl.SSLError, ValueError) as e:
            log.warning("the snapshot's trust roots are unusable: %s", e)
            return
        self._roots = candidate
        self._ssl = self._context()
        bundle = "".join(r if r.endswith("\n") else r + "\n" for r in candidate)
        try:  # atomically: other agents of the node read and write the same file
            tmp = f"{self.root_pem_file}.{self.agent.replace('/', '_').replace(':', '_')}.tmp"
            with open(tmp, "w", encoding="ascii") as f:
                f.write(bundle)
            os.replace(tmp, self.root_pem_file)
            self._file_pem = bundle
        except OSError as e:
            log.info("cannot update %s with the new roots: %s", self.root_pem_file, e)

    def _send(self, msg: dict[str, Any]) -> None:
        if self._writer is None:
            raise ConnectionError("not connected to the control plane")
        self._writer.write(json.dumps(msg).encode() + b"\n")

    async def _run(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            try:
                await self._session()
                backoff = BACKOFF_FIRST
            except ssl.SSLCertVerificationError as e:  # before OSError: it is one
                self._reread_root_file(e)
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError, ValueError, ConnectionError) as e:
                log.info("control plane %s:%d unreachable (%s); retrying in %.1fs", self.host, self.port, e, backoff)
            finally:
                self.connected.clear()
                self._writer = None
                for fut in self._pending.values():
                    if not fut.done():
                        fut.set_exception(ConnectionError("control plane connection lost"))
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, BACKOFF_MAX)
            self.reconnects += 1

    async def _session(self) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=self._ssl, limit=MAX_MESSAGE), timeout=5)
        self._writer = writer
        try:
            self._send({"type": "hello", "node": self.node, "agent": self.agent, "token": self.token,
                        "version": self.version})
            self.connected.set()
            self._untrusted_logged = False
            log.info("connected to the control plane at %s:%d", self.host, self.port)
            while True:
                line = await reader.readline()
                if not line:
                    raise ConnectionError("control plane closed the channel")
                await self._dispatch(json.loads(line))
        finally:
            writer.close()

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "config":
            version = int(msg["version"])
            try:
                await self.on_config(version, msg["config"])
            except Exception as e:  # a config the agent cannot use: NACK it and keep the last good one
                log.warning("config version %d rejected: %s", version, e)
                self._send({"type": "nack", "version": version, "error": f"{type(e).__name__}: {e}"})
                return
            self.version = version
            self._learn_roots(msg["config"])
            self._send({"type": "ack", "version": version})
        elif kind in ("cert", "error"):
            fut = self._pending.get(int(msg.get("id", -1)))
            if fut and not fut.done():
                fut.set_result(msg)
        elif kind == "denied":
            raise ConnectionError(f"control plane refused this agent: {msg.get('error')}")
