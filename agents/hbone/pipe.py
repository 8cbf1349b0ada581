"""Moving a tunnel's bytes to and from a TCP connection.

`pipe_socket(tunnel, sock)` is the fast path, two threads per tunnel:

* the *pump* reads the socket into a buffer 9 bytes past its start, writes the
  DATA frame header in front and sends the frame itself (`Connection.send_direct`:
  no copy, no hand-off), after waiting for flow-control window if it has to;
  the socket's EOF becomes END_STREAM;
* the *drain* writes what the socket did not take at once when the connection's
  reader delivered it (`Tunnel.deliver`), and turns END_STREAM into a FIN.

A reset stream resets the TCP connection too (SO_LINGER 0), and a TCP error
resets the stream with CONNECT_ERROR (RFC 9113 §8.5).

`pipe(tunnel, reader, writer)` takes asyncio streams; when they wrap a plain
TCP socket it takes the socket over and uses the threads, else two coroutines copy.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from typing import Any

from agents.hbone import frames as fr
from agents.hbone.stream import CHUNK, HboneError, Tunnel, resolve_soon

_LINGER_RESET = struct.pack("ii", 1, 0)


class SocketPipe:
    """The pump and drain threads between one tunnel and one connected TCP socket (which it closes)."""

    def __init__(self, tunnel: Tunnel, sock: socket.socket, initial: bytes = b"", initial_eof: bool = False) -> None:
        self.tunnel = tunnel
        self.sock = sock
        self._initial = initial
        self._initial_eof = initial_eof
        self._threads_left = 2
        self.done: asyncio.Future[None] = tunnel.loop.create_future()

    def start(self) -> asyncio.Future[None]:
        """Start both threads; the future resolves when both ended and the socket is closed."""
        sock, tunnel = self.sock, self.tunnel
        sock.setblocking(True)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a proxy must not add Nagle delays
        except OSError:
            pass  # not TCP (a socketpair in tests, a unix socket)
        with tunnel.conn.lock:
            tunnel.sink = sock
            if tunnel.reset:
                sock.shutdown(socket.SHUT_RDWR)
        threading.Thread(target=self._pump, name="hbone-pump", daemon=True).start()
        threading.Thread(target=self._drain, name="hbone-drain", daemon=True).start()
        return self.done

    def _pump(self) -> None:
        tunnel, sock = self.tunnel, self.sock
        buf = bytearray(9 + CHUNK)
        view = memoryview(buf)
        payload = view[9:]
        try:
            for start in range(0, len(self._initial), CHUNK):
                piece = self._initial[start:start + CHUNK]
                payload[:len(piece)] = piece
                self._send_payload(view, len(piece))
            while not self._initial_eof:
                n = sock.recv_into(payload)
                if not n:
                    break
                self._send_payload(view, n)
            with tunnel.conn.lock:
                tunnel.end_stream_locked()
            tunnel.conn.flush()
        except HboneError:
            pass  # the stream or the connection is gone; the error is recorded
        except OSError as exc:
            tunnel.abort(fr.CONNECT_ERROR, f"reading the target failed: {exc}")
        finally:
            self._thread_done()

    def _send_payload(self, view: memoryview, n: int) -> None:
        """Send view[9:9+n] as DATA frames, writing each header in place in front of its payload."""
        tunnel = self.tunnel
        conn = tunnel.conn
        off = 9
        while n:
            with conn.lock:
                while True:
                    if tunnel.reset or conn.closed:
                        raise HboneError(None, tunnel.error or "stream closed")
                    k = min(n, tunnel.send_window, conn.send_window, conn.peer_max_frame)
                    if k > 0:
                        break
                    if conn.send_window <= 0:
                        conn.window_waiters.add(tunnel)
                    tunnel.cond.wait()
                tunnel.send_window -= k
                conn.send_window -= k
            fr.pack_data_header(view, off - 9, k, tunnel.stream_id)  # overwrites sent bytes only
            conn.send_direct(view[off - 9:off + k])
            tunnel.bytes_sent += k
            off += k
            n -= k

    def _drain(self) -> None:
        tunnel, sock = self.tunnel, self.sock
        conn = tunnel.conn
        try:
            while True:
                with conn.lock:
                    while not tunnel.inq and not tunnel.in_eof and not tunnel.reset:
                        tunnel.cond.wait()
                    if tunnel.reset:
                        return
                    if not tunnel.inq:
                        break  # END_STREAM and everything written
                    chunk = tunnel.inq.popleft()
                sock.sendall(chunk)
                with conn.lock:
                    tunnel.in_pending -= len(chunk)
                conn.credit(tunnel, len(chunk))
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            tunnel.abort(fr.CONNECT_ERROR, f"writing the target failed: {exc}")
        finally:
            self._thread_done()

    def _thread_done(self) -> None:
        with self.tunnel.conn.lock:
            self._threads_left -= 1
            if self._threads_left:
                return
            failed = self.tunnel.reset
        try:
            if failed:  # the TCP side of a reset stream is reset too
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            self.sock.close()
        except OSError:
            pass
        resolve_soon(self.tunnel.loop, self.done)


async def pipe_socket(tunnel: Tunnel, sock: socket.socket, initial: bytes = b"",
                      initial_eof: bool = False) -> tuple[int, int]:
    """Move bytes both ways between `tunnel` and a connected TCP socket (which it closes).

    `initial` is sent first (bytes already read from the socket); `initial_eof` says the
    socket's EOF was already seen. Returns (bytes_up, bytes_down): socket → tunnel,
    tunnel → socket. Cancelling resets the stream.
    """
    done = SocketPipe(tunnel, sock, initial, initial_eof).start()
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        tunnel.abort()
        raise
    return tunnel.bytes_sent, tunnel.bytes_received


async def pipe(tunnel: Tunnel, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, int]:
    """Move bytes both ways between `tunnel` and asyncio streams; (bytes_up, bytes_down) as `pipe_socket`.

    Streams over a plain TCP socket are taken over (the socket goes to `pipe_socket`:
    the fast path); anything else (TLS streams, pipes) is copied by two coroutines.
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
    buffered = getattr(reader, "_buffer", None)  # private, hence every check
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
