"""Upstream connections of the L7 proxies: HBONE to mesh endpoints, plain TCP to the rest and to the local app.

The L7 engine calls a connector for each new upstream connection with the endpoint it
picked (`view.endpoint`), the service key and the downstream it serves. Mesh endpoints
(ambient or sidecar) are reached through an HBONE tunnel to the server that serves them —
their node's ztunnel or their own sidecar — as this proxy's identity, with `forwarded`
naming the original client; endpoints outside the mesh get a plain TCP connection. With
transparent capture (a docker node) those plain sockets carry the proxy mark, so the node's
iptables rules let them through instead of capturing the proxy's own traffic again (HBONE's
port 15008 is never captured). Live L4 faults meet these connections through `OnwardToxics`
(which ones, and for whom: agents/proxy/toxics.py).
"""

from __future__ import annotations

import asyncio
import socket
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from agents.common.toxics import SocketEnd, TunnelEnd
from agents.hbone import HboneError
from agents.l7.upstream import UpstreamConnectError
from agents.proxy.bridge import LIMIT, Streams, tunnel_streams
from agents.proxy.toxics import OnwardToxics
from agents.ztunnel.dialer import HboneDialer
from agents.ztunnel.headers import new_traceparent
from agents.ztunnel.relay import connect_from

MESH_MODES = ("ambient", "sidecar")


def client_headers(downstream: Any, hostname: str) -> dict[str, str]:
    """The CONNECT headers on behalf of the downstream's client: who it is (baggage), where it connected from."""
    address = downstream.source_address or "unknown"
    peer = downstream.source
    items = [("k8s.namespace.name", peer.namespace), ("k8s.workload.name", peer.workload),
             ("service.name", peer.canonical_service), ("service.version", peer.canonical_revision)]
    baggage = ",".join(f"{k}={urllib.parse.quote(v, safe='')}" for k, v in items if v and v != "unknown")
    return {"forwarded": f'for="{address}";host={hostname}', "baggage": baggage, "traceparent": new_traceparent()}


class MeshConnector:
    """Opens upstream connections as `identity` (a waypoint's own, or a sidecar's workload's)."""

    def __init__(self, dialer: HboneDialer, identity: Callable[[], str], hostname: Callable[[str], str],
                 local_ip: Callable[[], str | None], timeout: float = 5.0,
                 mark: Callable[[], int | None] = lambda: None, toxics: OnwardToxics | None = None) -> None:
        self.dialer = dialer
        self.identity = identity
        self.hostname = hostname
        self.local_ip = local_ip
        self.timeout = timeout
        self.mark = mark  # SO_MARK of plain upstream sockets (transparent capture), None for none
        self.toxics = toxics  # live L4 faults on the connections this proxy opens (agents/proxy/toxics.py)

    def affinity(self, endpoint: Mapping[str, Any], service: str, downstream: Any) -> str:
        """The engine's pool reuses a connection only for requests of the same affinity (the faults it carries)."""
        return self.toxics.affinity(endpoint, service, downstream) if self.toxics is not None else ""

    async def __call__(self, endpoint: Mapping[str, Any], service: str, downstream: Any) -> Streams:
        refused = self.toxics.refusal(endpoint) if self.toxics is not None else None
        if refused is not None:  # as a cut network looks to Envoy: the connection cannot be made
            raise UpstreamConnectError("UF", f"connect to {endpoint['ip']}:{endpoint['port']}: {refused}")
        faults = self.toxics.faults(endpoint, service, downstream) if self.toxics is not None else []
        if endpoint.get("mode") in MESH_MODES:
            authority = f"{endpoint['ip']}:{endpoint['port']}"
            headers = client_headers(downstream, self.hostname(service))
            try:
                tunnel = await self.dialer.connect(tuple(endpoint["hbone"]), authority, self.identity(),
                                                   str(endpoint["identity"]), headers)
            except HboneError as e:
                raise UpstreamConnectError("UF", f"HBONE to {authority} via {endpoint['hbone'][0]}: {e}") from None
            if faults and self.toxics is not None:
                return await self.toxics.streams(TunnelEnd(tunnel), faults)
            return await tunnel_streams(tunnel)
        if faults and self.toxics is not None:
            sock = await tcp_socket(str(endpoint["ip"]), int(endpoint["port"]), self.local_ip(), self.timeout,
                                    self.mark())
            return await self.toxics.streams(SocketEnd(sock), faults)
        return await tcp_connect(str(endpoint["ip"]), int(endpoint["port"]), self.local_ip(), self.timeout,
                                 self.mark())


async def tcp_socket(ip: str, port: int, local_ip: str | None, timeout: float,
                     mark: int | None = None) -> socket.socket:
    """A connected plain TCP socket, as `tcp_connect` makes it; raises UpstreamConnectError."""
    try:
        return await connect_from((ip, port), local_ip, timeout, mark=mark)
    except (OSError, asyncio.TimeoutError) as e:
        reason = "timed out" if isinstance(e, asyncio.TimeoutError) else (e.strerror or str(e))
        raise UpstreamConnectError("UF", f"connect to {ip}:{port}: {reason}") from None


async def tcp_connect(ip: str, port: int, local_ip: str | None, timeout: float, mark: int | None = None) -> Streams:
    """A plain TCP connection (from `local_ip` when given, carrying `mark` when given), as the engine's streams."""
    try:
        if mark is not None:
            sock = await connect_from((ip, port), local_ip, timeout, mark=mark)
            return await asyncio.open_connection(sock=sock, limit=LIMIT)
        return await asyncio.wait_for(
            asyncio.open_connection(ip, port, limit=LIMIT, local_addr=(local_ip, 0) if local_ip else None), timeout)
    except (OSError, asyncio.TimeoutError) as e:
        reason = "timed out" if isinstance(e, asyncio.TimeoutError) else (e.strerror or str(e))
        raise UpstreamConnectError("UF", f"connect to {ip}:{port}: {reason}") from None
