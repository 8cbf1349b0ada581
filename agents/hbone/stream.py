"""A tunnel: one HTTP/2 CONNECT stream used as a byte stream, and the pipes that move its bytes.

A `Tunnel` has two faces:

* asyncio: `await read()`, `await write(data)`, `write_eof()` (END_STREAM, the
  half-close), `abort()` (RST_STREAM), `close()`;
* threads, for bulk (`pipe_socket`): a *pump* thread reads the socket into a
  buffer 9 bytes past its start, writes the DATA frame header in front and
  sends the frame itself; the connection's reader thread writes received DATA
  straight into the socket with a non-blocking send, and a *drain* thread
  writes what the socket did not take at once. Received bytes are credited
  back to the peer (WINDOW_UPDATE) only once the socket took them, so a slow
  consumer slows its own stream and nothing else.

`pipe(tunnel, reader, writer)` takes asyncio streams; when they wrap a plain
TCP socket it takes the socket over and uses the thread path.

All tunnel state is guarded by its connection's `lock`; methods ending in
`_locked` expect it held.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from agents.hbone import frames as fr

if TYPE_CHECKING:
    from agents.hbone.connection import Connection

CHUNK = 256 << 10        # bytes read from a socket per DATA frame
ASYNC_HIGH_WATER = 1 << 20  # queued bytes above which asyncio writers wait for the sender thread
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_LINGER_RESET = struct.pack("ii", 1, 0)


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
        self.error: str | None = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self._inq: deque[bytes] = deque()
        self._in_pending = 0      # queued, or being written by the drain thread
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._sink: socket.socket | None = None
        self._done: asyncio.Future[None] | None = None
        self._threads_left = 0

    def __repr__(self) -> str:
        return f"<Tunnel {self.stream_id} sent={self.bytes_sent} received={self.bytes_received} error={self.error}>"

    # ------------------------------------------------------------ asyncio face

    async def read(self, max_bytes: int = -1) -> bytes:
        """Up to `max_bytes` (any amount if -1) received bytes; b"" after the peer's END_STREAM."""
        conn = self.conn
        while True:
            with conn.lock:
                if self._inq:
                    chunk = self._inq.popleft()
                    if 0 < max_bytes < len(chunk):
                        self._inq.appendleft(chunk[max_bytes:])
                        chunk = chunk[:max_bytes]
                    self._in_pending -= len(chunk)
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
        """Send `data` in DATA frames, waiting for flow-control window and for the sender to catch up."""
        conn = self.conn
        view = memoryview(data).cast("B")
        while view:
            with conn.lock:
                self._check_writable_locked()
                k = min(len(view), self.send_window, conn.send_window, conn.peer_max_frame, CHUNK)
                if k > 0:
                    self.send_window -= k
                    conn.send_window -= k
                    conn._enqueue_locked(fr.data_frame(self.stream_id, bytes(view[:k])))
                    self.bytes_sent += k
                    view = view[k:]
                    continue
                if conn.send_window <= 0:
                    conn.window_waiters.add(self)
                waiter = self._write_waiter = self.loop.create_future()
            await waiter
        with conn.lock:
            if conn.outq_bytes <= ASYNC_HIGH_WATER or conn.closed:
                return
            drained = self.loop.create_future()
            conn.drain_waiters.append(drained)
        await drained

    def write_eof(self) -> None:
        """Half-close: END_STREAM after what was written (idempotent)."""
        with self.conn.lock:
            self._end_stream_locked()

    def abort(self, error_code: int = fr.CANCEL, reason: str = "aborted") -> None:
        """RST_STREAM: both directions end now."""
        with self.conn.lock:
            self.reset_locked(error_code, reason)

    def close(self) -> None:
        """Done with the tunnel: a reset unless both sides already ended the stream."""
        if not (self.in_eof and self.out_eof):
            self.abort()

    @property
    def finished(self) -> bool:
        return self.reset or (self.in_eof and self.out_eof and not self._in_pending)

    # ------------------------------------------------------------ socket face

    def start_socket_pipe(self, sock: socket.socket, initial: bytes = b"", initial_eof: bool = False
                          ) -> asyncio.Future[None]:
        """Move bytes between this tunnel and `sock` with threads; the future resolves when both ends are done."""
        sock.setblocking(True)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a proxy must not add Nagle delays
        except OSError:
            pass  # not TCP (a socketpair in tests, a unix socket)
        self._done = self.loop.create_future()
        with self.conn.lock:
            self._sink = sock
            self._threads_left = 2
            if self.reset:
                sock.shutdown(socket.SHUT_RDWR)
        threading.Thread(target=self._pump, args=(initial, initial_eof), name="hbone-pump", daemon=True).start()
        threading.Thread(target=self._drain, name="hbone-drain", daemon=True).start()
        return self._done

    def _pump(self, initial: bytes, initial_eof: bool) -> None:
        sock = self._sink
        assert sock is not None
        buf = bytearray(9 + CHUNK)
        view = memoryview(buf)
        payload = view[9:]
        try:
            if initial:
                for start in range(0, len(initial), CHUNK):
                    piece = initial[start:start + CHUNK]
                    payload[:len(piece)] = piece
                    self._send_payload(view, len(piece))
            while not initial_eof:
                n = sock.recv_into(payload)
                if not n:
                    break
                self._send_payload(view, n)
            with self.conn.lock:
                self._end_stream_locked()
            self.conn.flush()
        except HboneError:
            pass  # the stream or the connection is gone; the error is recorded
        except OSError as exc:
            self.abort(fr.CONNECT_ERROR, f"reading the target failed: {exc}")
        finally:
            self._thread_done()

    def _send_payload(self, view: memoryview, n: int) -> None:
        conn = self.conn
        off = 9
        while n:
            with conn.lock:
                while True:
                    if self.reset or conn.closed:
                        raise HboneError(None, self.error or "stream closed")
                    k = min(n, self.send_window, conn.send_window, conn.peer_max_frame)
                    if k > 0:
                        break
                    if conn.send_window <= 0:
                        conn.window_waiters.add(self)
                    self.cond.wait()
                self.send_window -= k
                conn.send_window -= k
            fr.pack_data_header(view, off - 9, k, self.stream_id)
            conn.send_direct(view[off - 9:off + k])
            self.bytes_sent += k
            off += k
            n -= k

    def _drain(self) -> None:
        sock = self._sink
        assert sock is not None
        conn = self.conn
        try:
            while True:
                with conn.lock:
                    while not self._inq and not self.in_eof and not self.reset:
                        self.cond.wait()
                    if self.reset:
                        return
                    if not self._inq:
                        break
                    chunk = self._inq.popleft()
                sock.sendall(chunk)
                with conn.lock:
                    self._in_pending -= len(chunk)
                conn.credit(self, len(chunk))
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.abort(fr.CONNECT_ERROR, f"writing the target failed: {exc}")
        finally:
            self._thread_done()

    def _thread_done(self) -> None:
        with self.conn.lock:
            self._threads_left -= 1
            if self._threads_left:
                return
            failed = self.reset
        sock = self._sink
        if sock is not None:
            try:
                if failed:  # the TCP side of a reset stream is reset too (RFC 9113 §8.5)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                sock.close()
            except OSError:
                pass
        if self._done is not None:
            _resolve_soon(self.loop, self._done)

    # ------------------------------------------------------------ called by the connection

    def deliver(self, payload: memoryview) -> int:
        """DATA for this stream (reader thread, lock not held): into the socket if it has room, else queued.

        Returns how many bytes the socket took at once (the caller credits them).
        """
        sink = self._sink
        self.bytes_received += len(payload)
        sent = 0
        if sink is not None and not self._in_pending and _DONTWAIT and not self.reset:
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
                self._inq.append(bytes(payload))
                self._in_pending += len(payload)
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
                _resolve_soon(self.loop, waiter)
        self._read_waiter = self._write_waiter = None

    def on_response_locked(self, headers: list[tuple[bytes, bytes]]) -> None:
        decoded = _header_dict(headers)
        self.status = int(decoded.get(":status", "0") or 0)
        self.response_headers = decoded
        if self.status == 200:
            self.open_for_data = True
        if self.response is not None:
            _resolve_soon(self.loop, self.response, (self.status, decoded))

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
        if self._sink is not None:
            try:
                self._sink.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv
            except OSError:
                pass

    def _end_stream_locked(self) -> None:
        if self.out_eof or self.reset:
            return
        self.out_eof = True
        self.conn.h2_call_locked(self.conn.h2.end_stream, self.stream_id)
        self._forget_if_done_locked()

    def _forget_if_done_locked(self) -> None:
        if self.in_eof and self.out_eof:
            self.conn.streams.pop(self.stream_id, None)

    def _check_writable_locked(self) -> None:
        if self.reset or self.conn.closed:
            raise HboneError(None, self.error or "stream closed")
        if self.out_eof:
            raise HboneError(None, "write after write_eof")


# ---------------------------------------------------------------- pipes


async def pipe_socket(tunnel: Tunnel, sock: socket.socket, initial: bytes = b"",
                      initial_eof: bool = False) -> tuple[int, int]:
    """Move bytes both ways between `tunnel` and a connected TCP socket (which it closes).

    Returns (bytes_up, bytes_down): socket → tunnel, tunnel → socket.
    """
    done = tunnel.start_socket_pipe(sock, initial, initial_eof)
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        tunnel.abort()
        raise
    return tunnel.bytes_sent, tunnel.bytes_received


async def pipe(tunnel: Tunnel, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, int]:
    """Move bytes both ways between `tunnel` and asyncio streams; (bytes_up, bytes_down) as `pipe_socket`.

    Streams over a plain TCP socket are taken over (the socket is handed to `pipe_socket`:
    the fast path); anything else is copied by two coroutines.
    """
    detached = _detach(reader, writer)
    if detached is not None:
        return await pipe_socket(tunnel, *detached)

    async def up() -> None:
        while data := await reader.read(CHUNK):
            await tunnel.write(data)
        tunnel.write_eof()

    async def down() -> None:
        while data := await tunnel.read():
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        await asyncio.gather(*tasks)
    except (HboneError, OSError) as exc:
        tunnel.abort(fr.CONNECT_ERROR, str(exc))
    finally:
        for task in tasks:
            task.cancel()
        writer.close()
    return tunnel.bytes_sent, tunnel.bytes_received


def _detach(reader: asyncio.StreamReader, writer: asyncio.StreamWriter
            ) -> tuple[socket.socket, bytes, bool] | None:
    """Take the TCP socket out of an asyncio stream pair, with what its reader had buffered."""
    transport: Any = writer.transport
    buffered = getattr(reader, "_buffer", None)
    if (type(transport).__name__ != "_SelectorSocketTransport" or transport.is_closing()
            or transport.get_write_buffer_size() or not isinstance(buffered, bytearray)):
        return None
    tsock = transport.get_extra_info("socket")
    if tsock is None or tsock.type != socket.SOCK_STREAM:
        return None
    transport.pause_reading()
    sock = tsock.dup()
    initial = bytes(buffered)
    buffered.clear()
    eof = bool(getattr(reader, "_eof", False))
    transport.abort()  # closes asyncio's descriptor; the duplicate keeps the connection
    return sock, initial, eof


def _header_dict(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        key = (name.decode("latin-1") if isinstance(name, bytes) else name).lower()
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def _resolve_soon(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], value: Any = None) -> None:
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
