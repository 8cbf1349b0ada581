"""Inbound: HBONE CONNECTs to local workloads (port 15008) and plaintext captured for them (15006's job).

HBONE (`on_connect`, called by `HboneServer` per CONNECT): the authority must be
`ip:port` of an ambient workload of this node (else 400, or 503 when the
address is a workload served elsewhere), the certificate the client asked for
by SNI must be that workload's, then L4 authorization with the peer's verified
identity and the original client IP from `forwarded` (denied: 401 naming the
policy). Accepted tunnels are connected to the workload from the client's own
address when that is a loopback address, so the app sees its real client.

Plaintext (`handle_plaintext`): a connection on a workload's inbound capture
address. STRICT PeerAuthentication closes it at once; otherwise it is
authorized without a principal and forwarded from the client's address.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable

from agents.common.certs import parse_spiffe
from agents.common.toxics import toxic_splice, toxic_target
from agents.hbone import ConnectDecision, ConnectRequest
from agents.ztunnel.config import Service, Snapshot, Workload
from agents.ztunnel.headers import forwarded_for, forwarded_node, parse_baggage, trace_id
from agents.ztunnel.policy import STRICT, ConnInfo, authorize, mtls_mode
from agents.ztunnel.relay import can_bind_source, connect_from, splice
from agents.ztunnel.telemetry import ConnectionRecord, Peer, Telemetry, peer_from_baggage, tcp_labels
from agents.ztunnel.toxics import FaultGate

log = logging.getLogger("meshlab.ztunnel.inbound")


class Inbound:
    """Serves HBONE requests and inbound plaintext captures for this node's workloads."""

    def __init__(self, current: Callable[[], Snapshot | None], telemetry: Telemetry,
                 connect_timeout: float = 5.0,
                 original_destination: Callable[[socket.socket], tuple[str, int]] | None = None) -> None:
        self.current = current
        self.telemetry = telemetry
        self.connect_timeout = connect_timeout
        self.gate = FaultGate(current)  # live faults: toxics, partitions, revoked identities
        # Explicit capture: the capture address the client connected to; transparent: SO_ORIGINAL_DST.
        self.original_destination = original_destination or _own_address

    # ------------------------------------------------------------ HBONE

    async def on_connect(self, request: ConnectRequest) -> ConnectDecision:
        """Decide on one CONNECT: refuse (400/401/503) or accept with a connected workload socket."""
        snapshot = self.current()
        client_ip = _client_ip(request)
        record = ConnectionRecord("inbound", _client_address(client_ip, request), request.authority, protocol="hbone",
                                  source_identity=request.peer_identity,
                                  trace_id=trace_id(request.headers.get("traceparent")))
        if snapshot is None:
            return self._refuse(record, None, 503, "no config yet", "no_config", "NR")
        workload = snapshot.by_address.get(request.host)
        if workload is None:
            return self._refuse(record, snapshot, 400, f"{request.host} is not a workload address", "bad_destination",
                                "NR")
        record.destination, record.destination_identity = Peer.of(workload), workload.identity
        record.destination_workload_address = request.authority
        if workload.node != snapshot.node or workload.mode != "ambient":
            return self._refuse(record, snapshot, 503, f"workload {workload.name} is not served by this ztunnel "
                                f"(node {workload.node}, mode {workload.mode})", "not_served_here", "NR")
        if request.local_identity is not None and request.local_identity != workload.identity:
            return self._refuse(record, snapshot, 400, f"the connection is for {request.local_identity}, "
                                f"but {request.authority} is {workload.identity}", "wrong_identity", "NR")
        service = self._service(snapshot, workload, request)
        record.service = service.hostname if service else None
        record.source = self._source(snapshot, client_ip, request)
        principal = request.peer_identity
        decision = authorize(snapshot.authorization_policies, ConnInfo(
            source_principal=principal, source_namespace=_namespace(principal), source_ip=client_ip,
            dest_namespace=workload.namespace, dest_labels=workload.labels, dest_port=request.port,
            dest_ip=request.host))

        def labels(flags: str) -> tuple[str, ...]:
            return tcp_labels("destination", record.source, principal, record.destination, workload.identity,
                              service, flags, "mutual_tls", snapshot.cluster)
        if not decision.allowed:
            record.labels = labels("RBAC")
            outcome = f"denied: {decision.policy or 'no ALLOW match'}"
            return self._refuse(record, snapshot, 401, decision.reason, outcome, "RBAC")
        source = snapshot.by_address.get(client_ip)
        refusal = self.gate.refusal(snapshot, source.node if source else None, workload.node,
                                    (principal, workload.identity), pooled=True)
        if refusal is not None:
            record.labels = labels("FI")
            return self._refuse(record, snapshot, 503, refusal, "fault", "FI")
        try:
            upstream = await connect_from((workload.address, request.port),
                                          client_ip if can_bind_source(client_ip) else None, self.connect_timeout,
                                          mark=snapshot.upstream_mark)
        except OSError as e:
            record.labels = labels("UF")
            return self._refuse(record, snapshot, 503, f"cannot connect to {request.authority}: {e.strerror or e}",
                                "upstream_connect_failed", "UF")
        self.telemetry.opened(record, labels("-"))

        def complete(bytes_in: int, bytes_out: int, error: str | None) -> None:
            # bytes_in: client → workload (the request); bytes_out: workload → client (the response)
            self.telemetry.closed(record, f"reset: {error}" if error else "ok", bytes_out, bytes_in)
        toxics = self.gate.toxics(snapshot, source, workload, service, inbound=True)
        if toxics:  # off the fast path: an asyncio copy loop applies them
            return ConnectDecision.accept(toxic_target(upstream, toxics, self.gate.is_on)[0], complete)
        return ConnectDecision.accept(upstream, complete)

    def _refuse(self, record: ConnectionRecord, snapshot: Snapshot | None, status: int, reason: str, outcome: str,
                flags: str) -> ConnectDecision:
        log.info("inbound HBONE %s from %s (%s) refused with %d: %s", record.destination_address,
                 record.source_address, record.source_identity, status, reason)
        record.detail = f"{status} {reason}"
        if record.labels is None:
            record.labels = tcp_labels("destination", record.source, record.source_identity, record.destination,
                                       record.destination_identity, None, flags, "mutual_tls",
                                       snapshot.cluster if snapshot else "unknown")
        self.telemetry.closed(record, outcome, flags=flags)
        return ConnectDecision.refuse(status, reason)

    @staticmethod
    def _service(snapshot: Snapshot, workload: Workload, request: ConnectRequest) -> Service | None:
        """The service the client addressed (the `host=` of forwarded), else one the workload port serves."""
        forwarded = request.headers.get("forwarded", "")
        for part in forwarded.split(";"):
            key, _, value = part.strip().partition("=")
            if key.lower() == "host" and value.strip('"') in snapshot.by_hostname:
                return snapshot.by_hostname[value.strip('"')]
        return snapshot.service_of(workload, request.port)

    @staticmethod
    def _source(snapshot: Snapshot, client_ip: str, request: ConnectRequest) -> Peer:
        """The source workload: known by address with the identity it proved, else as its baggage describes it."""
        known = snapshot.by_address.get(client_ip)
        if known is not None and known.identity == request.peer_identity:
            return Peer.of(known)
        return peer_from_baggage(parse_baggage(request.headers.get("baggage")))

    # ------------------------------------------------------------ plaintext capture

    async def handle_plaintext(self, client: socket.socket) -> None:
        """Serve one connection captured on a workload's inbound capture address."""
        peer = client.getpeername()[:2]
        capture, port = self.original_destination(client)
        client_ip = str(peer[0])
        record = ConnectionRecord("inbound", f"{peer[0]}:{peer[1]}", f"{capture}:{port}")
        snapshot = self.current()
        workload = snapshot.inbound_target(str(capture), int(port)) if snapshot else None
        if snapshot is None or workload is None:
            record.labels = tcp_labels("destination", Peer(), None, Peer(), None, None, "NR", "none")
            return self._close(client, record, "no_route", "NR", "no workload at this capture address")
        known_source = snapshot.by_address.get(client_ip)
        record.source = Peer.of(known_source)
        record.destination, record.destination_identity = Peer.of(workload), workload.identity
        record.destination_workload_address = f"{workload.address}:{port}"
        service = snapshot.service_of(workload, int(port))
        record.service = service.hostname if service else None

        def labels(flags: str) -> tuple[str, ...]:
            return tcp_labels("destination", record.source, None, record.destination, workload.identity, service,
                              flags, "none", snapshot.cluster)
        mode = mtls_mode(snapshot.peer_authentications, workload.namespace, workload.labels, int(port))
        if mode == STRICT:
            record.labels = labels("NR")
            return self._close(client, record, "mtls_required", "NR",
                               f"PeerAuthentication STRICT for {workload.namespace}/{workload.name} port {port}")
        decision = authorize(snapshot.authorization_policies, ConnInfo(
            source_principal=None, source_namespace=None, source_ip=client_ip, dest_namespace=workload.namespace,
            dest_labels=workload.labels, dest_port=int(port), dest_ip=workload.address))
        if not decision.allowed:
            record.labels = labels("RBAC")
            return self._close(client, record, f"denied: {decision.policy or 'no ALLOW match'}", "RBAC",
                               decision.reason)
        try:
            upstream = await connect_from((workload.address, int(port)),
                                          client_ip if can_bind_source(client_ip) else None, self.connect_timeout,
                                          mark=snapshot.upstream_mark)
        except OSError as e:
            record.labels = labels("UF")
            return self._close(client, record, "upstream_connect_failed", "UF",
                               f"cannot connect to {workload.address}:{port}: {e.strerror or e}")
        self.telemetry.opened(record, labels("-"))
        toxics = self.gate.toxics(snapshot, known_source, workload, service, inbound=True)
        request_bytes, response_bytes, error = await (toxic_splice(client, upstream, toxics, self.gate.is_on)
                                                      if toxics else splice(client, upstream))
        self.telemetry.closed(record, f"reset: {error}" if error else "ok", response_bytes, request_bytes)

    def _close(self, client: socket.socket, record: ConnectionRecord, outcome: str, flags: str, why: str) -> None:
        log.info("inbound plaintext %s -> %s closed: %s", record.source_address, record.destination_address, why)
        record.detail = why
        try:
            client.close()
        except OSError:
            pass
        self.telemetry.closed(record, outcome, flags=flags)


def _own_address(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()[:2]
    return str(host), int(port)


def _client_ip(request: ConnectRequest) -> str:
    """The original client IP: from `forwarded` when it holds an address, else the HBONE peer's."""
    claimed = forwarded_for(request.headers.get("forwarded"))
    if claimed:
        try:
            return str(ipaddress.ip_address(claimed))
        except ValueError:
            pass  # "unknown" or an obfuscated node name: fall back to the peer
    return request.peer_addr[0] if request.peer_addr else "0.0.0.0"


def _client_address(client_ip: str, request: ConnectRequest) -> str:
    """`ip:port` of the original client as `forwarded` gives it, else the HBONE peer's address."""
    node = forwarded_node(request.headers.get("forwarded"))
    if node and node.startswith(client_ip.join("[]") if ":" in client_ip else client_ip):
        return node
    return f"{request.peer_addr[0]}:{request.peer_addr[1]}" if request.peer_addr else client_ip


def _namespace(principal: str | None) -> str | None:
    try:
        return parse_spiffe(principal)[1] if principal else None
    except ValueError:
        return None
