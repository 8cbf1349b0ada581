"""Outbound capture: a local workload's connection to a service VIP, carried to the destination workload.

For each captured connection: the original destination (service VIP and port)
names the service, the peer address names the source workload (a local ambient
workload connects from its own address, as a pod's traffic comes from its pod
IP), round robin picks an endpoint, and then either

* the endpoint is in the mesh: an HBONE tunnel to its node's ztunnel, as the
  source identity, to the destination identity, then bytes both ways; or
* it is not (mode `none`): a plain TCP connection from the source's address,
  so the destination sees its real client.

Failures close the client connection and are counted and logged with a reason.
"""

from __future__ import annotations

import itertools
import logging
import socket
import struct
from collections.abc import Callable

from agents.common.toxics import toxic_pipe_socket, toxic_splice
from agents.hbone import HboneError, pipe_socket
from agents.ztunnel.config import Service, ServicePort, Snapshot, Workload
from agents.ztunnel.dialer import HboneDialer
from agents.ztunnel.headers import connect_headers, trace_id
from agents.ztunnel.relay import can_bind_source, connect_from, splice
from agents.ztunnel.telemetry import UNKNOWN, ConnectionRecord, Peer, Telemetry, tcp_labels
from agents.ztunnel.toxics import FaultGate

log = logging.getLogger("meshlab.ztunnel.outbound")

_LINGER_RESET = struct.pack("ii", 1, 0)
OriginalDestination = Callable[[socket.socket], tuple[str, int]]


def capture_address(sock: socket.socket) -> tuple[str, int]:
    """Where the client meant to connect. Explicit capture: the VIP it connected to is the socket's own address.

    (Transparent capture replaces this with SO_ORIGINAL_DST.)
    """
    host, port = sock.getsockname()[:2]
    return str(host), int(port)


class Outbound:
    """Serves the connections accepted on outbound capture sockets."""

    def __init__(self, current: Callable[[], Snapshot | None], dialer: HboneDialer, telemetry: Telemetry,
                 original_destination: OriginalDestination = capture_address, connect_timeout: float = 5.0) -> None:
        self.current = current
        self.dialer = dialer
        self.telemetry = telemetry
        self.original_destination = original_destination
        self.connect_timeout = connect_timeout
        self.gate = FaultGate(current)  # live faults: toxics, partitions, revoked identities
        self._round_robin: dict[tuple[str, str], itertools.count[int]] = {}

    async def handle(self, client: socket.socket) -> None:
        """Serve one captured connection until both directions are done."""
        peer = client.getpeername()[:2]
        vip, port = self.original_destination(client)
        record = ConnectionRecord("outbound", f"{peer[0]}:{peer[1]}", f"{vip}:{port}")
        snapshot = self.current()
        target = snapshot.outbound.get((vip, port)) if snapshot else None
        if snapshot is None or target is None:
            return self._refuse(client, record, snapshot, None, "no_route", "NR",
                                f"no service at {vip}:{port} in the current config")
        service, service_port = target
        record.service = service.hostname
        source = snapshot.local_ambient.get(str(peer[0]))
        if source is None:
            return self._refuse(client, record, snapshot, service, "unknown_source", "NR",
                                f"no ambient workload of node {snapshot.node} has address {peer[0]}")
        record.source, record.source_identity = Peer.of(source), source.identity
        waypoint = service.waypoint
        if waypoint is not None and waypoint.identity != source.identity:
            # L7 for this service happens at its waypoint: tunnel there, addressed to the service. No L4 toxics
            # on this hop: the waypoint applies them on its onward connection, where the endpoint is known.
            record.destination = Peer(waypoint.name, waypoint.namespace, waypoint.name, UNKNOWN, waypoint.name,
                                      "latest")
            record.destination_workload_address = f"{service.hostname}:{service_port.port}"
            refusal = self.gate.refusal(snapshot, source.node, waypoint.node or None)
            if refusal is not None:
                return self._refuse(client, record, snapshot, service, "fault", "FI", refusal, source=source)
            await self._via_hbone(client, peer, record, snapshot, source, service, waypoint.hbone_target,
                                  f"{service.hostname}:{service_port.port}", waypoint.identity)
            return
        destination = self._pick(snapshot, service)
        if destination is None:
            return self._refuse(client, record, snapshot, service, "no_healthy_upstream", "UH",
                                f"service {service.name}.{service.namespace} has no endpoints", source=source)
        record.destination = Peer.of(destination)
        record.destination_workload_address = f"{destination.address}:{service_port.target_port}"
        refusal = self.gate.refusal(snapshot, source.node, destination.node,
                                    (source.identity, destination.identity) if destination.in_mesh else ())
        if refusal is not None:
            return self._refuse(client, record, snapshot, service, "fault", "FI", refusal, source=source)
        toxics = self.gate.toxics(snapshot, source, destination, service)
        if destination.in_mesh:
            if toxics:
                self.gate.outbound_toxics[client] = toxics
            await self._via_hbone(client, peer, record, snapshot, source, service, destination.hbone_target,
                                  f"{_host(destination.address)}:{service_port.target_port}", destination.identity)
        else:
            await self._plaintext(client, record, snapshot, source, destination, service, service_port)

    def _pick(self, snapshot: Snapshot, service: Service) -> Workload | None:
        endpoints = snapshot.endpoints(service)
        if not endpoints:
            return None
        counter = self._round_robin.setdefault((service.namespace, service.name), itertools.count())
        return endpoints[next(counter) % len(endpoints)]

    async def _via_hbone(self, client: socket.socket, peer: tuple[str, int], record: ConnectionRecord,
                         snapshot: Snapshot, source: Workload, service: Service, hbone_at: tuple[str, int],
                         authority: str, destination_identity: str) -> None:
        """Tunnel the connection to `authority` through the HBONE server at `hbone_at` (a ztunnel, sidecar or
        waypoint), which proves to be `destination_identity`."""
        record.protocol, record.destination_identity = "hbone", destination_identity
        headers = connect_headers((str(peer[0]), int(peer[1])), source, service, snapshot.cluster)
        record.trace_id = trace_id(headers["traceparent"])

        def labels(flags: str) -> tuple[str, ...]:
            return tcp_labels("source", record.source, source.identity, record.destination, destination_identity,
                              service, flags, "mutual_tls", snapshot.cluster)
        try:
            tunnel = await self.dialer.connect(hbone_at, authority, source.identity, destination_identity, headers)
        except HboneError as e:
            outcome, flags = _hbone_failure(e)
            record.labels, record.detail = labels(flags), str(e)
            _close(client, reset=True)
            log.info("outbound %s -> %s (%s via %s:%d) closed: %s", record.source_address, service.hostname,
                     authority, *hbone_at, e)
            self.telemetry.closed(record, outcome, flags=flags)
            return
        self.telemetry.opened(record, labels("-"))
        error: str | None = None
        try:
            toxics = self.gate.outbound_toxics.pop(client, None)
            if toxics:  # off the fast path: an asyncio copy loop applies them
                await toxic_pipe_socket(tunnel, client, toxics, self.gate.is_on)
            else:
                await pipe_socket(tunnel, client)
        except (HboneError, OSError) as e:  # the tunnel broke before the pipe started: still one closed connection
            error = str(e)
            tunnel.abort()
            _close(client, reset=True)
        if error is None and not (tunnel.in_eof and tunnel.out_eof):
            error = tunnel.error
        # bytes_sent: socket → tunnel (the request); bytes_received: tunnel → socket (the response)
        self.telemetry.closed(record, f"reset: {error}" if error else "ok", tunnel.bytes_received, tunnel.bytes_sent)

    async def _plaintext(self, client: socket.socket, record: ConnectionRecord, snapshot: Snapshot,
                         source: Workload, destination: Workload, service: Service,
                         service_port: ServicePort) -> None:
        address = (destination.address, service_port.target_port)

        def labels(flags: str) -> tuple[str, ...]:
            return tcp_labels("source", record.source, None, record.destination, None, service, flags, "none",
                              snapshot.cluster)
        try:
            upstream = await connect_from(address, source.address if can_bind_source(source.address) else None,
                                          self.connect_timeout, mark=snapshot.upstream_mark)
        except OSError as e:
            record.labels, record.detail = labels("UF"), f"connect to {address[0]}:{address[1]}: {e.strerror or e}"
            _close(client, reset=True)
            log.info("outbound %s -> %s (%s:%d, plaintext) closed: upstream connect failed: %s",
                     record.source_address, service.hostname, *address, e.strerror or e)
            self.telemetry.closed(record, "upstream_connect_failed", flags="UF")
            return
        self.telemetry.opened(record, labels("-"))
        toxics = self.gate.toxics(snapshot, source, destination, service)
        request_bytes, response_bytes, error = await (toxic_splice(client, upstream, toxics, self.gate.is_on)
                                                      if toxics else splice(client, upstream))
        self.telemetry.closed(record, f"reset: {error}" if error else "ok", response_bytes, request_bytes)

    def _refuse(self, client: socket.socket, record: ConnectionRecord, snapshot: Snapshot | None,
                service: Service | None, outcome: str, flags: str, why: str, source: Workload | None = None) -> None:
        log.info("outbound connection from %s to %s closed: %s", record.source_address, record.destination_address,
                 why)
        record.detail = why
        record.labels = tcp_labels("source", Peer.of(source), source.identity if source else None, Peer(), None,
                                   service, flags, "unknown", snapshot.cluster if snapshot else "unknown")
        _close(client, reset=True)
        self.telemetry.closed(record, outcome, flags=flags)


def _hbone_failure(e: HboneError) -> tuple[str, str]:
    """(outcome, response flags) of a tunnel that did not open."""
    if e.status == 401:
        return f"denied: {e.reason}", "RBAC"
    if e.status == 400:
        return f"rejected: {e.reason}", "UF"
    return "upstream_connect_failed", "UF"


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def _close(sock: socket.socket, reset: bool = False) -> None:
    """Close a client connection; `reset` sends RST so the client sees a failure, not a clean end."""
    try:
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        sock.close()
    except OSError:
        pass
