"""The HBONE server: accepts mTLS connections on 15008 and serves their CONNECT requests.

For each request the owner's `on_connect(ConnectRequest)` decides: refuse with
a status (400 bad destination, 401 denied by policy, 503 no upstream) and a
reason, sent back in a ``proxy-status`` header (RFC 9209), or accept with a
target (a connected TCP socket, or an asyncio stream pair), which the server
then pipes both ways and reports with `on_complete(bytes_in, bytes_out, error)`.
Anything but a plain CONNECT is answered 400 here, before `on_connect`.

The certificate presented is chosen per handshake by SNI (see tls.py): the
server asks `contexts(sni)` for a context and switches to it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Union

from agents.hbone import frames as fr
from agents.hbone.connection import Connection, call_in_loop, start_thread
from agents.hbone.pipe import pipe, pipe_socket
from agents.hbone.stream import Tunnel, header_dict
from agents.hbone.tls import (
    ALPN,
    TlsChannel,
    bare_server_context,
    context_identity,
    identity_from_sni,
    peer_identity,
)

log = logging.getLogger("hbone.server")

Target = Union[socket.socket, tuple[asyncio.StreamReader, asyncio.StreamWriter]]
CompletionCallback = Callable[[int, int, Union[str, None]], Union[None, Awaitable[None]]]
_PROXY_STATUS_ERROR = {400: "http_request_error", 401: "http_request_denied", 403: "http_request_denied",
                       502: "connection_refused", 503: "destination_unavailable", 504: "connection_timeout"}


@dataclass
class ConnectRequest:
    """A CONNECT request as the destination side sees it."""

    authority: str                       # "ip:port" (or "host:port" towards a waypoint)
    host: str
    port: int
    headers: dict[str, str]              # lowercase names, pseudo-headers left out
    peer_identity: str | None            # the client's SPIFFE ID (its certificate)
    peer_addr: tuple[str, int] | None
    local_identity: str | None           # the identity whose certificate we presented (SNI)
    sni: str | None
    stream_id: int = 0


@dataclass
class ConnectDecision:
    """`on_connect`'s answer: accept(target) or refuse(status, reason)."""

    status: int = 200
    reason: str = ""
    target: Target | None = None
    on_complete: CompletionCallback | None = None

    @classmethod
    def accept(cls, target: Target, on_complete: CompletionCallback | None = None) -> ConnectDecision:
        return cls(200, "", target, on_complete)

    @classmethod
    def refuse(cls, status: int, reason: str) -> ConnectDecision:
        if not 400 <= status <= 599:
            raise ValueError(f"refusal status must be 4xx/5xx, not {status}")
        return cls(status, reason)


ConnectHandler = Callable[[ConnectRequest], Awaitable[ConnectDecision]]
ContextSource = Callable[[Union[str, None]], Union[ssl.SSLContext, None]]


@dataclass
class HboneServer:
    """HTTP/2 CONNECT over mutual TLS 1.3 on (host, port); `start()`, then `close()`."""

    host: str
    port: int
    contexts: ContextSource
    on_connect: ConnectHandler
    sock: socket.socket | None = None           # a bound listening socket to use instead of (host, port)
    max_concurrent_streams: int = 100
    handshake_timeout: float = 10.0
    proxy_name: str = "hbone"
    connections: set[Connection] = field(default_factory=set, init=False)
    handshake_failures: int = field(default=0, init=False)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set, init=False)
    _accept_task: asyncio.Task[None] | None = field(default=None, init=False)
    _closing: bool = field(default=False, init=False)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        base = self.contexts(None) or bare_server_context()
        base.sni_callback = self._pick_context
        self._base = base
        if self.sock is None:
            self.sock = socket.create_server((self.host, self.port), backlog=512)
        self.sock.setblocking(False)
        self.host, self.port = self.sock.getsockname()[:2]
        self._accept_task = asyncio.ensure_future(self._accept_loop())

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def close(self) -> None:
        self._closing = True
        if self._accept_task is not None:
            self._accept_task.cancel()
        if self.sock is not None:
            self.sock.close()
        for conn in list(self.connections):
            conn.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)

    async def __aenter__(self) -> HboneServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ connections

    async def _accept_loop(self) -> None:
        assert self.sock is not None
        while not self._closing:
            try:
                raw, _ = await self._loop.sock_accept(self.sock)
            except asyncio.CancelledError:
                return
            except OSError as exc:
                if self._closing:
                    return
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            start_thread(self._handshake, raw, name="hbone-handshake")

    def _pick_context(self, sslsock: Any, sni: str | None, current: ssl.SSLContext) -> int | None:
        try:
            chosen = self.contexts(sni)
            if chosen is None:
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            if chosen is not current:
                sslsock.context = chosen
            sslsock.hbone_sni = sni
        except Exception:
            log.exception("choosing a certificate for SNI %r failed", sni)
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        return None

    def _handshake(self, raw: socket.socket) -> None:
        """Thread: TLS handshake, then hand the connection to the loop."""
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = TlsChannel(raw, self._base, server_side=True)
            tls.handshake(self.handshake_timeout)
            if tls.selected_alpn_protocol() != ALPN:
                raise ssl.SSLError("the client did not negotiate ALPN h2")
            peer = peer_identity(tls)
            if peer is None:
                raise ssl.SSLError("the client certificate has no spiffe:// identity")
        except (OSError, ValueError) as exc:
            self.handshake_failures += 1
            log.info("HBONE handshake failed: %s", exc)
            raw.close()
            return
        local = context_identity(tls.context) or identity_from_sni(tls.sni)
        call_in_loop(self._loop, self._connected, tls, peer, local)

    def _connected(self, tls: TlsChannel, peer: str, local: str | None) -> None:
        if self._closing:
            tls.close()
            return
        conn = Connection(tls, client=False, loop=self._loop, on_request=self._on_request,
                          max_concurrent_streams=self.max_concurrent_streams,
                          peer_identity=peer, local_identity=local)
        conn.sni = tls.sni
        conn.on_closed = self.connections.discard
        self.connections.add(conn)

    # ------------------------------------------------------------ requests

    def _on_request(self, tunnel: Tunnel, headers: list[tuple[bytes, bytes]]) -> None:
        task = asyncio.ensure_future(self._serve(tunnel, headers))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, tunnel: Tunnel, raw_headers: list[tuple[bytes, bytes]]) -> None:
        conn = tunnel.conn
        headers = header_dict(raw_headers)
        if headers.get(":method") != "CONNECT" or ":protocol" in headers:
            self._respond(tunnel, 400, "only CONNECT is served here")
            return
        hostport = split_authority(headers.get(":authority", ""))
        if hostport is None:
            self._respond(tunnel, 400, f"bad destination {headers.get(':authority')!r}")
            return
        request = ConnectRequest(
            authority=headers[":authority"], host=hostport[0], port=hostport[1],
            headers={k: v for k, v in headers.items() if not k.startswith(":")},
            peer_identity=conn.peer_identity, peer_addr=conn.peer_addr,
            local_identity=conn.local_identity, sni=getattr(conn, "sni", None), stream_id=tunnel.stream_id)
        try:
            decision = await self.on_connect(request)
        except Exception as exc:
            log.exception("on_connect failed for %s", request.authority)
            decision = ConnectDecision.refuse(503, f"internal error: {exc}")
        if decision.status != 200 or decision.target is None:
            self._respond(tunnel, decision.status if decision.status != 200 else 503, decision.reason)
            return
        try:
            if not self._respond(tunnel, 200, ""):
                _close_target(decision.target)  # the client gave up meanwhile
            elif isinstance(decision.target, socket.socket):
                await pipe_socket(tunnel, decision.target)
            else:
                await pipe(tunnel, *decision.target)
        finally:
            if decision.on_complete is not None:
                result = decision.on_complete(tunnel.bytes_received, tunnel.bytes_sent, tunnel.error)
                if inspect.isawaitable(result):
                    await result

    def _respond(self, tunnel: Tunnel, status: int, reason: str) -> bool:
        """Send the response HEADERS; a refusal ends the stream (END_STREAM, then RST_STREAM NO_ERROR)."""
        headers = [(":status", str(status))]
        if status != 200:
            error = _PROXY_STATUS_ERROR.get(status, "proxy_internal_error")
            details = reason.replace("\\", "\\\\").replace('"', '\\"')
            headers.append(("proxy-status", f'{self.proxy_name}; error={error}; details="{details}"'))
        conn = tunnel.conn
        with conn.lock:
            if tunnel.reset or conn.closed:
                return False
            sent = conn.h2_call_locked(conn.h2.send_headers, tunnel.stream_id, headers,
                                       end_stream=status != 200, wake=False)
            if sent and status != 200:
                tunnel.out_eof = True
                if not tunnel.in_eof:
                    conn.h2_call_locked(conn.h2.reset_stream, tunnel.stream_id, fr.NO_ERROR, wake=False)
                tunnel.on_reset_locked(f"refused with {status}: {reason}")
        conn.kick()
        return sent


def split_authority(authority: str) -> tuple[str, int] | None:
    """("host", port) from "host:port" or "[v6]:port"; None if malformed."""
    host, sep, port = authority.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if host.startswith("["):
        if not host.endswith("]"):
            return None
        host = host[1:-1]
    elif ":" in host:
        return None
    return host, int(port)


def _close_target(target: Target) -> None:
    try:
        if isinstance(target, socket.socket):
            target.close()
        else:
            target[1].close()
    except OSError:
        pass
