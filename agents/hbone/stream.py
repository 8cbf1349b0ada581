"""A tunnel: one HTTP/2 CONNECT stream used as a byte stream.

Its asyncio face is `await read()`, `await write(data)`, `write_eof()`
(END_STREAM, the half-close), `abort()` (RST_STREAM) and `close()`. For bulk,
pipe.py attaches a TCP socket (`sink`) instead: the connection's reader thread
then writes received DATA straight into it (`deliver`, a non-blocking send),
and what the socket did not take at once waits in `inq` for the pipe's drain
thread. Received bytes are credited back to the peer (WINDOW_UPDATE) only once
they were taken, so a slow consumer slows its own stream and nothing else.

All tunnel state is guarded by its connection's `lock`; methods ending in
`_locked` expect it held.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from agents.hbone import frames as fr

if TYPE_CHECKING:
    from agents.hbone.connection import Connection

CHUNK = 256 << 10        # the largest DATA frame we send (bytes read from a socket at once)
ASYNC_HIGH_WATER = 1 << 20  # queued bytes above which asyncio writers wait for the sender thread
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


class HboneError(Exception):
    """A tunnel that could not be opened or broke. `status` is the HTTP status, None if there was no answer."""

    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(f"{status} {reason}" if status else reason)
        self.status = status
        self.reason = reason


class Tunnel:
    """One CONNECT stream (see the module docstring)."""

    def __init__(self, conn: Connection, stream_id: int, send_window: int, in_window: fr.InboundWindow) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.loop = conn.loop
        self.send_window = send_window
        self.in_window = in_window
        self.cond = threading.Condition(conn.lock)
        self.open_for_data = False
        self.response: asyncio.Future[tuple[int, dict[str, str]]] | None = None
        self.status: int | None = None
        self.response_headers: dict[str, str] = {}
        self.in_eof = False       # END_STREAM received
        self.out_eof = False      # END_STREAM sent
        self.reset = False
        self.retryable = False    # reset unprocessed (REFUSED_STREAM, above GOAWAY's last stream): safe to retry
        self.error: str | None = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self.inq: deque[bytes] = deque()  # received, not yet taken by read() or the drain thread
        self.in_pending = 0       # queued, or being written by the drain thread
        self.sink: socket.socket | None = None  # the TCP socket a pipe writes received bytes to
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Tunnel {self.stream_id} sent={self.bytes_sent} received={self.bytes_received} error={self.error}>"

    # ------------------------------------------------------------ asyncio face

    async def read(self, max_bytes: int = -1) -> bytes:
        """Up to `max_bytes` (any amount if -1) received bytes; b"" after the peer's END_STREAM."""
        conn = self.conn
        while True:
            with conn.lock:
                if self.inq:
                    chunk = self.inq.popleft()
                    if 0 < max_bytes < len(chunk):
                        self.inq.appendleft(chunk[max_bytes:])
                        chunk = chunk[:max_bytes]
                    self.in_pending -= len(chunk)
                    break
                if self.in_eof:
                    return b""
                if self.reset:
                    raise HboneError(None, self.error or "stream reset")
                waiter = self._read_waiter = self.loop.create_future()
            await waiter
        conn.credit(self, len(chunk))
        return chunk

    async def readexactly(self, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            chunk = await self.read(n - got)
            if not chunk:
                raise HboneError(None, f"end of stream after {got} of {n} bytes")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send `data` in DATA frames, waiting for flow-control window and for the socket to take them."""
        conn = self.conn
        view = memoryview(data).cast("B")
        while view:
            waiter = None
            with conn.lock:
                self._check_writable_locked()
                k = min(len(view), self.send_window, conn.send_window, conn.peer_max_frame, CHUNK)
                if k > 0:
                    self.send_window -= k
                    conn.send_window -= k
                    conn._enqueue_locked(fr.frame_header(k, fr.DATA, 0, self.stream_id) + view[:k], wake=False)
                    self.bytes_sent += k
                    view = view[k:]
                else:
                    if conn.send_window <= 0:
                        conn.window_waiters.add(self)
                    waiter = self._write_waiter = self.loop.create_future()
            conn.kick()  # encrypted and sent from here when nobody else is sending
            if waiter is not None:
                await waiter
            elif conn.outq_bytes > ASYNC_HIGH_WATER or conn.tls.backlog:
                await conn.drained()  # the socket pushes back: let the sender thread catch up

    def write_eof(self) -> None:
        """Half-close: END_STREAM after what was written (idempotent)."""
        with self.conn.lock:
            self.end_stream_locked(wake=False)
        self.conn.kick()

    def abort(self, error_code: int = fr.CANCEL, reason: str = "aborted") -> None:
        """RST_STREAM: both directions end now."""
        with self.conn.lock:
            self.reset_locked(error_code, reason)

    def close(self) -> None:
        """Done with the tunnel: a reset unless both sides already ended the stream."""
        if not (self.in_eof and self.out_eof):
            self.abort()

    # ------------------------------------------------------------ called by the connection

    def deliver(self, payload: memoryview) -> int:
        """DATA for this stream (reader thread, lock not held): into the socket if it has room, else queued.

        Returns how many bytes the socket took at once (the caller credits them).
        """
        sink = self.sink
        self.bytes_received += len(payload)
        sent = 0
        if sink is not None and not self.in_pending and _DONTWAIT and not self.reset:
            try:
                sent = sink.send(payload, _DONTWAIT)
            except BlockingIOError:
                pass
            except OSError as exc:
                self.abort(fr.CONNECT_ERROR, f"writing the target failed: {exc}")
                return len(payload)  # dropped: credited
            if sent == len(payload):
                return sent
            payload = payload[sent:]
        with self.conn.lock:
            dropped = self.reset
            if not dropped:
                self.inq.append(bytes(payload))
                self.in_pending += len(payload)
                self.notify_locked()
        return sent + len(payload) if dropped else sent

    def deliver_eof(self) -> None:
        with self.conn.lock:
            self.deliver_eof_locked()

    def deliver_eof_locked(self) -> None:
        if not self.in_eof:
            self.in_eof = True
            self.notify_locked()
            self._forget_if_done_locked()

    def accepting_data(self) -> bool:
        return self.open_for_data and not self.in_eof and not self.reset

    def in_window_received(self, flow: int) -> bool:
        try:
            self.in_window.received(flow)
        except fr.ConnectionError_:
            self.reset_locked(fr.FLOW_CONTROL_ERROR, "peer overran the stream window")
            return False
        return True

    def remote_closed(self) -> bool:
        return self.in_eof or self.reset

    def notify_locked(self) -> None:
        self.cond.notify_all()
        for waiter in (self._read_waiter, self._write_waiter):
            if waiter is not None:
                resolve_soon(self.loop, waiter)
        self._read_waiter = self._write_waiter = None

    def on_response_locked(self, headers: list[tuple[bytes, bytes]]) -> None:
        decoded = header_dict(headers)
        self.status = int(decoded.get(":status", "0") or 0)
        self.response_headers = decoded
        if self.status == 200:
            self.open_for_data = True
        if self.response is not None:
            resolve_soon(self.loop, self.response, (self.status, decoded))

    def reset_locked(self, error_code: int, reason: str) -> None:
        """Reset from this side: RST_STREAM, then as if the peer had reset."""
        if self.reset:
            return
        if not (self.in_eof and self.out_eof):
            self.conn.h2_call_locked(self.conn.h2.reset_stream, self.stream_id, error_code)
        self.on_reset_locked(reason)

    def on_reset_locked(self, reason: str) -> None:
        if self.reset:
            return
        self.reset = True
        self.error = self.error or reason
        self.conn.streams.pop(self.stream_id, None)
        self.conn.window_waiters.discard(self)
        self.notify_locked()
        if self.response is not None and not self.response.done():
            _fail_soon(self.loop, self.response, HboneError(None, reason))
        if self.sink is not None:
            try:
                self.sink.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv
            except OSError:
                pass

    def end_stream_locked(self, wake: bool = True) -> None:
        if self.out_eof or self.reset:
            return
        self.out_eof = True
        self.conn.h2_call_locked(self.conn.h2.end_stream, self.stream_id, wake=wake)
        self._forget_if_done_locked()

    def _forget_if_done_locked(self) -> None:
        if self.in_eof and self.out_eof:
            self.conn.streams.pop(self.stream_id, None)

    def _check_writable_locked(self) -> None:
        if self.reset or self.conn.closed:
            raise HboneError(None, self.error or "stream closed")
        if self.out_eof:
            raise HboneError(None, "write after write_eof")


def header_dict(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        key = (name.decode("latin-1") if isinstance(name, bytes) else name).lower()
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def resolve_soon(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], value: Any = None) -> None:
    def resolve() -> None:
        if not fut.done():
            fut.set_result(value)
    try:
        loop.call_soon_threadsafe(resolve)
    except RuntimeError:
        pass


def _fail_soon(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], exc: BaseException) -> None:
    def fail() -> None:
        if not fut.done():
            fut.set_exception(exc)
    try:
        loop.call_soon_threadsafe(fail)
    except RuntimeError:
        pass
