"""One HBONE connection: HTTP/2 over a TLS 1.3 socket, with threads on the data path.

Theory of operation
-------------------
Bulk bytes go through neither asyncio nor h2 (DESIGN §10). A connection is a
`tls.TlsChannel` (a blocking socket read and written in large blocks, OpenSSL
working in memory; it releases the GIL while it encrypts and decrypts) served
by threads:

* the *reader* decrypts into one large buffer, splits it with
  `frames.FrameSplitter`, hands DATA pieces to their tunnels, applies
  WINDOW_UPDATEs, and feeds every other frame to h2, whose events (a CONNECT
  request, a response, a reset, new settings, GOAWAY) become tunnel state and
  asyncio callbacks;
* the *sender* writes what the others queued (h2's frames, WINDOW_UPDATEs,
  DATA written from asyncio): neither the reader nor the event loop may block
  on a full socket;
* a tunnel piped to a socket adds a *pump* and a *drain* thread;
  the pump sends its DATA frames itself, under `send_lock` (pipe.py).

Two locks. `lock` guards h2, the stream table, the windows and the queue; it
is held for short sections only, never across I/O (each tunnel's Condition
shares it). `send_lock` serialises writes to the socket; whoever holds it
sends the queue before its own frame, in one TLS write, so frames leave in
the order they were queued (HPACK depends on it). The reader never waits for
`send_lock`: that is what keeps two peers that both send bulk from
deadlocking.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from agents.hbone import frames as fr
from agents.hbone.stream import HboneError, Tunnel, resolve_soon
from agents.hbone.tls import TlsChannel

STREAM_WINDOW = 8 << 20        # per stream: what one slow tunnel may buffer here
CONNECTION_WINDOW = 32 << 20   # per connection
RECV_BUFFER = 1 << 20
MIN_PIECE = 128 << 10          # DATA is handed on in pieces of at least this (or whole frames)
MAX_HEADER_LIST = 64 << 10

RequestCallback = Callable[[Tunnel, list[tuple[bytes, bytes]]], None]


def call_in_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """Run `fn(*args)` in `loop` from any thread; a closed loop means nobody is listening."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass


def start_thread(target: Callable[..., Any], *args: Any, name: str) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    return thread


class Connection:
    """An established HBONE connection (client or server side)."""

    def __init__(self, tls: TlsChannel, *, client: bool, loop: asyncio.AbstractEventLoop,
                 on_request: RequestCallback | None = None, max_concurrent_streams: int = 100,
                 peer_identity: str | None = None, local_identity: str | None = None) -> None:
        self.tls = tls
        self.client = client
        self.loop = loop
        self.on_request = on_request
        self.peer_identity = peer_identity
        self.local_identity = local_identity
        try:
            self.peer_addr: tuple[str, int] | None = tls.getpeername()[:2]
        except OSError:
            self.peer_addr = None
        self.lock = threading.Lock()
        self.send_lock = threading.Lock()
        self.streams: dict[int, Tunnel] = {}
        self.closed = False
        self.goaway = False
        self.error: str | None = None
        self.settings_received = asyncio.Event()
        self.on_closed: Callable[[Connection], None] | None = None
        # outbound
        self._outq: list[bytes] = []
        self.outq_bytes = 0
        self._wake = threading.Event()
        self._closing = False
        self._close_error: str | None = None
        self.send_window = fr.DEFAULT_WINDOW
        self.peer_max_frame = fr.DEFAULT_MAX_FRAME
        self.peer_initial_window = fr.DEFAULT_WINDOW
        self.window_waiters: set[Tunnel] = set()
        self.drain_waiters: list[asyncio.Future[None]] = []
        # inbound
        self.in_window = fr.InboundWindow(CONNECTION_WINDOW)
        self._splitter = fr.FrameSplitter(expect_preface=not client, max_frame_size=fr.MAX_FRAME_LIMIT,
                                          min_piece=MIN_PIECE)
        config = h2.config.H2Configuration(client_side=client, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config)
        local = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
                 h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                 h2.settings.SettingCodes.MAX_FRAME_SIZE: fr.MAX_FRAME_LIMIT,
                 h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST}
        if client:
            local[h2.settings.SettingCodes.ENABLE_PUSH] = 0
        self.h2.local_settings = h2.settings.Settings(client=client, initial_values=local)
        self.h2.initiate_connection()
        self._enqueue_locked(self.h2.data_to_send() + fr.window_update(0, CONNECTION_WINDOW - fr.DEFAULT_WINDOW))
        self._threads_left = 2
        start_thread(self._read_loop, name="hbone-reader")
        start_thread(self._send_loop, name="hbone-sender")

    # ------------------------------------------------------------ public

    @property
    def alive(self) -> bool:
        return not (self.closed or self.goaway or self._closing)

    def has_capacity(self) -> bool:
        """True when a new stream may be opened (client side: the peer's MAX_CONCURRENT_STREAMS)."""
        with self.lock:
            if not self.alive:
                return False
            return self.h2.open_outbound_streams < self.h2.remote_settings.max_concurrent_streams

    def open_stream(self, headers: list[tuple[str, str]]) -> Tunnel:
        """Send a request's HEADERS on a new stream (client side); the tunnel's `response` resolves later."""
        with self.lock:
            if not self.alive:
                raise HboneError(None, "connection closed")
            sid = self.h2.get_next_available_stream_id()
            self.h2.send_headers(sid, headers)  # TooManyStreamsError: the caller tries another connection
            tunnel = Tunnel(self, sid, self.peer_initial_window, fr.InboundWindow(STREAM_WINDOW))
            tunnel.response = self.loop.create_future()
            self.streams[sid] = tunnel
            self._enqueue_locked(self.h2.data_to_send(), wake=False)
        self.kick()
        return tunnel

    def close(self, error_code: int = fr.NO_ERROR) -> None:
        """GOAWAY, then close once the queue is written (non-blocking)."""
        with self.lock:
            if self.closed or self._closing:
                return
            self._closing = True
            try:
                self.h2.close_connection(error_code)
                self._enqueue_locked(self.h2.data_to_send())
            except h2.exceptions.ProtocolError:
                pass
        self._wake.set()

    # ------------------------------------------------------------ sending

    def _enqueue_locked(self, data: bytes, wake: bool = True) -> None:
        if data:
            self._outq.append(data)
            self.outq_bytes += len(data)
            if wake:
                self._wake.set()

    def kick(self) -> None:
        """Write the queue now if nobody else is writing, without blocking; else the sender thread will.

        For the reader and the event loop: a thread wake-up per WINDOW_UPDATE costs more than
        encrypting and sending it right here.
        """
        if not self.send_lock.acquire(blocking=False):
            self._wake.set()
            return
        try:
            items = self._take_queue()
            if items and not self.tls.try_send(*items):
                self._wake.set()  # the socket is full: the sender thread finishes the job
        except (OSError, ValueError) as exc:
            self.fail(f"send failed: {exc}")
        finally:
            self.send_lock.release()

    def h2_call_locked(self, fn: Callable[..., Any], *args: Any, wake: bool = True, **kwargs: Any) -> bool:
        """Call an h2 method (lock held) and queue what it wrote; False if h2 refused (stream gone).

        With wake=False the caller calls `kick()` once it released the lock.
        """
        try:
            fn(*args, **kwargs)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            return False
        finally:
            self._enqueue_locked(self.h2.data_to_send(), wake=wake)
        return True

    async def drained(self) -> None:
        """Wait until the queue and the TLS backlog are on the wire (asyncio writers' backpressure)."""
        with self.lock:
            if self.closed or not (self._outq or self.tls.backlog):
                return
            fut = self.loop.create_future()
            self.drain_waiters.append(fut)
        self._wake.set()
        await fut

    def send_direct(self, frame: memoryview) -> None:
        """Send queued frames and then `frame` (blocking; pump threads only)."""
        with self.send_lock:
            items = self._take_queue() if self._outq else []
            try:
                self.tls.send(*items, frame)
            except (OSError, ValueError) as exc:
                self.fail(f"send failed: {exc}")
                raise HboneError(None, "connection lost") from exc

    def flush(self) -> None:
        """Write the queue now (blocking; never from the event loop or the reader)."""
        with self.send_lock:
            self._flush_locked()

    def _take_queue(self) -> list[bytes]:
        with self.lock:
            items, self._outq, self.outq_bytes = self._outq, [], 0
        if len(items) > 1 and sum(map(len, items)) < 65536:
            items = [b"".join(items)]  # one TLS record for a handful of control frames
        return items

    def _flush_locked(self) -> None:
        while (items := self._take_queue()) or self.tls.backlog:
            try:
                self.tls.send(*items)
            except (OSError, ValueError) as exc:
                self.fail(f"send failed: {exc}")
                return
        if self.drain_waiters:
            with self.lock:
                waiters, self.drain_waiters = self.drain_waiters, []
            for fut in waiters:
                resolve_soon(self.loop, fut)

    def _send_loop(self) -> None:
        try:
            while not self.closed:
                self._wake.wait()
                self._wake.clear()
                self.flush()
                if self._closing and not self._outq:
                    self.fail(self._close_error)
        finally:
            self._thread_done()

    # ------------------------------------------------------------ receiving

    def _read_loop(self) -> None:
        buf = bytearray(RECV_BUFFER)
        view = memoryview(buf)
        pos = end = 0
        recv_into = self.tls.recv_into
        split = self._splitter.split
        try:
            while True:
                if len(buf) - end < 65536:
                    if pos:
                        view[:end - pos] = view[pos:end]
                        pos, end = 0, end - pos
                    if len(buf) - end < 65536:  # a big non-DATA frame: grow
                        view.release()
                        buf = buf + bytes(len(buf))
                        view = memoryview(buf)
                n = recv_into(view[end:])
                if not n:
                    break
                end += n
                pos, events = split(view, pos, end)
                for ev in events:
                    if ev[0] == fr.EV_DATA:
                        self._on_data(ev[1], ev[2], ev[3], ev[4], ev[5])
                    elif ev[0] == fr.EV_WINDOW:
                        self._on_window(ev[1], ev[2])
                    else:
                        self._feed_h2(ev[1])
                if pos == end:
                    pos = end = 0
            self.fail("connection closed by peer" if not self._closing else None)
        except fr.ConnectionError_ as exc:
            self._protocol_error(exc.code, str(exc))
        except h2.exceptions.ProtocolError as exc:
            self._protocol_error(fr.PROTOCOL_ERROR, f"protocol error: {exc}")
        except (OSError, ValueError, ssl.SSLError) as exc:
            self.fail(None if self._closing or self.closed else f"read failed: {exc}")
        finally:
            view.release()
            self._thread_done()

    def _on_data(self, sid: int, payload: memoryview, last: bool, end_stream: bool, flow: int) -> None:
        with self.lock:
            self.in_window.received(flow)
            tunnel = self.streams.get(sid)
            if tunnel is not None and not (tunnel.accepting_data() and tunnel.in_window_received(flow)):
                tunnel = None  # not open for data, or reset just now for overrunning its window
        if tunnel is None:  # not ours (closed, refused, unknown): h2 decides, we only return the credit
            self.credit(None, flow)
            if last:
                self._feed_h2(fr.empty_data(sid, end_stream))
            return
        # credit what the target took at once, and padding; queued bytes are credited once written
        taken = tunnel.deliver(payload) if payload else 0
        if taken or flow > len(payload):
            self.credit(tunnel, taken + flow - len(payload))
        if end_stream:
            tunnel.deliver_eof()
            self._feed_h2(fr.empty_data(sid, True))

    def credit(self, tunnel: Tunnel | None, n: int) -> None:
        """Bytes were handed on: return flow-control credit (batched WINDOW_UPDATEs)."""
        update = b""
        with self.lock:
            inc = self.in_window.consumed(n)
            if inc:
                update = fr.window_update(0, inc)
            if tunnel is not None and not tunnel.remote_closed():
                inc = tunnel.in_window.consumed(n)
                if inc:
                    update += fr.window_update(tunnel.stream_id, inc)
            if update:
                self._enqueue_locked(update, wake=False)
        if update:
            self.kick()

    def _on_window(self, sid: int, increment: int) -> None:
        with self.lock:
            if sid == 0:
                if increment == 0:
                    raise fr.ConnectionError_(fr.PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
                self.send_window += increment
                if self.send_window > fr.MAX_WINDOW:
                    raise fr.ConnectionError_(fr.FLOW_CONTROL_ERROR, "connection window overflow")
                waiters, self.window_waiters = self.window_waiters, set()
                for tunnel in waiters:
                    tunnel.notify_locked()
                return
            tunnel = self.streams.get(sid)
            if tunnel is None:
                return  # closed or never ours: ignored (RFC 9113 §6.9)
            if increment == 0:
                tunnel.reset_locked(fr.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            elif tunnel.send_window + increment > fr.MAX_WINDOW:
                tunnel.reset_locked(fr.FLOW_CONTROL_ERROR, "stream window overflow")
            else:
                tunnel.send_window += increment
                tunnel.notify_locked()

    def _feed_h2(self, data: bytes | memoryview) -> None:
        with self.lock:
            try:
                events = self.h2.receive_data(data)
            finally:
                self._enqueue_locked(self.h2.data_to_send())
            for event in events:
                self._on_h2_event(event)

    def _on_h2_event(self, event: h2.events.Event) -> None:  # lock held
        if isinstance(event, h2.events.RequestReceived):
            tunnel = Tunnel(self, event.stream_id, self.peer_initial_window, fr.InboundWindow(STREAM_WINDOW))
            tunnel.open_for_data = True
            self.streams[event.stream_id] = tunnel
            if self.on_request is not None:
                call_in_loop(self.loop, self.on_request, tunnel, list(event.headers or ()))
        elif isinstance(event, h2.events.ResponseReceived):
            tunnel = self.streams.get(event.stream_id)
            if tunnel is not None:
                tunnel.on_response_locked(list(event.headers or ()))
        elif isinstance(event, h2.events.StreamEnded):
            tunnel = self.streams.get(event.stream_id)
            if tunnel is not None:
                tunnel.deliver_eof_locked()
        elif isinstance(event, h2.events.StreamReset):
            tunnel = self.streams.get(event.stream_id)
            if tunnel is not None:
                tunnel.retryable = event.error_code == fr.REFUSED_STREAM
                tunnel.on_reset_locked(f"stream reset by peer (error {event.error_code})")
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._on_settings_locked(event.changed_settings)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = True
            last = event.last_stream_id or 0
            for sid, tunnel in list(self.streams.items()):
                if sid > last or event.error_code:
                    tunnel.retryable = sid > last
                    tunnel.on_reset_locked(f"connection going away (error {event.error_code})")

    def _on_settings_locked(self, changed: dict[Any, Any]) -> None:
        codes = h2.settings.SettingCodes
        if codes.INITIAL_WINDOW_SIZE in changed:
            new = changed[codes.INITIAL_WINDOW_SIZE].new_value
            delta, self.peer_initial_window = new - self.peer_initial_window, new
            for tunnel in self.streams.values():
                tunnel.send_window += delta
                if tunnel.send_window > fr.MAX_WINDOW:
                    raise fr.ConnectionError_(fr.FLOW_CONTROL_ERROR, "stream window overflow from SETTINGS")
                tunnel.notify_locked()
        if codes.MAX_FRAME_SIZE in changed:
            self.peer_max_frame = changed[codes.MAX_FRAME_SIZE].new_value
        call_in_loop(self.loop, self.settings_received.set)

    # ------------------------------------------------------------ teardown

    def _protocol_error(self, code: int, message: str) -> None:
        """The peer broke HTTP/2: GOAWAY (written by the sender thread), then close."""
        with self.lock:
            if self.closed or self._closing:
                return
            try:
                self.h2.close_connection(code)
            except h2.exceptions.ProtocolError:
                pass
            self._enqueue_locked(self.h2.data_to_send())
            self._closing = True
            self._close_error = message
        timer = threading.Timer(2.0, self.fail, (message,))  # in case the peer does not read
        timer.daemon = True
        timer.start()

    def fail(self, error: str | None) -> None:
        """The connection is over: every open tunnel fails with `error` (None: an orderly close)."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.error = error
            tunnels = list(self.streams.values())
            for tunnel in tunnels:
                tunnel.on_reset_locked(error or "connection closed")
            self.streams.clear()
            waiters, self.drain_waiters = self.drain_waiters, []
        for fut in waiters:
            resolve_soon(self.loop, fut)
        call_in_loop(self.loop, self.settings_received.set)  # a client waiting for SETTINGS sees `closed`
        try:
            self.tls.shutdown(socket.SHUT_RDWR)
        except (OSError, ValueError):
            pass
        self._wake.set()
        if self.on_closed is not None:
            call_in_loop(self.loop, self.on_closed, self)

    def _thread_done(self) -> None:
        with self.lock:
            self._threads_left -= 1
            last = self._threads_left == 0
        if last:
            try:
                self.tls.close()
            except OSError:
                pass
