"""L4 toxics (Toxiproxy's catalogue) applied to one proxied connection, in user space.

A connection that a fault hits is not put on the threaded fast path: a
`ToxicLink` moves its bytes with two asyncio copy loops instead, one per
direction (upstream: client -> server, downstream: server -> client), each a
chain of async generators, one per toxic:

* latency    `latency` ms +- `jitter` ms per chunk, pipelined (a queue, so bulk still flows)
* bandwidth  `rate` KB/s (1 KB = 1000 bytes, as Toxiproxy), in pieces of a tenth of a second
* slicer     chunks of `average_size` +- `size_variation` bytes, `delay` microseconds apart
* limit_data the link closes once `bytes` passed in that direction
* timeout    data is dropped; after `timeout` ms (0: never) the link closes
* reset_peer after `timeout` ms the link is reset (RST both ways), whatever the direction

Each toxic asks `is_on(fault)` as it goes: a fault removed (or expired) stops acting on
connections it already holds, as Toxiproxy's toxics do. The ends are a socket (`SocketEnd`)
or, towards an HBONE tunnel, the reader/writer pair `agents.hbone.pipe` copies from
(`TunnelFacing`), so a reset here becomes a reset stream there.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from agents.common.faults import AgentFault

CHUNK = 64 << 10
_LINGER_RESET = struct.pack("ii", 1, 0)
L4_KINDS = ("latency", "bandwidth", "slicer", "limit_data", "timeout", "reset_peer")

IsOn = Callable[[AgentFault], bool]
Chunks = AsyncIterator[bytes]


class LinkStop(Exception):
    """A toxic ends the link: `reset` sends RST both ways, else both sides see a clean close."""

    def __init__(self, reason: str, reset: bool) -> None:
        super().__init__(reason)
        self.reset = reset


class End(Protocol):
    """One side of a link."""

    async def recv(self) -> bytes: ...
    async def send(self, data: bytes) -> None: ...
    def send_eof(self) -> None: ...
    def close(self, reset: bool) -> None: ...


class SocketEnd:
    """A connected TCP socket, driven by the event loop."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.loop = asyncio.get_running_loop()

    async def recv(self) -> bytes:
        return await self.loop.sock_recv(self.sock, CHUNK)

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    def send_eof(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self, reset: bool) -> None:
        try:
            if reset:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            self.sock.close()
        except OSError:
            pass


class TunnelFacing:
    """The side of a link that faces an HBONE tunnel: `reader`/`writer` for `agents.hbone.pipe`.

    What the link sends here, `reader.read()` returns to the pipe (which writes it into the
    tunnel); what the pipe writes (from the tunnel), `recv()` returns to the link. A reset link
    makes `reader.read()` raise, and the pipe resets the stream.
    """

    def __init__(self, depth: int = 16) -> None:
        self._out: asyncio.Queue[bytes | None] = asyncio.Queue(depth)   # link -> tunnel
        self._in: asyncio.Queue[bytes | None] = asyncio.Queue(depth)    # tunnel -> link
        self._reset = False
        self._closed = False
        self._tunnel_eof = False
        self.reader = _Reader(self)
        self.writer = _Writer(self)

    async def recv(self) -> bytes:
        if self._reset:
            raise ConnectionResetError("the tunnel side is gone")
        item = await self._in.get()
        if item is None:
            if self._reset or not self._tunnel_eof:
                raise ConnectionResetError("the tunnel side is gone")
            return b""
        return item

    async def send(self, data: bytes) -> None:
        if self._reset or self._closed:
            raise ConnectionResetError("the tunnel side is gone")
        await self._out.put(data)

    def send_eof(self) -> None:
        self._put_later(b"")

    def close(self, reset: bool) -> None:
        if reset:
            self._reset = True
            _put_nowait_last(self._out, None)
        else:
            self._put_later(b"")  # after the data still queued: a clean close delivers it
        _put_nowait_last(self._in, None)

    def _put_later(self, item: bytes) -> None:
        try:
            self._out.put_nowait(item)
        except asyncio.QueueFull:
            asyncio.ensure_future(self._out.put(item))


def _put_nowait_last(q: asyncio.Queue[Any], item: Any) -> None:
    """Queue an end marker even when the queue is full (drop the oldest data: the link is ending anyway)."""
    while True:
        try:
            q.put_nowait(item)
            return
        except asyncio.QueueFull:
            q.get_nowait()


class _Reader:
    def __init__(self, face: TunnelFacing) -> None:
        self.face = face

    async def read(self, n: int = -1) -> bytes:
        item = await self.face._out.get()
        if item is None:
            _put_nowait_last(self.face._out, None)  # stays reset for any later read
            raise ConnectionResetError("connection reset by a reset_peer fault")
        if item == b"":
            _put_nowait_last(self.face._out, b"")  # EOF stays EOF for any later read
        return item


class _Writer:
    transport = None  # not a socket transport: the pipe copies with coroutines

    def __init__(self, face: TunnelFacing) -> None:
        self.face = face
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if self.face._reset:
            raise ConnectionResetError("connection reset by a reset_peer fault")
        self._pending.append(bytes(data))

    async def drain(self) -> None:
        while self._pending:
            if self.face._reset:
                raise ConnectionResetError("connection reset by a reset_peer fault")
            await self.face._in.put(self._pending.pop(0))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.face._tunnel_eof = True
        later = False
        for item in [*self._pending, None]:  # the pipe drains before write_eof; keep the order anyway
            later = later or self.face._in.full()
            if later:
                asyncio.ensure_future(self.face._in.put(item))  # queued putters keep their order
            else:
                self.face._in.put_nowait(item)
        self._pending.clear()

    def close(self) -> None:
        self.face._closed = True
        _put_nowait_last(self.face._in, None)

    def is_closing(self) -> bool:
        return self.face._closed


class ToxicLink:
    """Copies between a client side and a server side through the toxics of `faults`."""

    def __init__(self, client: End, server: End, faults: Sequence[AgentFault], is_on: IsOn,
                 rng: random.Random | None = None) -> None:
        self.client, self.server = client, server
        self.faults = [f for f in faults if f.kind in L4_KINDS]
        self.is_on = is_on
        self.rng = rng or random.Random()
        self.counts = [0, 0]  # upstream (client -> server), downstream
        self.error: str | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._done = asyncio.Event()
        self._stop: LinkStop | None = None

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        return task

    def stop(self, reason: str, reset: bool) -> None:
        """End the link now (a timer toxic fired)."""
        if self._stop is None:
            self._stop = LinkStop(reason, reset)
        self._done.set()

    async def run(self) -> tuple[int, int, str | None]:
        """Copy until both directions end or a toxic stops the link; closes both ends.

        Returns (upstream bytes, downstream bytes, error or None) like `relay.splice`.
        """
        for f in self.faults:
            if f.kind == "reset_peer":
                self.spawn(self._timer(f, float(f.params.get("timeout", 0)) / 1000.0, "reset_peer", True))
        left = [2]

        async def direction(index: int, src: End, dst: End) -> None:
            try:
                chunks: Chunks = _recv_chunks(src)
                for f in self.faults:
                    if f.direction in ("both", ("upstream", "downstream")[index]):
                        wrap = WRAPPERS.get(f.kind)
                        if wrap is not None:
                            chunks = wrap(chunks, f, self)
                async for chunk in chunks:
                    await dst.send(chunk)
                    self.counts[index] += len(chunk)
                dst.send_eof()
            except LinkStop as stop:
                if self._stop is None:
                    self._stop = stop
            except OSError as e:
                if self._stop is None:
                    self.error = f"{('client', 'upstream')[index]} side: {e.strerror or e}"
            finally:
                left[0] -= 1
                if left[0] == 0 or self._stop is not None or self.error is not None:
                    self._done.set()
        self.spawn(direction(0, self.client, self.server))
        self.spawn(direction(1, self.server, self.client))
        try:
            await self._done.wait()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            reset = self.error is not None or (self._stop is not None and self._stop.reset)
            if self._stop is not None and self.error is None:
                self.error = str(self._stop) if self._stop.reset else None
            self.client.close(reset)
            self.server.close(reset)
        return self.counts[0], self.counts[1], self.error

    async def _timer(self, fault: AgentFault, seconds: float, reason: str, reset: bool) -> None:
        await asyncio.sleep(seconds)
        if self.is_on(fault):
            self.stop(f"{reason} fault {fault.id}", reset)


async def _recv_chunks(end: End) -> Chunks:
    while data := await end.recv():
        yield data


# ---------------------------------------------------------------- the toxics (one async generator each)


async def _latency(chunks: Chunks, f: AgentFault, link: ToxicLink) -> Chunks:
    base = float(f.params.get("latency", 0)) / 1000.0
    jitter = float(f.params.get("jitter", 0)) / 1000.0
    queue: asyncio.Queue[tuple[float, bytes | None, BaseException | None]] = asyncio.Queue(64)

    async def feed() -> None:
        try:
            async for c in chunks:
                delay = max(0.0, base + link.rng.uniform(-jitter, jitter)) if link.is_on(f) else 0.0
                await queue.put((time.monotonic() + delay, c, None))
            await queue.put((0.0, None, None))
        except (OSError, LinkStop) as e:
            await queue.put((0.0, None, e))
    link.spawn(feed())
    last = 0.0
    while True:
        due, chunk, error = await queue.get()
        if error is not None:
            raise error
        if chunk is None:
            return
        due = max(due, last)  # jitter never reorders bytes
        last = due
        wait = due - time.monotonic()
        if wait > 0 and link.is_on(f):
            await asyncio.sleep(wait)
        yield chunk


async def _bandwidth(chunks: Chunks, f: AgentFault, link: ToxicLink) -> Chunks:
    rate = float(f.params.get("rate", 0)) * 1000.0  # bytes per second
    piece = max(1, int(rate / 10))
    next_at = time.monotonic()
    async for c in chunks:
        if rate <= 0 or not link.is_on(f):
            yield c
            continue
        for start in range(0, len(c), piece):
            part = c[start:start + piece]
            next_at = max(next_at, time.monotonic()) + len(part) / rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            yield part


async def _slicer(chunks: Chunks, f: AgentFault, link: ToxicLink) -> Chunks:
    average = max(1, int(f.params.get("average_size", 1)))
    variation = max(0, min(int(f.params.get("size_variation", 0)), average - 1))
    delay = float(f.params.get("delay", 0)) / 1_000_000.0
    async for c in chunks:
        if not link.is_on(f):
            yield c
            continue
        start = 0
        while start < len(c):
            size = average + link.rng.randint(-variation, variation) if variation else average
            yield c[start:start + size]
            start += size
            if delay and start < len(c):
                await asyncio.sleep(delay)


async def _limit_data(chunks: Chunks, f: AgentFault, link: ToxicLink) -> Chunks:
    limit = int(f.params.get("bytes", 0))
    passed = 0
    async for c in chunks:
        if not link.is_on(f):
            yield c
            continue
        left = limit - passed
        if len(c) >= left:
            if left:
                yield c[:left]
            raise LinkStop(f"limit_data fault {f.id}: {limit} bytes passed", reset=False)
        passed += len(c)
        yield c
    if link.is_on(f) and passed >= limit:
        raise LinkStop(f"limit_data fault {f.id}: {limit} bytes passed", reset=False)


async def _timeout(chunks: Chunks, f: AgentFault, link: ToxicLink) -> Chunks:
    timeout = float(f.params.get("timeout", 0)) / 1000.0
    if timeout > 0:
        link.spawn(link._timer(f, timeout, "timeout", False))
    async for c in chunks:
        if link.is_on(f):
            continue  # held: nothing gets through while the fault is on
        yield c


WRAPPERS: dict[str, Callable[[Chunks, AgentFault, ToxicLink], Chunks]] = {
    "latency": _latency, "bandwidth": _bandwidth, "slicer": _slicer, "limit_data": _limit_data,
    "timeout": _timeout,
}


# ---------------------------------------------------------------- the places a proxy calls


async def toxic_splice(client: socket.socket, upstream: socket.socket, faults: Sequence[AgentFault],
                       is_on: IsOn) -> tuple[int, int, str | None]:
    """`relay.splice` with toxics: (request bytes, response bytes, error or None); closes both sockets."""
    return await ToxicLink(SocketEnd(client), SocketEnd(upstream), faults, is_on).run()


class TunnelEnd:
    """An HBONE tunnel (`agents.hbone.Tunnel`) as the server side of a link."""

    def __init__(self, tunnel: Any) -> None:
        self.tunnel = tunnel

    async def recv(self) -> bytes:
        try:
            return await self.tunnel.read()
        except Exception as e:  # HboneError: the stream was reset
            raise ConnectionResetError(str(e)) from None

    async def send(self, data: bytes) -> None:
        try:
            await self.tunnel.write(data)
        except Exception as e:
            raise ConnectionResetError(str(e)) from None

    def send_eof(self) -> None:
        try:
            self.tunnel.write_eof()
        except Exception:
            pass

    def close(self, reset: bool) -> None:
        self.tunnel.abort() if reset else self.tunnel.close()


async def toxic_pipe_socket(tunnel: Any, client: socket.socket, faults: Sequence[AgentFault],
                            is_on: IsOn) -> tuple[int, int, str | None]:
    """`pipe_socket` with toxics, the client socket on one side and the tunnel on the other."""
    return await ToxicLink(SocketEnd(client), TunnelEnd(tunnel), faults, is_on).run()


def toxic_target(upstream: socket.socket, faults: Sequence[AgentFault],
                 is_on: IsOn) -> tuple[tuple[Any, Any], asyncio.Task[tuple[int, int, str | None]]]:
    """A (reader, writer) target for an accepted HBONE CONNECT whose workload socket gets toxics.

    The tunnel is the client side. Returns the pair for `ConnectDecision.accept` and the link's task.
    """
    face = TunnelFacing()
    task = asyncio.ensure_future(ToxicLink(face, SocketEnd(upstream), faults, is_on).run())
    return (face.reader, face.writer), task
