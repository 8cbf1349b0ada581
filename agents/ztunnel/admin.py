"""The ztunnel's admin (15000), metrics (15020) and readiness (15021) endpoints, as route tables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from agents.common.admin_http import PROMETHEUS_TEXT, Reply, Route, tail_reply

if TYPE_CHECKING:
    from agents.ztunnel.agent import Ztunnel


def admin_routes(z: Ztunnel) -> dict[str, Route]:
    """15000: /config_dump, /certs, /stats, /logs."""

    def config_dump(_: Mapping[str, str]) -> Reply:
        return Reply.json({
            "node": z.node, "version": z.version, "rejected": z.rejected, "control_plane": z.control_plane(),
            "snapshot": z.snapshot.raw if z.snapshot else None,
            "capture_sockets": [{"kind": kind, "address": f"{ip}:{port}"}
                                for kind, ip, port in sorted(z.listeners.sockets)],
            "hbone": f"{z.address}:{z.hbone.port}",
        })

    def certs(_: Mapping[str, str]) -> Reply:
        return Reply.json({"certificates": z.certs.describe(), "waiting_for": z.certs.missing(),
                           "renewals": z.certs.renewals, "failures": z.certs.failures})

    def stats(_: Mapping[str, str]) -> Reply:
        return Reply.json({**z.telemetry.stats(), "config_version": z.version,
                           "hbone": {"handshake_failures": z.hbone.handshake_failures,
                                     "inbound_connections": len(z.hbone.connections),
                                     "outbound_connections": z.dialer.connections()}})

    def logs(query: Mapping[str, str]) -> Reply:
        return tail_reply(list(z.telemetry.logs), query)

    return {"/config_dump": config_dump, "/certs": certs, "/stats": stats, "/logs": logs}


def metrics_routes(z: Ztunnel) -> dict[str, Route]:
    """15020: /metrics in the Prometheus text format."""
    return {"/metrics": lambda _: Reply.text(z.telemetry.prometheus(), PROMETHEUS_TEXT)}


def ready_routes(z: Ztunnel) -> dict[str, Route]:
    """15021: /healthz/ready — 200 once configured with every certificate, else 503 saying what is missing."""

    def ready(_: Mapping[str, str]) -> Reply:
        ok, waiting = z.ready()
        return Reply.json({"ready": ok, "waiting_for": waiting}, 200 if ok else 503)

    return {"/healthz/ready": ready}
