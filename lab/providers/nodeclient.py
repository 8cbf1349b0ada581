"""Client of the node supervisor's control protocol (JSON lines; docs/architecture.md).

`NodeClient` speaks the protocol over any asyncio stream pair, so the local
provider (a unix socket), docker (`docker exec` stdio) and ssh (a channel)
share it; only how the streams are opened differs. `connect_unix` is the
local transport.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from typing import Any

from lab.errors import ProvisionError

LINE_LIMIT = 16 * 1024 * 1024  # as on the supervisor side: a resolver table is one line
DEFAULT_TIMEOUT = 30.0
_MAX_UNIX_PATH = 100  # sun_path holds 108 bytes with the terminating NUL; keep a margin


class SupervisorUnreachable(ProvisionError):
    """The connection to a node supervisor failed or broke (as opposed to the supervisor saying no)."""


class NodeClient:
    """Calls on one node supervisor; one request at a time per connection, answers in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, node: str = "?") -> None:
        self.node = node
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()
        self._broken = False

    @property
    def closed(self) -> bool:
        return self._broken or self._writer.is_closing()

    async def call(self, op: str, *, timeout: float = DEFAULT_TIMEOUT, **fields: Any) -> dict[str, Any]:
        """Send one request and return the answer; ProvisionError with the supervisor's message if not ok."""
        if self.closed:
            raise SupervisorUnreachable(f"node {self.node}: the connection to its supervisor is closed")
        line = json.dumps({"op": op, **fields}, separators=(",", ":")).encode() + b"\n"
        async with self._lock:
            try:
                self._writer.write(line)
                await self._writer.drain()
                raw = await asyncio.wait_for(self._reader.readline(), timeout)
            except TimeoutError:
                # A late answer would be read as the answer to the next request: drop the connection.
                await self._abandon()
                raise ProvisionError(f"node {self.node}: supervisor did not answer {op!r} within "
                                     f"{timeout:g}s (is the node paused or hung?)") from None
            except (ConnectionError, ValueError) as e:  # ValueError: an answer beyond LINE_LIMIT
                await self._abandon()
                raise SupervisorUnreachable(f"node {self.node}: lost the supervisor during {op!r}: {e}") from None
        if not raw:
            await self._abandon()
            raise SupervisorUnreachable(f"node {self.node}: supervisor closed the connection during {op!r}")
        try:
            answer = json.loads(raw)
        except ValueError:
            await self._abandon()
            raise SupervisorUnreachable(f"node {self.node}: supervisor sent a malformed answer "
                                        f"{raw[:80]!r}") from None
        if not isinstance(answer, dict) or not answer.get("ok"):
            error = answer.get("error") if isinstance(answer, dict) else None
            raise ProvisionError(f"node {self.node}: {error or f'bad answer {answer!r}'}")
        return answer

    async def close(self) -> None:
        await self._abandon()

    async def _abandon(self) -> None:
        self._broken = True
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def open_unix_stream(path: Path, timeout: float = 5.0) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a unix socket, also one whose path is too long for a socket address."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    dir_fd = None
    try:
        target = str(path)
        if len(os.fsencode(target)) > _MAX_UNIX_PATH:
            # Reach the socket through a descriptor of its folder: /proc/self/fd/N/<name> is short.
            dir_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
            target = f"/proc/self/fd/{dir_fd}/{path.name}"
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, target), timeout)
    except BaseException:
        sock.close()
        raise
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    return await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)


async def connect_unix(path: Path, node: str, timeout: float = 5.0) -> NodeClient:
    """A NodeClient on the supervisor's unix socket; SupervisorUnreachable if nobody answers there."""
    try:
        reader, writer = await open_unix_stream(path, timeout)
    except (OSError, TimeoutError) as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise SupervisorUnreachable(f"node {node}: cannot reach its supervisor at {path}: {reason}") from None
    return NodeClient(reader, writer, node)
