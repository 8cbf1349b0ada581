"""An asyncio stream server that knows its open connections, so closing it ends them cleanly."""

from __future__ import annotations

import asyncio


class TrackedServer:
    """Base of the agents' small servers (control socket, resolver, admin): close() ends every connection.

    Closing a connection's transport ends its read loop; close() then waits for those loops, so none
    is cancelled half-way when the event loop shuts down.
    """

    def __init__(self) -> None:
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._connections: set[asyncio.Task[None]] = set()

    async def _listen_tcp(self, host: str, port: int, limit: int) -> int:
        """Serve `self._serve` on host:port; returns the bound port (useful with port 0)."""
        self._server = server = await asyncio.start_server(self._serve, host, port, limit=limit)  # type: ignore[attr-defined]
        return int(server.sockets[0].getsockname()[1])

    def _track(self, writer: asyncio.StreamWriter) -> None:
        """Call first in a connection handler."""
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)  # type: ignore[arg-type]

    def _untrack(self, writer: asyncio.StreamWriter) -> None:
        """Call last (in `finally`) in a connection handler."""
        self._writers.discard(writer)
        task = asyncio.current_task()
        if task is not None:
            self._connections.discard(task)  # type: ignore[arg-type]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
