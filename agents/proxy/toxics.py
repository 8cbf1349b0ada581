"""L4 toxics (latency, bandwidth, reset_peer, ...) in a sidecar, with the ztunnel's engine (`agents.common.toxics`).

Who applies a toxic, so that a connection meets it once (as in `agents.ztunnel.toxics`):
an ambient source's ztunnel applies it next to the client; otherwise the proxy in front
of the destination does. For a sidecar that means

* inbound (HBONE from a mesh peer, or plaintext from outside the mesh): the toxics that
  match (source, this workload, its service), unless the source is an ambient workload;
* outbound TCP pass-through to an endpoint outside the mesh (mode `none`, or Istio's
  passthrough): nobody is in front of that destination, so the sidecar applies them.

Outbound L7 to a mesh endpoint leaves them to the destination's proxy (HTTP requests are
routed one by one, so the destination is not known when the workload's connection is
accepted). A hit connection leaves the fast path for the asyncio copy loop (`ToxicLink`),
placed on the downstream side of the L7 engine, so the engine sees a slow or broken client
connection exactly as a TCP toxic would make it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agents.common.faults import AgentFault, ConnFacts, connection_faults
from agents.common.toxics import L4_KINDS, SocketEnd, ToxicLink, toxic_splice, toxic_target
from agents.ztunnel.config import Service, Workload
from agents.ztunnel.relay import splice

_links: set[asyncio.Future[Any]] = set()  # running links, referenced until they finish
# Faults that act when a connection opens: after one is added, pooled connections are let go so the next
# requests open new ones (an L4 toxic hits them; an expired or foreign certificate fails their handshake).
CONNECTION_FAULTS = (*L4_KINDS, "expire_cert", "foreign_ca", "revoke", "partition")


class SidecarToxics:
    """The L4 faults of one sidecar, asked of the current view (a removed fault stops acting at once)."""

    def __init__(self, view: Callable[[], Any]) -> None:
        self.view = view
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
        faults = self._faults(workload, str(endpoint["workload"]) if endpoint else None, None, service)
        if faults:
            await toxic_splice(client, upstream, faults, self.is_on)
        else:
            await splice(client, upstream)


def _keep(task: asyncio.Future[Any]) -> None:
    _links.add(task)
    task.add_done_callback(_links.discard)
