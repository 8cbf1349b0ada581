"""The capture sockets of explicit capture: one per service VIP:port (outbound) and workload capture:port (inbound).

`CaptureListeners.apply(wanted)` is transactional: it binds every new socket
first and, if one cannot be bound, closes those it just bound and raises, so a
config that cannot be served is NACKed with the old sockets untouched. Removing
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
        bound: dict[ListenKey, socket.socket] = {}
        for key in sorted(to_bind):
            try:
                bound[key] = _bind(key[1], key[2])
            except OSError as e:
                for sock in bound.values():
                    sock.close()
                raise ConfigError(f"cannot bind {key[0]} capture {key[1]}:{key[2]}: {e.strerror or e}") from None
        for key in to_close:
            self._accepting.pop(key).cancel()
            self.sockets.pop(key).close()
        for key, sock in bound.items():
            self.sockets[key] = sock
            self._accepting[key] = asyncio.create_task(self._accept(key, sock), name=f"capture {key}")
        return to_bind, to_close

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


def _bind(ip: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.create_server((ip, port), family=family, backlog=BACKLOG, reuse_port=False)
    sock.setblocking(False)
    return sock
