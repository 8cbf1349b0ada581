"""Which live faults a ztunnel applies to a connection, and the gate its data paths ask.

Once per connection: L4 toxics are applied by the source's ztunnel when the
source is an ambient workload (outbound, next to the client, so a reset reaches
it as a reset), else by the ztunnel in front of the destination (inbound HBONE
from sidecars, plaintext capture), so a connection meets its toxics exactly
once. Traffic to a service with a waypoint meets them at the waypoint, on its
onward connection (`agents.proxy.toxics.OnwardToxics`): the client's ztunnel
applies none on its hop to the waypoint, and the destination's ztunnel sees an
ambient source (the waypoint's `forwarded`) and applies none either. Partitions (the local provider's: loopback has
no per-node firewall) and revoked identities are refused on both sides.
The byte moving itself is `agents.common.toxics`.
"""

from __future__ import annotations

import socket
import weakref
from collections.abc import Callable

from agents.common.faults import AgentFault, ConnFacts, connection_faults, partition_between, revoked_identity
from agents.common.toxics import L4_KINDS
from agents.ztunnel.config import Service, Snapshot, Workload


class FaultGate:
    """Asks the current snapshot about faults (a fault removed from it stops acting at once)."""

    def __init__(self, current: Callable[[], Snapshot | None]) -> None:
        self.current = current
        self.outbound_toxics: weakref.WeakKeyDictionary[socket.socket, list[AgentFault]] = \
            weakref.WeakKeyDictionary()  # decided in Outbound.handle, used where the tunnel opens

    def is_on(self, fault: AgentFault) -> bool:
        snapshot = self.current()
        return snapshot is not None and fault.active() and fault.id in snapshot.fault_ids

    def toxics(self, snapshot: Snapshot, source: Workload | None, destination: Workload | None,
               service: Service | None, inbound: bool = False) -> list[AgentFault]:
        """The L4 toxics that hit one new connection (toxicity drawn here)."""
        if not snapshot.faults or (inbound and source is not None and source.mode == "ambient"):
            return []  # an ambient source's own ztunnel applied them
        facts = ConnFacts(source_workload=source.name if source else None, source_node=source.node if source else None,
                          destination_workload=destination.name if destination else None,
                          destination_node=destination.node if destination else None,
                          service=f"{service.name}.{service.namespace}" if service else None)
        return connection_faults(snapshot.faults, facts, L4_KINDS)

    @staticmethod
    def refusal(snapshot: Snapshot, source_node: str | None, destination_node: str | None,
                identities: tuple[str | None, ...] = (), pooled: bool = False) -> str | None:
        """Why a connection must be refused (a partition between the nodes, a revoked identity), or None.

        `pooled`: a stream on an HBONE connection that is already open (inbound), which may have been
        handshaken before an identity's certificate expired; a new connection meets the expired
        certificate itself (the TLS handshake fails), so the dialling side does not refuse for it."""
        if not snapshot.faults:
            return None
        if source_node and destination_node:
            cut = partition_between(snapshot.faults, source_node, destination_node)
            if cut is not None:
                return f"nodes {source_node} and {destination_node} are partitioned (fault {cut.id})"
        for identity in identities:
            revoked = revoked_identity(snapshot.faults, identity)
            if revoked is not None:
                return f"{identity} is revoked (fault {revoked.id})"
            for f in snapshot.faults if pooled else ():  # connections outlive the certificate: refuse new streams
                if f.kind == "expire_cert" and f.active() and f.params.get("identity") == identity:
                    return f"the certificate of {identity} has expired (fault {f.id})"
        return None

    @staticmethod
    def withheld_identities(snapshot: Snapshot) -> set[str]:
        """Local identities whose certificate a revoke fault takes away (expire_cert swaps in an expired
        certificate instead: `WorkloadCerts.follow`)."""
        return {str(f.params.get("identity")) for f in snapshot.faults if f.kind == "revoke" and f.active()}

    @staticmethod
    def next_expiry(snapshot: Snapshot) -> float | None:
        times = [f.expires_at for f in snapshot.faults if f.expires_at is not None and f.active()]
        return min(times) if times else None
