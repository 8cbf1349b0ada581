"""The ztunnel of one node: config snapshots in, capture sockets, HBONE, certificates and telemetry wired together.

`apply(version, raw)` is the agent channel's `on_config`: it checks the snapshot,
binds the capture sockets it needs (all or none), swaps the config in, and
starts fetching certificates for new identities. It does not wait for those:
the channel reads certificate answers on the same stream it delivers configs
on, so waiting here would block the answers. Readiness (`ready()`) waits for
them instead.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TextIO

from agents.common.admin_http import AdminServer
from agents.hbone import HboneServer
from agents.ztunnel.admin import admin_routes, metrics_routes, ready_routes
from agents.ztunnel.certs import WorkloadCerts
from agents.ztunnel.config import Snapshot, parse_snapshot
from agents.ztunnel.dialer import HboneDialer
from agents.ztunnel.inbound import Inbound
from agents.ztunnel.listeners import CaptureListeners
from agents.ztunnel import transparent
from agents.ztunnel.outbound import Outbound, capture_address
from agents.ztunnel.telemetry import Telemetry
from agents.ztunnel.toxics import FaultGate

log = logging.getLogger("meshlab.ztunnel")

RequestCert = Callable[[str, bytes], Awaitable[tuple[bytes, bytes]]]


@dataclass(frozen=True)
class Ports:
    """The ztunnel's own ports on the node address (DESIGN §4)."""

    hbone: int = 15008
    admin: int = 15000
    metrics: int = 15020
    ready: int = 15021


class Ztunnel:
    """One node's L4 proxy."""

    def __init__(self, node: str, address: str, request_cert: RequestCert, ports: Ports = Ports(),
                 access_log: TextIO | None = None) -> None:
        self.node, self.address, self.ports = node, address, ports
        self.snapshot: Snapshot | None = None
        self.version = 0
        self.rejected: dict[str, Any] | None = None
        self.control_plane: Callable[[], dict[str, Any]] = lambda: {}  # the channel's state, for /config_dump
        self.telemetry = Telemetry(access_log)
        self.certs = WorkloadCerts(request_cert)
        self.dialer = HboneDialer(self.certs.client_context)
        self.certs.on_rotated = self.dialer.rotated
        self.outbound = Outbound(lambda: self.snapshot, self.dialer, self.telemetry,
                                 original_destination=self._original_destination)
        self.inbound = Inbound(lambda: self.snapshot, self.telemetry, original_destination=self._original_destination)
        self.listeners = CaptureListeners({"outbound": self.outbound.handle,
                                           "inbound": self.inbound.handle_plaintext})
        self.hbone = HboneServer(address, ports.hbone, self.certs.server_context, self.inbound.on_connect,
                                 proxy_name="ztunnel")
        self.certs.servers.append(self.hbone)  # a security fault's certificate closes its idle connections
        self._servers = [AdminServer(admin_routes(self)), AdminServer(metrics_routes(self)),
                         AdminServer(ready_routes(self))]

    def _original_destination(self, sock: socket.socket) -> tuple[str, int]:
        """What a captured client connected to: SO_ORIGINAL_DST under transparent capture, else the socket's own."""
        if self.snapshot is not None and self.snapshot.capture == "transparent":
            return transparent.original_destination(sock)
        return capture_address(sock)

    async def start(self) -> None:
        """Bind HBONE and the admin, metrics and readiness ports; raises OSError when one is taken."""
        await self.hbone.start()
        for server, port in zip(self._servers, (self.ports.admin, self.ports.metrics, self.ports.ready)):
            await server.start(self.address, port)
        log.info("ztunnel of node %s: HBONE on %s:%d, admin :%d, metrics :%d, ready :%d", self.node, self.address,
                 self.hbone.port, self.ports.admin, self.ports.metrics, self.ports.ready)

    async def apply(self, version: int, raw: Any) -> None:
        """Check and apply one config version; raises (the channel NACKs) leaving the old config in place."""
        try:
            snapshot = parse_snapshot(raw, self.node)
            bound, closed = self.listeners.apply(snapshot.listen_addresses())
            await self.certs.follow(snapshot.raw.get("trust"), snapshot.faults)  # roots, expire_cert, foreign_ca
        except Exception as e:  # ConfigError, or a shape the checks missed: NACKed either way
            self.rejected = {"version": version, "error": f"{type(e).__name__}: {e}"}
            raise
        self.snapshot, self.version = snapshot, version
        self._want_certs()
        log.info("config version %d applied: %d workloads (%d local ambient), %d services; capture sockets: "
                 "%d bound, %d closed, %d in all; identities: %s", version, len(snapshot.workloads),
                 len(snapshot.local_ambient), len(snapshot.services), len(bound), len(closed),
                 len(self.listeners.sockets), ", ".join(sorted(snapshot.local_identities)) or "none")

    def _want_certs(self) -> None:
        """Certificates for the local identities, minus those a live fault takes away (revoke);
        re-checked when such a fault expires, so a ztunnel cut off from its control plane still renews."""
        snapshot = self.snapshot
        if snapshot is None:
            return
        self.certs.want(snapshot.local_identities - FaultGate.withheld_identities(snapshot))
        if getattr(self, "_fault_timer", None) is not None:
            self._fault_timer.cancel()
        when = FaultGate.next_expiry(snapshot)
        self._fault_timer = None if when is None else asyncio.get_running_loop().call_later(
            max(0.0, when - time.time()) + 0.05, self._want_certs)

    def ready(self) -> tuple[bool, list[str]]:
        """Ready once a config is applied and every local ambient identity has a certificate."""
        waiting = [] if self.snapshot is not None else ["a config snapshot from the control plane"]
        waiting += [f"a certificate for {identity}" for identity in self.certs.missing()]
        return not waiting, waiting

    async def close(self) -> None:
        """Stop serving: listeners, HBONE, pools, certificate tasks, admin ports."""
        await self.listeners.close()
        await self.hbone.close()
        await self.dialer.aclose()
        await self.certs.close()
        for server in self._servers:
            await server.close()
