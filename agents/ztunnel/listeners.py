"""The capture sockets: explicit capture binds one per service VIP:port (outbound) and workload capture:port
(inbound); transparent capture binds two wildcard ones, 0.0.0.0:15001 and 0.0.0.0:15006 (agents/ztunnel/transparent.py).

`CaptureListeners.apply(wanted)` is transactional: it binds every new socket
first and, if one cannot be bound, closes those it just bound and raises, so a
config that cannot be served is NACKed with the old sockets untouched (when the
capture changes, old sockets on the new wildcard's port are closed first and
rebound if that fails). Removing
a listener stops accepting on it; connections it accepted carry on.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from agents.ztunnel.config import ConfigError

log = logging.getLogger("meshlab.ztunnel.listeners")

ListenKey = tuple[str, str, int]  # (kind: "outbound" | "inbound", ip, port)
Handler = Callable[[socket.socket], Awaitable[None]]
BACKLOG = 512
# Inbound capture sockets are shared (SO_REUSEPORT) with a workload's sidecar while its namespace switches
# between ambient and sidecar mode: both proxies serve the address until the old one lets go, so no
# plaintext caller is refused during the switch.
SHARED_KIND = "inbound"


class CaptureListeners:
    """Bound capture sockets, their accept loops, and the connections they handed out."""

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers
        self.sockets: dict[ListenKey, socket.socket] = {}
        self._accepting: dict[ListenKey, asyncio.Task[None]] = {}
        self._connections: set[asyncio.Task[None]] = set()

    def plan(self, wanted: set[ListenKey]) -> tuple[set[ListenKey], set[ListenKey]]:
        """(to bind, to close) to go from the current sockets to `wanted`."""
        return wanted - set(self.sockets), set(self.sockets) - wanted

    def apply(self, wanted: set[ListenKey]) -> tuple[set[ListenKey], set[ListenKey]]:
        """Bind and close sockets so exactly `wanted` are listening; raises ConfigError, changing nothing."""
        to_bind, to_close = self.plan(wanted)
        # A wildcard socket and specific ones on its port cannot be bound together (the capture changed
        # between explicit and transparent): those old ones go first, and come back if the new ones fail.
        clashing = {old for old in to_close if any(_clash(old, new) for new in to_bind)}
        for key in clashing:
            self._stop(key)
        try:
            bound = _bind_all(to_bind)
        except ConfigError:
            try:
                self._serve_sockets(_bind_all(clashing))
            except ConfigError as e:
                log.warning("could not restore the previous capture sockets: %s", e)
            raise
        for key in to_close - clashing:
            self._stop(key)
        self._serve_sockets(bound)
        return to_bind, to_close

    def _stop(self, key: ListenKey) -> None:
        self._accepting.pop(key).cancel()
        self.sockets.pop(key).close()

    def _serve_sockets(self, bound: dict[ListenKey, socket.socket]) -> None:
        for key, sock in bound.items():
            self.sockets[key] = sock
            self._accepting[key] = asyncio.create_task(self._accept(key, sock), name=f"capture {key}")

    async def close(self) -> None:
        """Stop accepting and cut the connections in flight (the agent is exiting)."""
        tasks = [*self._accepting.values(), *self._connections]
        for task in tasks:
            task.cancel()
        for sock in self.sockets.values():
            sock.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.sockets.clear()
        self._accepting.clear()

    async def _accept(self, key: ListenKey, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        handler = self.handlers[key[0]]
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as e:  # EMFILE and friends: back off instead of spinning
                log.warning("accept on %s %s:%d failed: %s", *key, e.strerror or e)
                await asyncio.sleep(0.2)
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.create_task(self._serve(handler, conn, key))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    @staticmethod
    async def _serve(handler: Handler, conn: socket.socket, key: ListenKey) -> None:
        try:
            await handler(conn)
        except OSError as e:  # the client went away mid-setup: expected, one line
            log.info("%s connection on %s:%d ended: %s", key[0], key[1], key[2], e.strerror or e)
            conn.close()
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception:
            log.exception("%s connection on %s:%d failed", key[0], key[1], key[2])
            conn.close()


def _clash(a: ListenKey, b: ListenKey) -> bool:
    """Two listen keys that cannot both be bound: the same port, and one of them on the wildcard address."""
    return a[2] == b[2] and bool({a[1], b[1]} & {"0.0.0.0", "::"})


def _bind_all(keys: set[ListenKey]) -> dict[ListenKey, socket.socket]:
    """Bind every key, or none: ConfigError naming the one that failed."""
    bound: dict[ListenKey, socket.socket] = {}
    for key in sorted(keys):
        try:
            bound[key] = _bind(key[1], key[2], reuse_port=key[0] == SHARED_KIND)
        except OSError as e:
            for sock in bound.values():
                sock.close()
            raise ConfigError(f"cannot bind {key[0]} capture {key[1]}:{key[2]}: {e.strerror or e}") from None
    return bound


def _bind(ip: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.create_server((ip, port), family=family, backlog=BACKLOG, reuse_port=reuse_port)
    sock.setblocking(False)
    return sock
