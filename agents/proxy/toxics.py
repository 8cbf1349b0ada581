"""L4 toxics (latency, bandwidth, reset_peer, ...) in a sidecar, with the ztunnel's engine (`agents.common.toxics`).

Who applies a toxic, so that a connection meets it once (as in `agents.ztunnel.toxics`):
an ambient source's ztunnel applies it next to the client; otherwise the proxy in front
of the destination does. For a sidecar that means

* inbound (HBONE from a mesh peer, or plaintext from outside the mesh): the toxics that
  match (source, this workload, its service), unless the source is an ambient workload;
* outbound TCP pass-through to an endpoint outside the mesh (mode `none`, or Istio's
  passthrough): nobody is in front of that destination, so the sidecar applies them;
* outbound L7 to an endpoint outside the mesh: on the engine's upstream connection to it
  (`OnwardToxics`, in the connector), for the same reason.

Outbound L7 to a mesh endpoint leaves them to the destination's proxy (HTTP requests are
routed one by one, so the destination is not known when the workload's connection is
accepted). On the inbound side a hit connection leaves the fast path for the asyncio copy
loop (`ToxicLink`), placed on the downstream side of the L7 engine, so the engine sees a slow
or broken client connection exactly as a TCP toxic would make it.

A waypoint applies the toxics of the traffic it routes on its onward connections
(`OnwardToxics` for every endpoint): only it knows which workload a request goes to, so the
client's ztunnel leaves the hop to the waypoint alone and the destination's ztunnel sees an
ambient source and leaves it too. The engine pools upstream connections across clients, so
each connection carries the ids of the faults it was opened under (`affinity`) and is reused
only for requests that meet the same ones.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agents.common.faults import AgentFault, ConnFacts, connection_faults
from agents.common.toxics import L4_KINDS, End, SocketEnd, ToxicLink, toxic_splice, toxic_target
from agents.proxy.bridge import LIMIT, Streams
from agents.ztunnel.toxics import FaultGate
from agents.ztunnel.config import Service, Workload
from agents.ztunnel.relay import splice

_links: set[asyncio.Future[Any]] = set()  # running links, referenced until they finish
# Faults that act when a connection opens: after one is added, pooled connections are let go so the next
# requests open new ones (an L4 toxic hits them; an expired or foreign certificate fails their handshake).
CONNECTION_FAULTS = (*L4_KINDS, "expire_cert", "foreign_ca", "revoke", "partition")


class PoolRetirer:
    """Lets an L7 proxy's pooled connections go when a config adds a fault that acts on new connections."""

    def __init__(self) -> None:
        self._fault_ids: set[str] = set()

    def follow(self, view: Any, engines: Sequence[Any], dialer: Any, identities: Sequence[str]) -> None:
        """A new config: when it adds a fault that acts on new connections, close the idle upstream connections
        of the L7 engines and retire the HBONE pools, so that the next requests meet the fault."""
        ids = {f.id for f in view.snapshot.faults if f.kind in CONNECTION_FAULTS}
        added, self._fault_ids = ids - self._fault_ids, ids
        if not added:
            return
        for engine in engines:
            for cluster in list(engine.clusters.values()):
                cluster.drop_idle()
        for identity in identities:
            dialer.rotated(identity)


class SidecarToxics(PoolRetirer):
    """The L4 faults of one sidecar, asked of the current view (a removed fault stops acting at once)."""

    def __init__(self, view: Callable[[], Any]) -> None:
        super().__init__()
        self.view = view

    def is_on(self, fault: AgentFault) -> bool:
        view = self.view()
        return view is not None and fault.active() and fault.id in view.snapshot.fault_ids

    def _faults(self, source: Workload | None, destination: str | None, destination_node: str | None,
                service: Service | None) -> list[AgentFault]:
        view = self.view()
        if view is None or not view.snapshot.faults:
            return []
        facts = ConnFacts(source_workload=source.name if source else None, source_node=source.node if source else None,
                          destination_workload=destination, destination_node=destination_node,
                          service=service.key if service else None)
        return connection_faults(view.snapshot.faults, facts, L4_KINDS)

    def inbound(self, source: Workload | None, workload: Workload, service: Service | None) -> list[AgentFault]:
        """The toxics of one connection to this sidecar's workload (none when an ambient source's ztunnel
        applied them)."""
        if source is not None and source.mode == "ambient":
            return []
        return self._faults(source, workload.name, workload.node, service)

    def source_of(self, client_ip: str, identity: str | None = None) -> Workload | None:
        """The workload a connection comes from (by address; with its proved identity when there is one)."""
        view = self.view()
        known = view.snapshot.by_address.get(client_ip) if view is not None else None
        if known is None or (identity is not None and known.identity != identity):
            return None
        return known

    # ---------------------------------------------------------------- the places the sidecar calls

    def target(self, target: socket.socket, source: Workload | None, workload: Workload,
               service: Service | None) -> Any:
        """An accepted HBONE CONNECT's target (the app's socket or the L7 engine's), behind the inbound toxics."""
        faults = self.inbound(source, workload, service)
        if not faults:
            return target
        pair, task = toxic_target(target, faults, self.is_on)
        _keep(task)
        return pair

    def downstream(self, client: socket.socket, source: Workload | None, workload: Workload,
                   service: Service | None) -> socket.socket:
        """A plaintext client connection as the L7 engine should see it: through the inbound toxics."""
        faults = self.inbound(source, workload, service)
        if not faults:
            return client
        mine, theirs = socket.socketpair()
        _keep(asyncio.ensure_future(ToxicLink(SocketEnd(client), SocketEnd(theirs), faults, self.is_on).run()))
        return mine

    async def splice(self, client: socket.socket, upstream: socket.socket, workload: Workload,
                     endpoint: Mapping[str, Any] | None, service: Service | None) -> None:
        """An outbound TCP connection to an endpoint outside the mesh (or a passthrough destination)."""
        destination = _workload_at(self.view(), endpoint, upstream)
        name = destination.name if destination else (str(endpoint["workload"]) if endpoint else None)
        faults = self._faults(workload, name, destination.node if destination else None, service)
        if faults:
            await toxic_splice(client, upstream, faults, self.is_on)
        else:
            await splice(client, upstream)


class OnwardToxics:
    """The L4 toxics an L7 engine's connector applies on the upstream connections it opens.

    `mesh_endpoints`: a waypoint applies them towards every endpoint; a sidecar only towards endpoints
    outside the mesh (a mesh endpoint's own ztunnel or sidecar applies them, inbound).
    """

    def __init__(self, view: Callable[[], Any], mesh_endpoints: bool) -> None:
        self.view = view
        self.mesh_endpoints = mesh_endpoints

    def is_on(self, fault: AgentFault) -> bool:
        view = self.view()
        return view is not None and fault.active() and fault.id in view.snapshot.fault_ids

    def _matching(self, endpoint: Mapping[str, Any], service: str, downstream: Any) -> list[AgentFault]:
        """The active L4 faults whose target covers (downstream's source, endpoint, service), before the draw."""
        view = self.view()
        if view is None or not view.snapshot.faults:
            return []
        if not self.mesh_endpoints and endpoint.get("mode") in ("ambient", "sidecar"):
            return []
        return connection_faults(view.snapshot.faults, self.facts(view, endpoint, service, downstream), L4_KINDS,
                                 draw=False)

    @staticmethod
    def facts(view: Any, endpoint: Mapping[str, Any], service: str, downstream: Any) -> ConnFacts:
        by_name = view.snapshot.by_name
        peer = downstream.source
        source = by_name.get((peer.namespace, peer.workload)) if peer.workload != "unknown" else None
        destination = by_name.get((str(endpoint.get("namespace") or ""), str(endpoint.get("workload") or "")))
        return ConnFacts(source_workload=source.name if source else None, source_node=source.node if source else None,
                         destination_workload=str(endpoint.get("workload") or "") or None,
                         destination_node=destination.node if destination else None, service=service or None)

    def refusal(self, endpoint: Mapping[str, Any]) -> str | None:
        """Why this proxy may not connect to `endpoint` at all (a partition between its node and the
        endpoint's, a revoked identity), or None. Unlike toxics, for every endpoint: in sidecar mode no
        ztunnel is on the path to enforce a partition."""
        view = self.view()
        if view is None or not view.snapshot.faults:
            return None
        snapshot = view.snapshot
        destination = snapshot.by_name.get((str(endpoint.get("namespace") or ""), str(endpoint.get("workload") or "")))
        identities = (str(endpoint["identity"]),) if endpoint.get("mode") in ("ambient", "sidecar") else ()
        return FaultGate.refusal(snapshot, snapshot.node, destination.node if destination else None, identities)

    def affinity(self, endpoint: Mapping[str, Any], service: str, downstream: Any) -> str:
        """Which faults a connection for this request would be opened under ("" for none): a pooled connection
        is reused only for requests with the same affinity, so an edge's toxics stay with the edge's source."""
        return ",".join(sorted(f.id for f in self._matching(endpoint, service, downstream)))

    def faults(self, endpoint: Mapping[str, Any], service: str, downstream: Any) -> list[AgentFault]:
        """The toxics of one new upstream connection (toxicity drawn here, once per connection)."""
        return [f for f in self._matching(endpoint, service, downstream)
                if f.toxicity >= 1.0 or random.random() < f.toxicity]

    async def streams(self, server: End, faults: Sequence[AgentFault]) -> Streams:
        """The engine's streams to `server` (an upstream socket or HBONE tunnel) through `faults`."""
        mine, theirs = socket.socketpair()
        _keep(asyncio.ensure_future(ToxicLink(SocketEnd(theirs), server, faults, self.is_on).run()))
        return await asyncio.open_connection(sock=mine, limit=LIMIT)


def _workload_at(view: Any, endpoint: Mapping[str, Any] | None, upstream: socket.socket) -> Workload | None:
    """The workload an outbound connection goes to: the endpoint's, else the one at the address it reached."""
    if view is None:
        return None
    if endpoint is not None:
        return view.snapshot.by_name.get((str(endpoint.get("namespace") or ""), str(endpoint["workload"])))
    try:
        return view.snapshot.by_address.get(str(upstream.getpeername()[0]))
    except OSError:
        return None


def _keep(task: asyncio.Future[Any]) -> None:
    _links.add(task)
    task.add_done_callback(_links.discard)
