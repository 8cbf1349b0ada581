"""What a waypoint and a sidecar share: config versions, certificates, HBONE dialing, telemetry, admin ports.

`L7Agent.apply(version, raw)` is the agent channel's `on_config`, as for the ztunnel: the
snapshot is parsed (`agents.ztunnel.config`), its L7 part checked (`MeshView`), then the
subclass's `configure(view)` binds what the new config needs (all or nothing) before the
view is swapped in. A config that fails any of this is NACKed and the last good one keeps
serving. Readiness (15021) waits for a config and the certificate of every identity the
proxy presents.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from agents.common.admin_http import PROMETHEUS_TEXT, AdminServer, Reply, Route, tail_reply
from agents.l7.telemetry import L7Telemetry
from agents.proxy.view import MeshView
from agents.ztunnel.agent import Ports
from agents.ztunnel.certs import WorkloadCerts
from agents.ztunnel.config import parse_snapshot
from agents.ztunnel.dialer import HboneDialer
from agents.ztunnel.telemetry import Telemetry

log = logging.getLogger("meshlab.proxy")

RequestCert = Callable[[str, bytes], Awaitable[tuple[bytes, bytes]]]


class L7Agent:
    """Base of the waypoint and sidecar agents."""

    kind = "proxy"

    def __init__(self, node: str, address: str, request_cert: RequestCert, ports: Ports = Ports(),
                 access_log: TextIO | None = None) -> None:
        self.node, self.address, self.ports = node, address, ports
        self.view: MeshView | None = None
        self.version = 0
        self.rejected: dict[str, Any] | None = None
        self.control_plane: Callable[[], dict[str, Any]] = lambda: {}
        self.telemetry = L7Telemetry(access_log)
        self.tcp = Telemetry(access_log)  # connections the proxy passes through at L4 (TCP services)
        self.certs = WorkloadCerts(request_cert)
        self.dialer = HboneDialer(self.certs.client_context)
        self.certs.on_rotated = self.dialer.rotated
        self._servers = [AdminServer(self.admin_routes()), AdminServer(self.metrics_routes()),
                         AdminServer(self.ready_routes())]

    # ---------------------------------------------------------------- for subclasses

    async def start_listeners(self) -> None:
        """Bind what the proxy serves on before any config (the HBONE port)."""

    async def configure(self, view: MeshView) -> list[str]:
        """Bind or close listeners for a new config; returns the identities the proxy needs certificates for."""
        raise NotImplementedError

    async def close_listeners(self) -> None:
        """Close what `start_listeners` and `configure` bound."""

    def describe(self) -> dict[str, Any]:
        """The subclass's part of /config_dump."""
        return {}

    def _upstream_mark(self) -> int | None:
        """SO_MARK for plain upstream sockets: set under transparent capture, so iptables lets them pass."""
        return self.view.snapshot.upstream_mark if self.view is not None else None

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind the proxy's own ports; raises OSError when one is taken."""
        await self.start_listeners()
        for server, port in zip(self._servers, (self.ports.admin, self.ports.metrics, self.ports.ready)):
            await server.start(self.address, port)
        log.info("%s on %s: admin :%d, metrics :%d, ready :%d", self.kind, self.address, self.ports.admin,
                 self.ports.metrics, self.ports.ready)

    async def apply(self, version: int, raw: Any) -> None:
        """Check and apply one config version; raises (the channel NACKs) leaving the old config in place."""
        try:
            view = MeshView(parse_snapshot(raw, self.node), self.kind)
            identities = await self.configure(view)
            # roots and security faults (expire_cert, foreign_ca) of the identities this proxy presents
            await self.certs.follow(view.snapshot.raw.get("trust"), view.snapshot.faults)
            self.certs.servers = [s for s in [getattr(self, "hbone", None)] if s is not None]
        except Exception as e:  # ConfigError, PolicyError, a bind that failed: NACKed either way
            self.rejected = {"version": version, "error": f"{type(e).__name__}: {e}"}
            raise
        self.view, self.version = view, version
        self.certs.want(identities)
        log.info("config version %d applied: %d services, %d route tables, %d destination rules; identities: %s",
                 version, len(view.services), len(view.routes.tables), len(view.destination_rules),
                 ", ".join(identities))

    def ready(self) -> tuple[bool, list[str]]:
        waiting = [] if self.view is not None else ["a config snapshot from the control plane"]
        waiting += [f"a certificate for {identity}" for identity in self.certs.missing()]
        return not waiting, waiting

    async def close(self) -> None:
        await self.close_listeners()
        await self.dialer.aclose()
        await self.certs.close()
        for server in self._servers:
            await server.close()

    # ---------------------------------------------------------------- admin, metrics, readiness

    def admin_routes(self) -> dict[str, Route]:
        def config_dump(_: Any) -> Reply:
            return Reply.json({"kind": self.kind, "node": self.node, "version": self.version,
                               "rejected": self.rejected, "control_plane": self.control_plane(),
                               "proxy": self.view.proxy if self.view else None, **self.describe(),
                               "snapshot": self.view.snapshot.raw if self.view else None})

        def certs(_: Any) -> Reply:
            return Reply.json({"certificates": self.certs.describe(), "waiting_for": self.certs.missing(),
                               "renewals": self.certs.renewals, "failures": self.certs.failures})

        def stats(_: Any) -> Reply:
            return Reply.json({"requests": self.telemetry.stats(), "tcp": self.tcp.stats(),
                               "config_version": self.version, "outbound_connections": self.dialer.connections()})

        def logs(query: Any) -> Reply:
            return tail_reply(list(self.telemetry.logs), query)

        return {"/config_dump": config_dump, "/certs": certs, "/stats": stats, "/logs": logs}

    def metrics_routes(self) -> dict[str, Route]:
        return {"/metrics": lambda _: Reply.text(self.telemetry.render() + self.tcp.prometheus(), PROMETHEUS_TEXT)}

    def ready_routes(self) -> dict[str, Route]:
        def ready(_: Any) -> Reply:
            ok, waiting = self.ready()
            return Reply.json({"ready": ok, "waiting_for": waiting}, 200 if ok else 503)
        return {"/healthz/ready": ready}
