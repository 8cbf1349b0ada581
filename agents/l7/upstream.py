"""Upstream clusters at run time: keep-alive connection pools per endpoint, circuit breakers, outlier state.

Theory of operation: one `Cluster` per Envoy cluster (service, port and subset) holds the
load balancer and outlier detector state and one `HostPool` of idle connections per endpoint.
`Cluster.acquire` asks `ConnectionPoolLimits.admit` (the pure decision in `agents.l7.cluster`)
with the cluster's counts: "reuse" takes an idle connection, "connect" opens one through the
proxy's Connector, "queue" waits until a connection is released (a pending request), and
"overflow" raises `Overflow` (Envoy's 503 UO). Connections count against maxConnections from
connect to close, idle or busy; `release` puts a connection back (or closes it when the
upstream said `Connection: close`, maxRequestsPerConnection is reached, or the proxy is
closing) and wakes one pending request. An idle connection the upstream closed, or one idle
longer than idleTimeout, is dropped when it would be taken. A Connector may have an
`affinity(endpoint, service, downstream)` method (the live L4 faults a new connection would
carry): an idle connection is reused only for requests of its own affinity.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from agents.l7.cluster import ClusterPolicy, Endpoint, LoadBalancerState, endpoint_key
from agents.l7.http1 import Parser
from agents.l7.outlier import OutlierDetector

if TYPE_CHECKING:
    from agents.l7.proxy import Downstream

Connector = Callable[[Endpoint, str, "Downstream"], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
OVERFLOW_BODY = "upstream connect error or disconnect/reset before headers. reset reason: overflow"


class UpstreamConnectError(Exception):
    """No connection to the endpoint: `flag` is Envoy's response flag (UF, URX, ...), `reason` says why."""

    def __init__(self, flag: str, reason: str) -> None:
        super().__init__(reason)
        self.flag = flag
        self.reason = reason


class Overflow(Exception):
    """The cluster's circuit breakers refused the request (503 UO)."""


class UpstreamConnection:
    """One HTTP/1.1 connection to an endpoint, with its response parser."""

    __slots__ = ("reader", "writer", "parser", "host", "served", "idle_since", "affinity")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: HostPool) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = Parser("client")
        self.host = host
        self.served = 0
        self.idle_since = 0.0
        self.affinity = ""  # the Connector's affinity when it was opened

    def alive(self) -> bool:
        """Whether the upstream can still be sent a request (it did not close, and sent nothing unasked)."""
        return not (self.writer.is_closing() or self.reader.at_eof() or self.reader._buffer)  # noqa: SLF001

    def close(self) -> None:
        """Close the socket (no waiting: the proxy moves on)."""
        try:
            self.writer.close()
        except (OSError, RuntimeError):
            pass


class HostPool:
    """The idle connections to one endpoint."""

    __slots__ = ("key", "endpoint", "idle")

    def __init__(self, key: str, endpoint: Endpoint) -> None:
        self.key = key
        self.endpoint = endpoint
        self.idle: deque[UpstreamConnection] = deque()


class Cluster:
    """One upstream cluster's run-time state."""

    def __init__(self, name: str, policy: ClusterPolicy, lb: LoadBalancerState) -> None:
        self.name = name
        self.policy = policy
        self.lb = lb
        self.outlier = OutlierDetector(policy.outlier) if policy.outlier else None
        lb.min_health_percent = policy.outlier.min_health_percent if policy.outlier else 0
        self.hosts: dict[str, HostPool] = {}
        self.endpoint_keys: tuple[str, ...] = ()
        self.connections = 0  # open, idle or busy
        self.pending = 0  # requests queued for a connection
        self.active = 0  # requests in flight
        self.retries = 0  # retries in flight (maxRetries)
        self.overflows = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.closed = False

    def update(self, policy: ClusterPolicy) -> None:
        """A new config: keep the pools, take the new limits (and a fresh detector if its policy changed)."""
        if policy == self.policy:
            return
        if policy.outlier != self.policy.outlier:
            self.outlier = OutlierDetector(policy.outlier, self.endpoint_keys) if policy.outlier else None
            self.lb.min_health_percent = policy.outlier.min_health_percent if policy.outlier else 0
            self.lb.ejected = frozenset()
        self.policy = policy

    def set_endpoints(self, endpoints: list[Endpoint], now: float) -> None:
        """The endpoints load balancing may pick from now; refreshes the ejected set."""
        keys = tuple(endpoint_key(e) for e in endpoints)
        if keys != self.endpoint_keys:
            self.endpoint_keys = keys
            if self.outlier is not None:
                self.outlier.set_hosts(keys)
            for gone in self.hosts.keys() - set(keys):
                for conn in self.hosts[gone].idle:
                    self._closed_one(conn)
                del self.hosts[gone]
        if self.outlier is not None:
            self.lb.ejected = self.outlier.ejected(now)

    def record(self, key: str, status: int | None = None, error: str | None = None) -> None:
        """Tell outlier detection how a try ended."""
        if self.outlier is not None:
            self.outlier.record(key, time.monotonic(), status=status, error=error)

    # --- connections --------------------------------------------------------------------------------

    async def acquire(self, endpoint: Endpoint, connect: Connector, service: str,
                      downstream: Downstream) -> tuple[UpstreamConnection, bool]:
        """A connection to `endpoint` (and whether it was reused); raises Overflow or UpstreamConnectError."""
        key = endpoint_key(endpoint)
        host = self.hosts.get(key)
        if host is None:
            host = self.hosts[key] = HostPool(key, endpoint)
        pool = self.policy.pool
        affinity_of = getattr(connect, "affinity", None)
        affinity = affinity_of(endpoint, service, downstream) if affinity_of is not None else ""
        while True:
            self._prune(host, pool.idle_timeout)
            admission = pool.admit(active_connections=self.connections, idle_connections=len(host.idle),
                                   pending_requests=self.pending, active_requests=self.active)
            action = admission.action
            if action == "reuse":
                conn = next((c for c in reversed(host.idle) if c.affinity == affinity), None)
                if conn is None:  # opened under other faults: close one, so this request connects anew
                    self._closed_one(host.idle.popleft())
                    continue
                host.idle.remove(conn)
                return conn, True
            if action == "connect":
                conn = await self._connect(host, connect, service, downstream)
                conn.affinity = affinity
                return conn, False
            if action == "overflow":
                self.overflows += 1
                raise Overflow(OVERFLOW_BODY)
            if self._close_idle_elsewhere(host):
                continue  # room made: connect next time round
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            self.pending += 1
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, then timed out: pass on the wake-up this request cannot use
                raise
            finally:
                self.pending -= 1

    async def _connect(self, host: HostPool, connect: Connector, service: str,
                       downstream: Downstream) -> UpstreamConnection:
        """Open a new connection through the Connector, within connectTimeout."""
        self.connections += 1
        try:
            async with asyncio.timeout(self.policy.pool.connect_timeout):
                reader, writer = await connect(host.endpoint, service, downstream)
        except UpstreamConnectError:
            self._lost()
            raise
        except TimeoutError:
            self._lost()
            raise UpstreamConnectError("UF", f"connect timeout after {self.policy.pool.connect_timeout:g}s") from None
        except OSError as e:
            self._lost()
            raise UpstreamConnectError("UF", e.strerror or str(e)) from None
        except BaseException:
            self._lost()
            raise
        return UpstreamConnection(reader, writer, host)

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        """A request is done with `conn`: keep it idle for the next one, or close it."""
        conn.served += 1
        if reusable and not self.closed and self.policy.pool.reusable(conn.served) and conn.alive():
            conn.idle_since = time.monotonic()
            conn.host.idle.append(conn)
            self._wake()
        else:
            self._closed_one(conn)

    def drop_idle(self) -> None:
        """Close every idle connection and keep serving: the next requests connect anew (a live fault was added
        that new connections must meet)."""
        for host in self.hosts.values():
            while host.idle:
                self._closed_one(host.idle.pop())

    def close_idle(self) -> None:
        """Close every idle connection (the proxy is shutting down)."""
        self.closed = True
        for host in self.hosts.values():
            while host.idle:
                self._closed_one(host.idle.pop())

    def _prune(self, host: HostPool, idle_timeout: float) -> None:
        """Drop idle connections the upstream closed or that idled too long."""
        idle = host.idle
        if not idle:
            return
        oldest = time.monotonic() - idle_timeout
        for conn in [c for c in idle if c.idle_since < oldest or not c.alive()]:
            idle.remove(conn)
            self._closed_one(conn)

    def _close_idle_elsewhere(self, host: HostPool) -> bool:
        """At maxConnections with idle connections to other hosts: close one so this host may connect."""
        for other in self.hosts.values():
            if other is not host and other.idle:
                self._closed_one(other.idle.popleft())
                return True
        return False

    def _closed_one(self, conn: UpstreamConnection) -> None:
        conn.close()
        self._lost()

    def _lost(self) -> None:
        """One connection fewer: a pending request may connect."""
        self.connections -= 1
        self._wake()

    def _wake(self) -> None:
        """Wake the oldest pending request still waiting."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def stats(self) -> dict[str, Any]:
        """Pool, circuit breaker and outlier state for the config dump."""
        now = time.monotonic()
        ejected = sorted(self.outlier.ejected(now)) if self.outlier else []
        return {"connections": self.connections, "pending": self.pending, "active": self.active,
                "retries": self.retries, "overflows": self.overflows,
                "idle": {key: len(host.idle) for key, host in self.hosts.items()},
                "endpoints": list(self.endpoint_keys), "ejected": ejected,
                "loadBalancer": self.policy.load_balancer, "source": self.policy.source}
