"""The waypoint: L7 for the services of a namespace (or one service), between ztunnels.

A ztunnel whose destination service has a waypoint opens an HBONE tunnel to it (port
15008), presenting the source workload's certificate and asking, by SNI, for the
waypoint's; the CONNECT authority is the service (`hostname:port`). The waypoint serves
the HTTP/1.1 inside the tunnel with the L7 engine (reporter `waypoint`): authorization with
the policies attached to it or to the service, routing, faults, retries, outlier detection,
then an HBONE tunnel as *its own* identity to the chosen endpoint's ztunnel (or sidecar).
Live L4 faults on the traffic it routes are applied here, once, on that onward connection
(`OnwardToxics`): the client's ztunnel does not apply them on its hop to the waypoint.
The source the metrics name comes from the tunnel: its verified peer identity, the
`forwarded` client address and the `baggage` the source ztunnel wrote.
"""

from __future__ import annotations

import logging
from typing import Any

from agents.hbone import ConnectDecision, ConnectRequest, HboneServer
from agents.l7.proxy import Downstream, L7Proxy
from agents.proxy.agent import L7Agent
from agents.proxy.bridge import serving_streams
from agents.proxy.connect import MeshConnector
from agents.proxy.faults import live_fault
from agents.proxy.toxics import OnwardToxics, PoolRetirer
from agents.proxy.view import MeshView
from agents.ztunnel.headers import forwarded_node, parse_baggage
from agents.ztunnel.telemetry import Peer, peer_from_baggage

log = logging.getLogger("meshlab.waypoint")


class Waypoint(L7Agent):
    kind = "waypoint"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.identity = ""
        self.connector = MeshConnector(self.dialer, lambda: self.identity,
                                       lambda s: self.view.service_hostname(s) if self.view else s,
                                       lambda: self.address, mark=self._upstream_mark,
                                       toxics=OnwardToxics(lambda: self.view, mesh_endpoints=True))
        self.engine = L7Proxy(lambda: self.view, self.connector, self.telemetry, "waypoint",
                              extra_fault=live_fault(lambda: self.view))
        self.hbone = HboneServer(self.address, self.ports.hbone, self.certs.server_context, self.on_connect,
                                 proxy_name="waypoint")
        self.pools = PoolRetirer()

    async def start_listeners(self) -> None:
        await self.hbone.start()

    async def configure(self, view: MeshView) -> list[str]:
        identity = str(view.proxy.get("identity") or "")
        if not identity:
            raise ValueError("proxy.identity: the waypoint's identity is missing")
        self.identity = identity
        view._authz = lambda downstream: view.waypoint_target(view.services.get(downstream.service))
        # Like a sidecar: a new certificate or L4 fault meets new connections, so pooled ones are let go.
        self.pools.follow(view, (self.engine,), self.dialer, [identity])
        return [identity]

    async def close_listeners(self) -> None:
        await self.hbone.close()
        await self.engine.aclose()

    def describe(self) -> dict[str, Any]:
        return {"hbone": f"{self.address}:{self.hbone.port}", "identity": self.identity,
                "engine": self.engine.stats()}

    async def on_connect(self, request: ConnectRequest) -> ConnectDecision:
        """Accept a tunnel addressed to a service this waypoint serves, and serve HTTP inside it."""
        view = self.view
        if view is None:
            return ConnectDecision.refuse(503, "no config yet")
        if request.local_identity is not None and request.local_identity != self.identity:
            return ConnectDecision.refuse(400, f"this is waypoint {self.identity}, not {request.local_identity}")
        found = view.service_by_authority(request.authority)
        if found is None:
            return ConnectDecision.refuse(400, f"{request.authority} is not a service this waypoint knows")
        service, port = found
        if service.waypoint is None or service.waypoint.identity != self.identity:
            return ConnectDecision.refuse(503, f"service {service.hostname} is not served by this waypoint")
        client = forwarded_node(request.headers.get("forwarded")) or (
            f"{request.peer_addr[0]}:{request.peer_addr[1]}" if request.peer_addr else "unknown")
        downstream = Downstream(service=service.key, port=port, source=self._source(view, client, request),
                                source_principal=request.peer_identity, source_address=client.strip('"'),
                                security="mutual_tls")
        return ConnectDecision.accept(serving_streams(lambda reader, writer: self.engine.serve(reader, writer,
                                                                                              downstream)))

    @staticmethod
    def _source(view: MeshView, client: str, request: ConnectRequest) -> Peer:
        """The client workload: known by address with the identity it proved, else as its baggage says."""
        ip = client.strip('"').rpartition(":")[0].strip("[]")
        known = view.snapshot.by_address.get(ip)
        if known is not None and known.identity == request.peer_identity:
            return Peer.of(known)
        return peer_from_baggage(parse_baggage(request.headers.get("baggage")))
