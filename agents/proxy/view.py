"""The L7 part of a proxy's config snapshot, in the shape the L7 engine asks for (`agents.l7.proxy.L7Config`).

A waypoint's or sidecar's snapshot is its node's ztunnel snapshot (workloads, services,
policies; parsed by `agents.ztunnel.config.parse_snapshot`) plus `proxy` (who this proxy is)
and, under `policy`, the normalized `routeTables` and `destinationRules`
(`lab/meshconfig/snapshot.py`). `MeshView` answers the engine's questions from it: the
route table of a service, its endpoints (with how HBONE reaches each), and which
AuthorizationPolicies this proxy enforces.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agents.common.faults import AgentFault, parse_faults
from agents.l7.authz import PolicyTarget, compile_policies
from agents.l7.routing import RouteTables
from agents.ztunnel.config import ConfigError, Service, Snapshot, Workload

PROXY_KINDS = ("waypoint", "sidecar")


class MeshView:
    """One applied snapshot, as the L7 engine and the proxy's listeners see it."""

    def __init__(self, snapshot: Snapshot, kind: str) -> None:
        raw = snapshot.raw
        proxy = raw.get("proxy")
        if not isinstance(proxy, dict) or proxy.get("kind") != kind:
            raise ConfigError(f"proxy: this snapshot is not for a {kind} (proxy section: {proxy!r})")
        policy = raw.get("policy") or {}
        tables = policy.get("routeTables") or {}
        rules = policy.get("destinationRules") or {}
        if not isinstance(tables, dict) or not isinstance(rules, dict):
            raise ConfigError("policy.routeTables and policy.destinationRules: want objects keyed by service")
        try:
            self.policies: Sequence[Mapping[str, Any]] = compile_policies(snapshot.authorization_policies)
        except ValueError as e:
            raise ConfigError(f"policy: {e}") from None
        self.snapshot = snapshot
        self.proxy: dict[str, Any] = proxy
        self.routes = RouteTables(tables)
        self.destination_rules: Mapping[str, Mapping[str, Any]] = rules
        try:
            self.l7_faults: list[AgentFault] = [f for f in parse_faults(raw.get("faults") or []) if f.layer == "l7"]
        except ValueError as e:
            raise ConfigError(f"faults: {e}") from None
        self.services = {s.key: s for s in snapshot.services}
        self._authz: Callable[[Any], PolicyTarget | None] = lambda downstream: None

    def enforcing(self, authz: Callable[[Any], PolicyTarget | None] | None) -> MeshView:
        """This view with `authz_target` answered by `authz` (None: this side enforces no policy)."""
        view = copy.copy(self)
        view._authz = authz or (lambda downstream: None)
        return view

    def serving_only(self, workload: Workload) -> MeshView:
        """This view with every service's endpoints narrowed to `workload` (a sidecar's inbound side)."""
        view = copy.copy(self)
        view.endpoints = lambda service, port: [endpoint(workload, port)]  # type: ignore[method-assign]
        return view

    def service_for(self, authority: str, port: int) -> str:
        """The service key a request's Host names on a listener for `port` ("" when none does)."""
        if ":" not in authority.rstrip("]"):
            authority = f"{authority}:{port}"
        found = self.service_by_authority(authority)
        return found[0].key if found else ""

    def authz_target(self, downstream: Any) -> PolicyTarget | None:
        """Which proxy the engine authorizes requests of `downstream` as (None: no L7 authorization here)."""
        return self._authz(downstream)

    # ---------------------------------------------------------------- questions of the engine

    def endpoints(self, service: str, port: int) -> list[dict[str, Any]]:
        """The endpoints of `service` (name.namespace) for service port `port`, as the engine's Endpoint dicts."""
        found = self.services.get(service)
        if found is None:
            return []
        target = next((p.target_port for p in found.ports if p.port == port), port)
        return [endpoint(w, target) for w in self.snapshot.endpoints(found)]

    def service_hostname(self, service: str) -> str:
        found = self.services.get(service)
        return found.hostname if found else service

    def workload_target(self, workload: Workload) -> PolicyTarget:
        """A sidecar enforces the policies that select its workload."""
        return PolicyTarget(namespace=workload.namespace, labels=dict(workload.labels))

    def waypoint_target(self, service: Service | None) -> PolicyTarget:
        """A waypoint enforces the policies attached to it, or to the service a request is for."""
        return PolicyTarget(namespace=str(self.proxy["namespace"]), waypoint=str(self.proxy["name"]),
                            service=service.name if service else None,
                            service_namespace=service.namespace if service else None)

    # ---------------------------------------------------------------- lookups for the listeners

    def service_by_authority(self, authority: str) -> tuple[Service, int] | None:
        """The service and port an authority (`host:port`: hostname, short name, name.namespace or VIP) names."""
        host, _, port_text = authority.rpartition(":")
        if not port_text.isdigit():
            host, port_text = authority, "80"
        port = int(port_text)
        host = host.strip("[]").lower().rstrip(".")
        service = self.snapshot.by_hostname.get(host)
        if service is None:
            vip = self.snapshot.outbound.get((host, port))
            service = vip[0] if vip else None
        if service is None:
            service = self._by_short_name(host)
        if service is None or not any(p.port == port for p in service.ports):
            return None
        return service, port

    def _by_short_name(self, host: str) -> Service | None:
        parts = host.split(".")
        namespace = str(self.proxy.get("namespace") or "")
        if len(parts) == 1:
            return self.services.get(f"{parts[0]}.{namespace}") or _only(
                [s for s in self.services.values() if s.name == parts[0]])
        if len(parts) == 2 or (len(parts) > 2 and parts[2] == "svc"):
            return self.services.get(f"{parts[0]}.{parts[1]}")
        return None


def endpoint(w: Workload, port: int) -> dict[str, Any]:
    """One endpoint in the engine's form, with what the connector needs to reach it."""
    return {"address": w.address, "ip": w.address, "port": port, "workload": w.name,
            "namespace": w.namespace, "labels": w.labels, "identity": w.identity, "app": w.app,
            "version": w.version, "mode": w.mode, "hbone": w.hbone_target, "ready": True}


def _only(candidates: list[Service]) -> Service | None:
    return candidates[0] if len(candidates) == 1 else None
