"""The HBONE client: CONNECT tunnels over pooled mTLS HTTP/2 connections.

Connections are pooled per (source identity, destination identity, destination
address), as DESIGN §4 says: one TLS + HTTP/2 connection carries many CONNECT
streams, up to the server's SETTINGS_MAX_CONCURRENT_STREAMS; when every
connection of a key is full another one is dialled, and dead or GOAWAY'd
connections leave the pool. A new connection is used only once the server's
SETTINGS arrived, so its stream limit is known before the first request.

The client presents the source workload's certificate (`contexts(src)`), asks
for the destination's by SNI, and checks that the certificate it got carries
the destination identity before it sends anything.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import h2.exceptions

from agents.hbone.connection import Connection
from agents.hbone.stream import HboneError, Tunnel
from agents.hbone.tls import ALPN, TlsChannel, peer_identity, sni_for_identity

PoolKey = tuple[str, str, tuple[str, int]]
T = TypeVar("T")
_DETAILS = re.compile(r'details="((?:[^"\\]|\\.)*)"')


class HboneClient:
    """Opens CONNECT tunnels; `contexts(identity)` gives the TLS context of a source identity."""

    def __init__(self, contexts: Callable[[str], ssl.SSLContext | None], *, connect_timeout: float = 10.0,
                 response_timeout: float = 30.0) -> None:
        self.contexts = contexts
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.connections_opened = 0
        self._pool: dict[PoolKey, list[Connection]] = {}
        self._dialing: dict[PoolKey, asyncio.Future[Connection]] = {}

    async def connect(self, dest_addr: tuple[str, int], authority: str, src_identity: str, dst_identity: str,
                      headers: Mapping[str, str] | None = None, *, timeout: float | None = None) -> Tunnel:
        """Open a tunnel to `authority` through the HBONE server at `dest_addr`.

        `headers` (forwarded, baggage, traceparent, ...) are sent as given, names lowercased.
        Raises HboneError(status, reason) for a non-200 answer, HboneError(None, reason)
        when there was no answer (connect, handshake, identity or connection failure).
        """
        request = [(":method", "CONNECT"), (":authority", authority)]
        request += [(name.lower(), value) for name, value in (headers or {}).items()]
        key: PoolKey = (src_identity, dst_identity, (dest_addr[0], int(dest_addr[1])))
        for _ in range(8):
            conn = await self._connection(key)
            try:
                tunnel = conn.open_stream(request)
            except (h2.exceptions.TooManyStreamsError, HboneError):
                await asyncio.sleep(0)
                continue  # full or just closed: another connection
            except h2.exceptions.NoAvailableStreamIDError:
                conn.close()
                continue
            assert tunnel.response is not None
            try:
                status, response = await asyncio.wait_for(asyncio.shield(tunnel.response),
                                                          timeout or self.response_timeout)
            except asyncio.TimeoutError:
                tunnel.abort()
                raise HboneError(None, f"no response from {dest_addr[0]}:{dest_addr[1]} for {authority}") from None
            except HboneError:
                if tunnel.retryable:  # never processed by the server: try again (RFC 9113 §8.7)
                    continue
                raise
            except BaseException:
                tunnel.abort()
                raise
            if status != 200:
                tunnel.close()
                raise HboneError(status, _reason(response))
            return tunnel
        raise HboneError(None, f"no usable connection to {dest_addr[0]}:{dest_addr[1]}")

    def pooled(self, key: PoolKey | None = None) -> list[Connection]:
        """The live pooled connections (of one key, or all)."""
        keys = [key] if key is not None else list(self._pool)
        return [c for k in keys for c in self._pool.get(k, []) if not c.closed]

    async def aclose(self) -> None:
        """GOAWAY and close every pooled connection."""
        for conns in self._pool.values():
            for conn in conns:
                conn.close()
        self._pool.clear()
        await asyncio.sleep(0)

    # ------------------------------------------------------------ the pool

    async def _connection(self, key: PoolKey) -> Connection:
        while True:
            conns = self._pool.setdefault(key, [])
            conns[:] = [c for c in conns if not c.closed]
            for conn in conns:
                if conn.has_capacity():
                    return conn
            pending = self._dialing.get(key)
            if pending is not None:
                await asyncio.shield(pending)  # raises what the dial raised
                continue
            dialing: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()
            self._dialing[key] = dialing
            try:
                conn = await self._dial(key)
            except BaseException as exc:
                dialing.set_exception(exc if isinstance(exc, HboneError) else HboneError(None, str(exc)))
                dialing.exception()  # retrieved: no "never retrieved" warning when nobody else waited
                raise
            finally:
                del self._dialing[key]
            conns.append(conn)
            dialing.set_result(conn)
            return conn

    async def _dial(self, key: PoolKey) -> Connection:
        src, dst, addr = key
        ctx = self.contexts(src)
        if ctx is None:
            raise HboneError(None, f"no certificate for {src}")
        tls = await _in_thread(self._handshake, ctx, addr, sni_for_identity(dst), on_abandon=_close)
        got = peer_identity(tls)
        if got != dst:
            tls.close()
            raise HboneError(None, f"{addr[0]}:{addr[1]} presented {got}, expected {dst}")
        conn = Connection(tls, client=True, loop=asyncio.get_running_loop(), peer_identity=got, local_identity=src)
        conn.on_closed = lambda c: self._forget(key, c)
        try:
            await asyncio.wait_for(conn.settings_received.wait(), self.connect_timeout)
        except asyncio.TimeoutError:
            conn.close()
            raise HboneError(None, f"no HTTP/2 SETTINGS from {addr[0]}:{addr[1]}") from None
        if conn.closed:
            raise HboneError(None, f"connection to {addr[0]}:{addr[1]} closed: {conn.error}")
        self.connections_opened += 1
        return conn

    def _handshake(self, ctx: ssl.SSLContext, addr: tuple[str, int], sni: str) -> TlsChannel:
        """Thread: TCP connect and TLS handshake (blocking, with the connect timeout)."""
        try:
            raw = socket.create_connection(addr, timeout=self.connect_timeout)
        except OSError as exc:
            raise HboneError(None, f"cannot connect to {addr[0]}:{addr[1]}: {exc}") from exc
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = TlsChannel(raw, ctx, server_side=False, server_hostname=sni)
            tls.handshake(self.connect_timeout)
            if tls.selected_alpn_protocol() != ALPN:
                raise ssl.SSLError(f"{addr[0]}:{addr[1]} did not negotiate ALPN h2")
            return tls
        except (OSError, ValueError) as exc:
            raw.close()
            raise HboneError(None, f"TLS handshake with {addr[0]}:{addr[1]} failed: {exc}") from exc

    def _forget(self, key: PoolKey, conn: Connection) -> None:
        conns = self._pool.get(key)
        if conns and conn in conns:
            conns.remove(conn)


def _reason(headers: dict[str, str]) -> str:
    match = _DETAILS.search(headers.get("proxy-status", ""))
    if match:
        return re.sub(r"\\(.)", r"\1", match.group(1))
    return headers.get("proxy-status", "") or f"status {headers.get(':status')}"


def _close(tls: Any) -> None:
    try:
        tls.close()
    except OSError:
        pass


async def _in_thread(fn: Callable[..., T], *args: Any, on_abandon: Callable[[T], None]) -> T:
    """Run a blocking call in its own thread (not the shared executor); `on_abandon` cleans up after a cancel."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if fut.cancelled():
            if ok:
                on_abandon(value)
        elif ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def run() -> None:
        try:
            result = (True, fn(*args))
        except BaseException as exc:  # delivered to the awaiting task
            result = (False, exc)
        try:
            loop.call_soon_threadsafe(settle, *result)
        except RuntimeError:
            if result[0]:
                on_abandon(result[1])

    threading.Thread(target=run, name="hbone-dial", daemon=True).start()
    return await fut
