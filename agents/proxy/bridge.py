"""Joining HBONE tunnels to the L7 engine, which speaks asyncio streams.

A tunnel moves bytes to a *socket* on HBONE's fast path (threads, `pipe_socket`). The L7
engine reads and writes asyncio streams. A socketpair joins the two: one end goes to the
tunnel's pipe, the other is wrapped in streams. It costs one local copy per byte; in return
the engine sees every upstream and downstream as the same kind of stream.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from agents.hbone import Tunnel, pipe_socket

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_pipes: set[asyncio.Future[object]] = set()  # keep running pipes referenced until they finish
LIMIT = 256 * 1024  # the streams' read buffer


async def tunnel_streams(tunnel: Tunnel) -> Streams:
    """Streams that read from and write to `tunnel` (its pipe runs until either side closes)."""
    mine, theirs = socket.socketpair()
    pipe = asyncio.ensure_future(pipe_socket(tunnel, theirs))
    _pipes.add(pipe)
    pipe.add_done_callback(_pipes.discard)
    return await asyncio.open_connection(sock=mine, limit=LIMIT)


def serving_pair(serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> socket.socket:
    """A socket to hand an HBONE server as the target of an accepted CONNECT; `serve` gets the other end."""
    target, mine = socket.socketpair()

    async def run() -> None:
        reader, writer = await asyncio.open_connection(sock=mine, limit=LIMIT)
        try:
            await serve(reader, writer)
        finally:
            writer.close()
    task = asyncio.ensure_future(run())
    _pipes.add(task)
    task.add_done_callback(_pipes.discard)
    return target
