"""Joining HBONE tunnels to the L7 engine, which speaks asyncio streams.

The engine reads and writes stream pairs (`read`, `at_eof`, `write`, `writelines`, `drain`,
`close`). A tunnel has an asyncio face of its own (`Tunnel.read`/`write`), so the join is an
in-process byte pipe: `agents.hbone.pipe` copies between the tunnel and the pipe's far end
with two coroutines, and the engine holds the near end. Nothing crosses a socket or a
thread: a request costs no socketpair copies and no wake-up of a pipe thread, and the
tunnel's frames are encrypted and sent from the event loop (`Connection.kick`).

The near end behaves as a socket's streams would: `close()` is a FIN (the tunnel gets
END_STREAM once what was written went out, and bytes that still arrive reset the tunnel);
a tunnel that was reset reads as `ConnectionResetError`, and writes after that fail at `drain()`.

`serving_pair` (a socketpair) stays for callers that need a real socket, such as the inbound
toxics in front of a sidecar (agents/proxy/toxics.py).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from agents.hbone import Tunnel, pipe

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_pipes: set[asyncio.Future[object]] = set()  # keep running pipes referenced until they finish
LIMIT = 256 * 1024  # the streams' read buffer; a pipe's writer waits in drain() above it


def _keep(task: asyncio.Future[Any]) -> None:
    _pipes.add(task)
    task.add_done_callback(_pipes.discard)


class _Buffer:
    """One direction of a pipe: bytes one end wrote and the other end has not read yet."""

    __slots__ = ("data", "eof", "error", "closed", "readable", "drained")

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False  # the writing end is done (FIN)
        self.error: BaseException | None = None  # the writing end was reset: the reader gets this
        self.closed = False  # the reading end closed: writes fail, as to a socket whose peer closed
        self.readable: asyncio.Future[None] | None = None
        self.drained: asyncio.Future[None] | None = None

    def wake_reader(self) -> None:
        fut, self.readable = self.readable, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    def wake_writer(self) -> None:
        fut, self.drained = self.drained, None
        if fut is not None and not fut.done():
            fut.set_result(None)


class PipeReader:
    """The reading end of a `_Buffer`, with the part of `asyncio.StreamReader` the engine and hbone use."""

    __slots__ = ("_in",)

    def __init__(self, buffer: _Buffer) -> None:
        self._in = buffer

    @property
    def _buffer(self) -> bytearray:
        """What arrived and was not read (the engine's pool peeks at it, as at asyncio's StreamReader)."""
        return self._in.data

    def at_eof(self) -> bool:
        buf = self._in
        return (buf.eof or buf.error is not None) and not buf.data

    def exception(self) -> BaseException | None:
        return self._in.error

    async def read(self, n: int = -1) -> bytes:
        buf = self._in
        while True:
            if buf.error is not None:
                raise buf.error
            if buf.data:
                break
            if buf.eof or n == 0:
                return b""
            waiter = buf.readable = asyncio.get_running_loop().create_future()
            await waiter
        data = buf.data
        if n < 0 or n >= len(data):
            out = bytes(data)
            data.clear()
        else:
            out = bytes(data[:n])
            del data[:n]
        if buf.drained is not None and len(data) <= LIMIT:
            buf.wake_writer()
        return out


class PipeWriter:
    """The writing end of a `_Buffer`, with the part of `asyncio.StreamWriter` the engine and hbone use."""

    __slots__ = ("_out", "_in", "_closing", "_eof_sent", "_reset_on_close")
    transport = None  # no socket to take over: agents.hbone.pipe copies with coroutines

    def __init__(self, out: _Buffer, into: _Buffer, reset_on_close: bool) -> None:
        self._out = out  # what this end writes
        self._in = into  # what this end's reader reads (closing stops it)
        self._closing = False
        self._eof_sent = False
        self._reset_on_close = reset_on_close  # the tunnel's end: a close without EOF is a reset

    def write(self, data: bytes | bytearray | memoryview) -> None:
        out = self._out
        if not data or self._closing or out.closed or self._eof_sent:
            return  # as a transport after the connection was lost: drain() tells
        out.data += data
        out.wake_reader()

    def writelines(self, parts: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(parts))

    async def drain(self) -> None:
        out = self._out
        while True:
            if out.closed or self._closing:
                raise ConnectionResetError("Connection lost")
            if len(out.data) <= LIMIT:
                return
            waiter = out.drained = asyncio.get_running_loop().create_future()
            await waiter

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if not self._eof_sent:
            self._eof_sent = True
            self._out.eof = True
            self._out.wake_reader()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        out, into = self._out, self._in
        if self._reset_on_close and not self._eof_sent:
            out.error = ConnectionResetError("Connection reset by peer")
        out.eof = True
        out.wake_reader()
        into.closed = True  # nobody reads here any more: the other end's writes fail ...
        into.eof = True  # ... and this end's reader ends after what already arrived (as after connection_lost)
        into.wake_reader()
        into.wake_writer()

    async def wait_closed(self) -> None:
        return

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def stream_pipe() -> tuple[Streams, Streams]:
    """Two connected stream pairs: (the near end for the engine, the far end for `agents.hbone.pipe`)."""
    up, down = _Buffer(), _Buffer()
    near = (PipeReader(down), PipeWriter(up, down, reset_on_close=False))
    far = (PipeReader(up), PipeWriter(down, up, reset_on_close=True))
    return near, far  # type: ignore[return-value]


async def tunnel_streams(tunnel: Tunnel) -> Streams:
    """Streams that read from and write to `tunnel` (its pipe runs until both sides are done)."""
    near, far = stream_pipe()
    _keep(asyncio.ensure_future(pipe(tunnel, *far)))
    return near


def serving_streams(serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> Streams:
    """The target to hand an HBONE server for an accepted CONNECT (a stream pair it pipes the tunnel to);
    `serve` gets the other end."""
    near, far = stream_pipe()

    async def run() -> None:
        try:
            await serve(*near)
        finally:
            near[1].close()
    _keep(asyncio.ensure_future(run()))
    return far


def serving_pair(serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> socket.socket:
    """A socket to hand an HBONE server as the target of an accepted CONNECT; `serve` gets the other end."""
    target, mine = socket.socketpair()

    async def run() -> None:
        reader, writer = await asyncio.open_connection(sock=mine, limit=LIMIT)
        try:
            await serve(reader, writer)
        finally:
            writer.close()
    _keep(asyncio.ensure_future(run()))
    return target
