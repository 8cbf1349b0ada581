"""L4 toxics on real loopback sockets: a proxy runs `toxic_splice` between a client and an upstream server."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest

from agents.common.faults import AgentFault, parse_faults
from agents.common.toxics import toxic_splice


def make(kind: str, direction: str = "downstream", fid: str = "f1", **params) -> AgentFault:
    target = {"type": "service", "name": "echo", "namespace": "echo", "services": ["echo.echo"]}
    return parse_faults([{"id": fid, "kind": kind, "layer": "l4", "target": target, "params": params,
                          "direction": direction, "toxicity": 1.0, "expiresAt": None}])[0]


class Lab:
    """An upstream server (echo, or a fixed payload) behind a proxy that applies `faults`."""

    def __init__(self, faults: list[AgentFault], payload: bytes | None = None) -> None:
        self.faults = faults
        self.on: set[str] = {f.id for f in faults}
        self.payload = payload
        self.results: list[tuple[int, int, str | None]] = []

    async def _upstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.payload is not None:
                writer.write(self.payload)
                await writer.drain()
                writer.write_eof()
                await reader.read()
            else:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _proxy(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream_addr)
        self.results.append(await toxic_splice(client, upstream, self.faults, lambda f: f.id in self.on))

    async def __aenter__(self) -> Lab:
        self.server = await asyncio.start_server(self._upstream, "127.0.0.1", 0)
        self.upstream_addr = self.server.sockets[0].getsockname()[:2]
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.address = self.listener.getsockname()[:2]
        self.tasks: list[asyncio.Task] = []

        async def accept() -> None:
            loop = asyncio.get_running_loop()
            while True:
                client, _ = await loop.sock_accept(self.listener)
                self.tasks.append(asyncio.ensure_future(self._proxy(client)))
        self.acceptor = asyncio.ensure_future(accept())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.acceptor.cancel()
        for t in self.tasks:
            t.cancel()
        self.listener.close()
        self.server.close()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(*self.address)


async def round_trip(lab: Lab, data: bytes = b"ping") -> tuple[bytes, float]:
    reader, writer = await lab.connect()
    start = time.monotonic()
    writer.write(data)
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(len(data)), 10)
    elapsed = time.monotonic() - start
    writer.close()
    return got, elapsed


async def test_no_toxics_pass_everything() -> None:
    async with Lab([]) as lab:
        got, _ = await round_trip(lab, b"x" * 200_000)
        assert got == b"x" * 200_000


async def test_latency_delays_each_way_it_is_set() -> None:
    async with Lab([make("latency", latency=200)]) as lab:
        got, elapsed = await round_trip(lab)
        assert got == b"ping" and 0.18 <= elapsed <= 0.6
    async with Lab([make("latency", "both", latency=150)]) as lab:
        _, elapsed = await round_trip(lab)
        assert 0.28 <= elapsed <= 0.8


async def test_latency_stops_when_the_fault_is_removed() -> None:
    async with Lab([make("latency", latency=300)]) as lab:
        reader, writer = await lab.connect()
        writer.write(b"a")
        assert await asyncio.wait_for(reader.readexactly(1), 5) == b"a"
        lab.on.clear()  # removed: the same connection is fast again
        start = time.monotonic()
        writer.write(b"b")
        assert await asyncio.wait_for(reader.readexactly(1), 5) == b"b"
        assert time.monotonic() - start < 0.25
        writer.close()


async def test_bandwidth_limits_throughput() -> None:
    async with Lab([make("bandwidth", rate=200)], payload=b"y" * 100_000) as lab:
        reader, writer = await lab.connect()
        start = time.monotonic()
        data = await asyncio.wait_for(reader.read(-1), 10)  # until EOF
        elapsed = time.monotonic() - start
        writer.close()
        assert len(data) == 100_000
        assert 0.4 <= elapsed <= 1.5  # 100 KB at 200 KB/s


async def test_reset_peer_resets_the_client() -> None:
    async with Lab([make("reset_peer", timeout=100)]) as lab:
        reader, writer = await lab.connect()
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), 5)
            await asyncio.wait_for(reader.read(100), 5)
        writer.close()
        assert lab.results and "reset_peer" in (lab.results[0][2] or "")


async def test_timeout_holds_then_closes() -> None:
    async with Lab([make("timeout", "upstream", timeout=500)]) as lab:
        reader, writer = await lab.connect()
        start = time.monotonic()
        writer.write(b"held")
        assert await asyncio.wait_for(reader.read(100), 5) == b""  # nothing came back; closed by the toxic
        assert time.monotonic() - start >= 0.45
        writer.close()


async def test_timeout_zero_holds_until_removed() -> None:
    async with Lab([make("timeout", "upstream", timeout=0)]) as lab:
        reader, writer = await lab.connect()
        writer.write(b"dropped")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(100), 0.5)
        lab.on.clear()
        writer.write(b"after")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"after"
        writer.close()


async def test_limit_data_closes_after_n_bytes() -> None:
    async with Lab([make("limit_data", bytes=1000)], payload=b"z" * 5000) as lab:
        reader, writer = await lab.connect()
        data = await asyncio.wait_for(reader.read(-1), 5)
        writer.close()
        assert data == b"z" * 1000


async def test_slicer_splits_into_small_delayed_chunks() -> None:
    async with Lab([make("slicer", average_size=100, size_variation=20, delay=20_000)], payload=b"s" * 2000) as lab:
        sock = socket.create_connection(lab.address)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        sizes, start = [], time.monotonic()
        while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), 5):
            sizes.append(len(chunk))
        elapsed = time.monotonic() - start
        sock.close()
        assert sum(sizes) == 2000
        assert max(sizes) <= 240 and len(sizes) >= 8  # a read may join two slices, never many
        assert elapsed >= 0.25  # ~20 slices, 20 ms apart


async def test_untargeted_connections_are_untouched_under_load() -> None:
    async with Lab([]) as clean, Lab([make("reset_peer", timeout=0)]) as broken:
        async def one(lab: Lab) -> bool:
            try:
                got, _ = await round_trip(lab, b"q" * 1000)
                return got == b"q" * 1000
            except (OSError, asyncio.IncompleteReadError):
                return False
        results = await asyncio.gather(*(one(clean) for _ in range(100)), *(one(broken) for _ in range(20)))
        assert all(results[:100])
        assert not any(results[100:])
