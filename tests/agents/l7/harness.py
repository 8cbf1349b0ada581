"""A test bench for the L7 engine: tiny upstream HTTP servers, a proxy listener, a config, clients.

Upstreams parse requests with h11 (another implementation than the engine's parser) and
answer by query parameters: `status`, `delay` (seconds), `size` (body bytes), `chunked=1`,
`close=1` (Connection: close), `eof=1` (body ends when the upstream closes), `reset=1`
(close without answering). `Upstream.flaky` answers every other request 503; `Upstream.drop_second`
closes each connection when its second request arrives, without answering.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import random
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11

from agents.l7.authz import PolicyTarget
from agents.l7.proxy import Downstream, L7Proxy
from agents.l7.routing import RouteTables
from agents.l7.telemetry import L7Telemetry
from agents.ztunnel.telemetry import Peer

SERVICE = "reviews.bookinfo"
PORT = 9080
CLIENT = Peer("productpage-v1", "bookinfo", "productpage", "v1", "productpage", "v1")
CLIENT_PRINCIPAL = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage"


@dataclass
class Seen:
    """One request an upstream received."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    connection: int


class Upstream:
    """A tiny HTTP/1.1 server on a loopback address; counts connections and keeps what it received."""

    def __init__(self, name: str, address: str = "127.0.0.1") -> None:
        self.name = name
        self.address = address
        self.port = 0
        self.connections = 0
        self.seen: list[Seen] = []
        self.flaky = False
        self.drop_second = False
        self.always: int | None = None  # answer every request with this status
        self.delay = 0.0  # seconds before every answer
        self.server: asyncio.Server | None = None

    async def start(self) -> Upstream:
        self.server = await asyncio.start_server(self._serve, self.address, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    def endpoint(self, workload: str | None = None, version: str = "v1", **extra: Any) -> dict[str, Any]:
        """This upstream as an engine endpoint dict."""
        return {"address": self.address, "port": self.port, "workload": workload or self.name,
                "namespace": "bookinfo", "labels": {"app": "reviews", "version": version},
                "identity": "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews", "app": "reviews",
                "version": version, **extra}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        conn = h11.Connection(h11.SERVER)
        on_connection = 0
        try:
            while True:
                request, body = await self._read(conn, reader)
                if request is None:
                    return
                on_connection += 1
                target = request.target.decode()
                headers = {n.decode(): v.decode() for n, v in request.headers}
                self.seen.append(Seen(request.method.decode(), target, headers, body, number))
                if self.drop_second and on_connection == 2:
                    return
                q = dict(parse_qsl(urlsplit(target).query))
                if q.get("reset"):
                    return
                await asyncio.sleep(float(q.get("delay", self.delay)))
                status = int(q.get("status", self.always or 200))
                if self.flaky and len(self.seen) % 2 == 1:
                    status = 503
                size = int(q.get("size", 2))
                payload = b"x" * size
                if q.get("eof"):
                    writer.write(b"HTTP/1.1 %d OK\r\nx-upstream: %s\r\n\r\n" % (status, self.name.encode()) + payload)
                    await writer.drain()
                    return
                out = [("x-upstream", self.name)]
                if not q.get("chunked"):
                    out.append(("content-length", str(size)))
                if q.get("close"):
                    out.append(("connection", "close"))
                writer.write(conn.send(h11.Response(status_code=status, headers=out)))
                if request.method != b"HEAD":
                    step = max(1, size // 3)
                    for i in range(0, size, step):
                        writer.write(conn.send(h11.Data(data=payload[i:i + step])))
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.RemoteProtocolError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _read(conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[h11.Request | None, bytes]:
        request, body = None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, body
            else:  # ConnectionClosed
                return None, b""


@dataclass
class Config:
    """An L7Config for tests."""

    routes: RouteTables = field(default_factory=RouteTables)
    destination_rules: dict[str, Any] = field(default_factory=dict)
    policies: list[dict[str, Any]] = field(default_factory=list)
    eps: dict[tuple[str, int], list[dict[str, Any]]] = field(default_factory=dict)
    target: PolicyTarget | None = None

    def authz_target(self, downstream: Downstream) -> PolicyTarget | None:
        return self.target

    def endpoints(self, service: str, port: int) -> list[dict[str, Any]]:
        return list(self.eps.get((service, port), []))

    def service_hostname(self, service: str) -> str:
        name, _, namespace = service.partition(".")
        return f"{name}.{namespace}.svc.cluster.local"


async def tcp_connect(endpoint: dict[str, Any], service: str,
                      downstream: Downstream) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The test Connector: plain TCP to the endpoint."""
    return await asyncio.open_connection(endpoint["address"], endpoint["port"])


class Bench:
    """A proxy listening on loopback, serving every accepted connection with `L7Proxy.serve`."""

    def __init__(self, config: Config, *, reporter: str = "waypoint", seed: int = 7,
                 principal: str | None = CLIENT_PRINCIPAL, connector: Any = tcp_connect, **options: Any) -> None:
        self.config = config
        self.log = io.StringIO()
        self.telemetry = L7Telemetry(self.log)
        self.proxy = L7Proxy(lambda: self.config, connector, self.telemetry, reporter, rng=random.Random(seed),
                             **options)
        self.principal = principal
        self.port = 0
        self.server: asyncio.Server | None = None
        self.destination: Peer | None = None
        self.connector_calls = 0

    async def start(self) -> Bench:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        await self.proxy.aclose()
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = writer.get_extra_info("peername")[:2]
        downstream = Downstream(SERVICE, PORT, CLIENT, self.principal, f"{host}:{port}",
                                "mutual_tls" if self.principal else "none", self.destination)
        await self.proxy.serve(reader, writer, downstream)

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]

    async def get(self, path: str = "/", method: str = "GET", headers: dict[str, str] | None = None,
                  body: bytes | None = None) -> Response:
        """One request on a fresh client connection."""
        return (await self.session([(method, path, headers or {}, body)]))[0]

    async def session(self, requests: list[tuple[str, str, dict[str, str], Any]]) -> list[Response]:
        """Requests one after another on one keep-alive client connection (http.client, in a thread)."""
        return await asyncio.to_thread(_session, self.port, requests)

    async def raw(self, data: bytes, read_until_close: bool = True, timeout: float = 10.0) -> bytes:
        """Send raw bytes and read everything until the proxy closes."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(data)
        await writer.drain()
        try:
            async with asyncio.timeout(timeout):
                return await reader.read(-1)
        finally:
            writer.close()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_headers: list[tuple[str, str]]


def _session(port: int, requests: list[tuple[str, str, dict[str, str], Any]]) -> list[Response]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    out = []
    try:
        for method, path, headers, body in requests:
            chunked = not isinstance(body, bytes | type(None))
            conn.request(method, path, body=body, headers={"Host": "reviews:9080", **headers},
                         encode_chunked=chunked)
            r = conn.getresponse()
            data = r.read()
            out.append(Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data, r.getheaders()))
    finally:
        conn.close()
    return out


def split_responses(data: bytes, methods: list[bytes] | None = None) -> list[tuple[int, dict[str, str], bytes]]:
    """HTTP/1.1 responses in a byte string, parsed with h11 (a client role)."""
    out = []
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    conn.receive_data(b"")
    for method in methods or [b"GET"]:
        conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        status, headers, body = 0, {}, b""
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Response):
                status, headers = event.status_code, {n.decode(): v.decode() for n, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.InformationalResponse):
                continue
            else:
                raise AssertionError(f"unexpected {event!r}")
        out.append((status, headers, body))
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            break
        conn.start_next_cycle()
    return out


def closed_port() -> int:
    """A loopback port nobody listens on (bound then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
