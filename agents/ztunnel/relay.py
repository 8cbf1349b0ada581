"""Plain TCP legs of the ztunnel: dialling a workload from a chosen source address, and splicing two sockets.

`splice` moves bytes both ways with one thread per direction over blocking
sockets (OpenSSL is not involved, and `recv_into`/`sendall` release the GIL, so
bulk costs a few Python operations per 256 KB). Half-close is kept: when one
side ends its stream, the other side's write half is shut, and the splice ends
when both directions have. When a direction fails, both sockets are reset
(SO_LINGER 0), as a proxy in the middle of a TCP connection should.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import threading

CHUNK = 256 << 10
_LINGER_RESET = struct.pack("ii", 1, 0)


def can_bind_source(ip: str) -> bool:
    """Whether the ztunnel may connect *from* `ip` so the workload sees its real client (loopback only)."""
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


async def connect_from(address: tuple[str, int], source_ip: str | None, timeout: float = 5.0,
                       mark: int | None = None) -> socket.socket:
    """A TCP connection to `address`, bound to (source_ip, 0) when given; raises OSError (TimeoutError).

    `mark` (SO_MARK) tags it as the proxy's own, so transparent capture's iptables rules let it through.
    """
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        if source_ip is not None:
            # The same source address as the client's: the kernel picks a free port for it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((source_ip, 0))
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, address), timeout)
    except BaseException:
        sock.close()
        raise
    return sock


async def splice(downstream: socket.socket, upstream: socket.socket) -> tuple[int, int, str | None]:
    """Pipe both ways until both directions end; closes both sockets.

    Returns (request bytes: downstream → upstream, response bytes: upstream → downstream, error or None).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    state = _SpliceState(downstream, upstream, loop, done)
    for sock in (downstream, upstream):
        sock.setblocking(True)
    threading.Thread(target=state.copy, args=(0, downstream, upstream), name="ztunnel-up", daemon=True).start()
    threading.Thread(target=state.copy, args=(1, upstream, downstream), name="ztunnel-down", daemon=True).start()
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        state.fail("ztunnel shutting down")
        raise
    return state.counts[0], state.counts[1], state.error


class _SpliceState:
    """What the two copy threads of one splice share."""

    def __init__(self, a: socket.socket, b: socket.socket, loop: asyncio.AbstractEventLoop,
                 done: asyncio.Future[None]) -> None:
        self.socks = (a, b)
        self.loop, self.done = loop, done
        self.counts = [0, 0]
        self.error: str | None = None
        self.lock = threading.Lock()
        self.left = 2

    def copy(self, index: int, src: socket.socket, dst: socket.socket) -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        try:
            while True:
                n = src.recv_into(buf)
                if not n:
                    break
                dst.sendall(view[:n])
                self.counts[index] += n  # only this thread writes this slot
            dst.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.fail(f"{'client' if index == 0 else 'upstream'} side: {e.strerror or e}")
        finally:
            with self.lock:
                self.left -= 1
                last = self.left == 0
            if last:
                self._finish()

    def fail(self, reason: str) -> None:
        """Record the first error and wake the other direction (shutdown interrupts a blocked recv)."""
        with self.lock:
            if self.error is None:
                self.error = reason
        for sock in self.socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _finish(self) -> None:
        for sock in self.socks:
            try:
                if self.error is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                sock.close()
            except OSError:
                pass

        def resolve() -> None:
            if not self.done.done():
                self.done.set_result(None)
        try:
            self.loop.call_soon_threadsafe(resolve)
        except RuntimeError:
            pass  # the loop is gone: the agent is exiting
