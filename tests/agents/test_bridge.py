"""The bridge between HBONE tunnels and the L7 engine: an in-process stream pipe that acts like a socket's streams.

First the pipe alone (FIN, reset, writes to a closed end, backpressure), then real tunnels
over mTLS on 127.0.0.1: a server handing accepted CONNECTs to `serving_streams` and a client
reading its tunnel through `tunnel_streams`, as the waypoint and its connector do.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agents.hbone import ConnectDecision, ConnectRequest, HboneClient, HboneServer
from agents.proxy.bridge import LIMIT, serving_streams, stream_pipe, tunnel_streams
from tests.agents.test_hbone import CLIENT_ID, SERVER_ID, Pki, pki  # noqa: F401 (pki is a fixture)

# ---------------------------------------------------------------- the pipe alone


async def test_bytes_cross_in_order_and_a_close_is_an_eof_after_them() -> None:
    (near_r, near_w), (far_r, far_w) = stream_pipe()
    near_w.write(b"GET / HTTP/1.1\r\n")
    near_w.writelines([b"host: a\r\n", memoryview(b"\r\n")])
    await near_w.drain()
    assert await far_r.read(5) == b"GET /"
    assert await far_r.read() == b" HTTP/1.1\r\nhost: a\r\n\r\n"
    near_w.close()
    assert await far_r.read() == b"" and far_r.at_eof()
    far_w.write(b"late")  # the engine closed: what still comes has nowhere to go, like a closed socket
    with pytest.raises(ConnectionResetError):
        await far_w.drain()


async def test_a_half_close_of_the_far_end_keeps_the_other_direction() -> None:
    (near_r, near_w), (far_r, far_w) = stream_pipe()
    far_w.write(b"answer")
    far_w.write_eof()
    assert await near_r.read() == b"answer"
    assert await near_r.read() == b"" and near_r.at_eof()
    near_w.write(b"more")
    await near_w.drain()
    assert await far_r.read() == b"more"
    far_w.close()  # after its EOF: a plain close, not a reset
    assert near_r.exception() is None


async def test_a_far_end_closed_without_eof_is_a_reset_for_the_engine() -> None:
    (near_r, near_w), (_, far_w) = stream_pipe()
    waiting = asyncio.ensure_future(near_r.read(100))
    await asyncio.sleep(0)
    far_w.close()  # agents.hbone.pipe ends this way when the tunnel was reset
    with pytest.raises(ConnectionResetError):
        await waiting
    assert near_r.at_eof() and not near_r._buffer
    near_w.write(b"x")
    with pytest.raises(ConnectionResetError):
        await near_w.drain()


async def test_a_writer_waits_in_drain_until_the_reader_catches_up() -> None:
    (near_r, near_w), (far_r, _) = stream_pipe()
    near_w.write(b"x" * (LIMIT + 1))
    drain = asyncio.ensure_future(near_w.drain())
    await asyncio.sleep(0)
    assert not drain.done()
    assert len(await far_r.read(1 << 20)) == LIMIT + 1
    await asyncio.wait_for(drain, 5)


# ---------------------------------------------------------------- real tunnels


async def _echo(reader: Any, writer: Any) -> None:
    """What the engine's side does in these tests: echo until EOF, then close."""
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def bridged(pki: Pki) -> AsyncIterator[tuple[HboneServer, HboneClient, list[BaseException | None]]]:  # noqa: F811
    ended: list[BaseException | None] = []

    async def serve(reader: Any, writer: Any) -> None:
        try:
            await _echo(reader, writer)
            ended.append(None)
        except ConnectionError as e:
            ended.append(e)

    async def on_connect(request: ConnectRequest) -> ConnectDecision:
        return ConnectDecision.accept(serving_streams(serve))

    server = HboneServer("127.0.0.1", 0, pki.source(SERVER_ID).server_context, on_connect)
    await server.start()
    client = HboneClient(pki.source(CLIENT_ID).client_context, connect_timeout=5)
    yield server, client, ended
    await client.aclose()
    await server.close()


async def test_requests_and_a_close_cross_both_bridges(bridged: Any) -> None:
    server, client, ended = bridged
    tunnel = await client.connect(server.address, "127.0.0.1:9080", CLIENT_ID, SERVER_ID)
    reader, writer = await tunnel_streams(tunnel)
    for i in range(20):  # keep-alive style turns: one write, one answer
        writer.write(b"request %d\r\n" % i)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(100), 10) == b"request %d\r\n" % i
    writer.close()  # FIN → END_STREAM → the server side sees EOF and closes → we see EOF
    assert await asyncio.wait_for(reader.read(100), 10) == b""
    for _ in range(250):
        if ended:
            break
        await asyncio.sleep(0.02)
    assert ended == [None]


async def test_bulk_both_ways_intact_through_both_bridges(bridged: Any) -> None:
    server, client, _ = bridged
    tunnel = await client.connect(server.address, "127.0.0.1:9080", CLIENT_ID, SERVER_ID)
    reader, writer = await tunnel_streams(tunnel)
    data = os.urandom(3 << 20)

    async def send() -> None:
        for start in range(0, len(data), 1 << 18):
            writer.write(data[start:start + (1 << 18)])
            await writer.drain()
        writer.write_eof()  # a half-close: the echo keeps coming

    sender = asyncio.ensure_future(send())
    got, total = hashlib.sha256(), 0
    while chunk := await asyncio.wait_for(reader.read(1 << 20), 20):
        got.update(chunk)
        total += len(chunk)
    await sender
    writer.close()
    assert total == len(data) and got.hexdigest() == hashlib.sha256(data).hexdigest()


async def test_a_tunnel_reset_reaches_the_engine_as_a_connection_reset(bridged: Any) -> None:
    server, client, ended = bridged
    tunnel = await client.connect(server.address, "127.0.0.1:9080", CLIENT_ID, SERVER_ID)
    await tunnel.write(b"hello")
    assert await asyncio.wait_for(tunnel.read(), 10) == b"hello"
    tunnel.abort()  # RST_STREAM: the engine's read or drain must fail, not wait forever
    for _ in range(250):
        if ended:
            break
        await asyncio.sleep(0.02)
    assert len(ended) == 1 and isinstance(ended[0], ConnectionResetError)
