"""The sidecar: one workload's proxy in a sidecar namespace — its outbound L7, its inbound L7 and its L4 duties.

Explicit capture on the local provider (DESIGN §3), with three kinds of listeners:

* **outbound** on the sidecar's own address, one per service port of the mesh: the
  workload's resolver sends every connection there (`via: sidecar`); HTTP is routed per
  request by its Host (as Envoy's outbound listener for a port routes by virtual host), a
  TCP port that only one service uses is passed through to it at L4;
* **HBONE** on the workload's address, port 15008: mesh peers (ztunnels, waypoints, other
  sidecars) tunnel to it, presenting their identity;
* **inbound plaintext** on the workload's inbound-capture address and ports, for callers
  outside the mesh (`via: sidecar-inbound`), refused under STRICT PeerAuthentication.

Transparent capture on a docker node (the snapshot's `capture`, `proxy.capturePorts`), as an
injected Istio sidecar: iptables sends everything the workload opens to the sidecar's outbound
port and everything to the workload's ports to its inbound port (lab/capture.py), both bound on
the wildcard address; what the client asked for is read with SO_ORIGINAL_DST. Outbound HTTP is
routed by its Host (Envoy's virtual hosts) and, when the Host names no service, to the service
whose VIP the client dialled; a TCP service by its VIP; a port no service has is passed through
to the original destination. The sidecar's own plain upstream sockets carry the proxy mark.

Inbound requests get the L7 engine without routing (reporter `destination`, authorization
with the policies that select the workload) and go to the app on its own address;
outbound ones get routing, retries, faults (reporter `source`) and go over HBONE as the
workload's identity to mesh endpoints, plain TCP to the rest.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
from typing import Any

from agents.hbone import ConnectDecision, ConnectRequest, HboneServer, pipe_socket
from agents.l7.proxy import Downstream, L7Proxy
from agents.proxy.agent import L7Agent
from agents.proxy.bridge import LIMIT, Streams, serving_pair, serving_streams
from agents.proxy.connect import MeshConnector, client_headers, tcp_connect
from agents.proxy.faults import live_fault
from agents.proxy.toxics import OnwardToxics, SidecarToxics
from agents.proxy.view import MeshView
from agents.ztunnel import transparent
from agents.ztunnel.config import ConfigError, Service, Workload
from agents.ztunnel.headers import forwarded_for, forwarded_node, parse_baggage
from agents.ztunnel.listeners import CaptureListeners
from agents.ztunnel.policy import STRICT, ConnInfo, authorize, mtls_mode, namespace_of
from agents.ztunnel.relay import can_bind_source, connect_from, splice
from agents.ztunnel.telemetry import Peer, peer_from_baggage

log = logging.getLogger("meshlab.sidecar")
# The service whose VIP the client of this connection dialled (transparent capture): a request whose Host
# names no service goes there. One value per accepted connection (each is served in a task of its own).
_dialled_service: contextvars.ContextVar[str] = contextvars.ContextVar("dialled_service", default="")


class Sidecar(L7Agent):
    kind = "sidecar"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.workload: Workload | None = None
        self.hbone: HboneServer | None = None
        self.connector = MeshConnector(self.dialer, self._identity,
                                       lambda s: self.view.service_hostname(s) if self.view else s,
                                       lambda: self.address, mark=self._upstream_mark,
                                       toxics=OnwardToxics(lambda: self.view, mesh_endpoints=False))
        fault = live_fault(lambda: self.view)
        self.outbound = L7Proxy(lambda: self._outbound_view, self.connector, self.telemetry, "source",
                                extra_fault=fault)
        self.inbound = L7Proxy(lambda: self._inbound_view, self._to_app, self.telemetry, "destination",
                               route=False, extra_fault=fault)
        self.listeners = CaptureListeners({"outbound": self._accept_outbound, "inbound": self._accept_plaintext})
        self.toxics = SidecarToxics(lambda: self.view)  # live L4 faults (agents/proxy/toxics.py)
        self._outbound_view: MeshView | None = None
        self._inbound_view: MeshView | None = None

    def _identity(self) -> str:
        return self.workload.identity if self.workload else ""

    # ---------------------------------------------------------------- config

    async def configure(self, view: MeshView) -> list[str]:
        name = str(view.proxy.get("workload") or "")
        workload = view.snapshot.by_name.get((str(view.proxy.get("namespace") or ""), name))
        if workload is None:
            raise ConfigError(f"proxy.workload: no workload {name!r} in the snapshot")
        wanted = _listen_addresses(view, workload, self.address)
        if self.hbone is None or self.hbone.host != workload.address:
            hbone = HboneServer(workload.address, self.ports.hbone, self.certs.server_context, self._on_connect,
                                proxy_name="sidecar")
            try:
                await hbone.start()
            except OSError as e:
                raise ConfigError(f"cannot bind HBONE {workload.address}:{self.ports.hbone}: {e.strerror or e}")
            if self.hbone is not None:
                await self.hbone.close()
            self.hbone = hbone
        self.listeners.apply(wanted)
        self.workload = workload
        target = view.workload_target(workload)
        self._inbound_view = view.enforcing(lambda downstream: target).serving_only(workload)
        outbound = view.enforcing(None)
        by_host = outbound.service_for
        outbound.service_for = lambda authority, port: (  # type: ignore[method-assign]
            by_host(authority, port) or _dialled_service.get())
        self._outbound_view = outbound
        self.toxics.follow(view, (self.outbound, self.inbound), self.dialer, [workload.identity])
        return [workload.identity]

    async def close_listeners(self) -> None:
        await self.listeners.close()
        if self.hbone is not None:
            await self.hbone.close()
        await self.outbound.aclose()
        await self.inbound.aclose()

    def describe(self) -> dict[str, Any]:
        return {"workload": self.workload.name if self.workload else None,
                "hbone": f"{self.hbone.host}:{self.hbone.port}" if self.hbone else None,
                "listeners": [{"kind": k, "address": f"{ip}:{port}"} for k, ip, port in sorted(self.listeners.sockets)],
                "outbound": self.outbound.stats(), "inbound": self.inbound.stats()}

    # ---------------------------------------------------------------- outbound

    async def _accept_outbound(self, client: socket.socket) -> None:
        """One connection from the workload to its sidecar: HTTP routed by Host, or TCP to the port's one service."""
        view, workload = self.view, self.workload
        peer = client.getpeername()[:2]
        if view is None or workload is None:
            client.close()
            return
        dialled: Service | None = None
        ip, port = client.getsockname()[:2]
        if view.snapshot.capture == "transparent":  # iptables brought it here: where did the workload connect?
            here = port
            ip, port = transparent.original_destination(client)
            if port == here:  # not redirected: someone dialled the sidecar's port itself
                client.close()
                return
            found = view.snapshot.outbound.get((ip, port))
            dialled = found[0] if found else None
            if dialled is not None and found is not None and found[1].protocol == "tcp":
                await self._tcp_outbound(client, view, workload, dialled, port)
                return
        services = [s for s in view.snapshot.services if any(p.port == port for p in s.ports)]
        tcp = [s for s in services if next(p for p in s.ports if p.port == port).protocol == "tcp"]
        if tcp and len(services) == 1 and dialled is None:
            await self._tcp_outbound(client, view, workload, tcp[0], port)
            return
        if not services and dialled is None and view.snapshot.capture == "transparent":
            # no service has this port: Istio's passthrough, at L4
            await self._passthrough(client, view, ip, port)
            return
        _dialled_service.set(dialled.key if dialled is not None else "")
        downstream = Downstream(service="", port=port, source=Peer.of(workload), source_principal=workload.identity,
                                source_address=f"{peer[0]}:{peer[1]}", security="unknown")
        reader, writer = await _streams(client)
        await self.outbound.serve(reader, writer, downstream)

    async def _tcp_outbound(self, client: socket.socket, view: MeshView, workload: Workload, service: Service,
                            port: int) -> None:
        """An opaque TCP service: one endpoint per connection, over HBONE when it is in the mesh."""
        endpoints = view.endpoints(service.key, port)
        if not endpoints:
            client.close()
            return
        chosen = endpoints[hash(client.getpeername()) % len(endpoints)]
        downstream = Downstream(service=service.key, port=port, source=Peer.of(workload),
                                source_principal=workload.identity, source_address="%s:%d" % client.getpeername()[:2],
                                security="mutual_tls")
        if chosen["mode"] in ("ambient", "sidecar"):
            tunnel = await self.dialer.connect(tuple(chosen["hbone"]), f"{chosen['ip']}:{chosen['port']}",
                                               workload.identity, str(chosen["identity"]),
                                               client_headers(downstream, service.hostname))
            await pipe_socket(tunnel, client)
        else:
            upstream = await connect_from((str(chosen["ip"]), int(chosen["port"])), None,
                                          mark=view.snapshot.upstream_mark)
            await self.toxics.splice(client, upstream, workload, chosen, service)

    async def _passthrough(self, client: socket.socket, view: MeshView, ip: str, port: int) -> None:
        """A destination outside the mesh's services: to where the workload connected, as it asked."""
        try:
            upstream = await connect_from((ip, port), None, mark=view.snapshot.upstream_mark)
        except OSError as e:
            log.info("passthrough to %s:%d failed: %s", ip, port, e.strerror or e)
            client.close()
            return
        if self.workload is None:
            await splice(client, upstream)
            return
        await self.toxics.splice(client, upstream, self.workload, None, None)  # nobody else is in front of it

    # ---------------------------------------------------------------- inbound

    async def _on_connect(self, request: ConnectRequest) -> ConnectDecision:
        """An HBONE tunnel to this workload: served by the inbound L7 engine, or passed through for TCP ports."""
        view, workload = self.view, self.workload
        if view is None or workload is None:
            return ConnectDecision.refuse(503, "no config yet")
        if request.host != workload.address or (workload.ports and request.port not in workload.ports):
            return ConnectDecision.refuse(400, f"{request.authority} is not a port of workload {workload.name}")
        if request.local_identity is not None and request.local_identity != workload.identity:
            return ConnectDecision.refuse(400, f"this is {workload.identity}, not {request.local_identity}")
        client = (forwarded_node(request.headers.get("forwarded")) or
                  (f"{request.peer_addr[0]}:{request.peer_addr[1]}" if request.peer_addr else "unknown")).strip('"')
        source = self._source(view, client, request)
        service = view.snapshot.service_of(workload, request.port)
        if service is not None and _protocol(service, request.port) == "tcp":
            principal = request.peer_identity
            decision = authorize(view.snapshot.authorization_policies, ConnInfo(
                principal, namespace_of(principal) if principal else None, _ip(client), workload.namespace,
                workload.labels, request.port, workload.address))
            if not decision.allowed:
                return ConnectDecision.refuse(401, decision.reason)
            try:
                upstream = await connect_from((workload.address, request.port), _bindable(client),
                                              mark=view.snapshot.upstream_mark)
            except OSError as e:
                return ConnectDecision.refuse(503, f"cannot connect to the app: {e.strerror or e}")
            return ConnectDecision.accept(self.toxics.target(
                upstream, self.toxics.source_of(_ip(client), request.peer_identity), workload, service))
        downstream = Downstream(service=service.key if service else "", port=request.port, source=source,
                                source_principal=request.peer_identity, source_address=client,
                                security="mutual_tls", destination=Peer.of(workload))
        source_workload = self.toxics.source_of(_ip(client), request.peer_identity)
        if not self.toxics.inbound(source_workload, workload, service):  # no toxics: no socket in between
            return ConnectDecision.accept(serving_streams(lambda r, w: self.inbound.serve(r, w, downstream)))
        return ConnectDecision.accept(self.toxics.target(
            serving_pair(lambda r, w: self.inbound.serve(r, w, downstream)), source_workload, workload, service))

    async def _accept_plaintext(self, client: socket.socket) -> None:
        """A caller outside the mesh, on the workload's inbound-capture address."""
        view, workload = self.view, self.workload
        port = int(client.getsockname()[1])
        peer = client.getpeername()[:2]
        if view is None or workload is None:
            client.close()
            return
        if view.snapshot.capture == "transparent":  # iptables brought it here from the workload's ip:port
            ip, port = transparent.original_destination(client)
            if ip != workload.address or port not in workload.ports:
                log.info("plaintext from %s:%d for %s:%d refused: not %s", peer[0], peer[1], ip, port, workload.name)
                client.close()
                return
        if mtls_mode(view.snapshot.peer_authentications, workload.namespace, workload.labels, port) == STRICT:
            log.info("plaintext from %s:%d to %s refused: PeerAuthentication STRICT", peer[0], peer[1], workload.name)
            client.close()
            return
        known = view.snapshot.by_address.get(str(peer[0]))
        service = view.snapshot.service_of(workload, port)
        downstream = Downstream(service=service.key if service else "", port=port, source=Peer.of(known),
                                source_principal=None, source_address=f"{peer[0]}:{peer[1]}", security="none",
                                destination=Peer.of(workload))
        reader, writer = await _streams(self.toxics.downstream(client, known, workload, service))
        await self.inbound.serve(reader, writer, downstream)

    async def _to_app(self, chosen: Any, service: str, downstream: Downstream) -> Any:
        """The inbound engine's connector: the local app, from the original client's address when it can."""
        return await tcp_connect(str(chosen["ip"]), int(chosen["port"]), _bindable(downstream.source_address), 5.0,
                                 self._upstream_mark())

    @staticmethod
    def _source(view: MeshView, client: str, request: ConnectRequest) -> Peer:
        known = view.snapshot.by_address.get(_ip(client))
        if known is not None and known.identity == request.peer_identity:
            return Peer.of(known)
        return peer_from_baggage(parse_baggage(request.headers.get("baggage")))


def _listen_addresses(view: MeshView, workload: Workload, address: str) -> set[tuple[str, str, int]]:
    """The sidecar's capture sockets: its two redirect ports (transparent), else one per service port and
    the workload's inbound-capture address:ports (explicit)."""
    if view.snapshot.capture == "transparent":
        ports = view.proxy.get("capturePorts")
        if not isinstance(ports, dict) or not all(isinstance(ports.get(k), int) for k in ("outbound", "inbound")):
            raise ConfigError(f"proxy.capturePorts: want {{outbound, inbound}} ports with transparent capture, "
                              f"got {ports!r}")
        return {("outbound", "0.0.0.0", ports["outbound"]), ("inbound", "0.0.0.0", ports["inbound"])}
    wanted = {("outbound", address, port) for port in sorted({p.port for s in view.snapshot.services
                                                              for p in s.ports})}
    capture = view.proxy.get("inboundCapture")
    if capture:
        wanted |= {("inbound", str(capture), port) for port in workload.ports}
    return wanted


async def _streams(sock: socket.socket) -> Streams:
    return await asyncio.open_connection(sock=sock, limit=LIMIT)


def _protocol(service: Service, target_port: int) -> str:
    return next((p.protocol for p in service.ports if p.target_port == target_port), "http")


def _ip(address: str) -> str:
    ip = forwarded_for(f'for="{address}"')
    return ip or address.rpartition(":")[0].strip("[]")


def _bindable(address: str) -> str | None:
    ip = _ip(address)
    return ip if ip and can_bind_source(ip) else None
