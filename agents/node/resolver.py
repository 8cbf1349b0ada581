"""The mesh resolver's decisions, without sockets: which address a new connection to service:port gets.

Theory of operation: the lab pushes a table (docs/architecture.md, "Mesh
resolver protocol") of services, their ports and their endpoints. A caller
names a service in one of three forms -- `name` (its own namespace first, then
the only service of that name), `name.namespace`, or the FQDN
`name.namespace.svc[.<anything>]` -- and a service port. The answer is one
ready endpoint, round robin per (service, port), with the workload port
(`targetPort`). Errors carry the HTTP status the resolver's server answers with
(404 unknown name or port, 503 no ready endpoint, 400 a malformed question).

The mesh changes only the answer: a caller in an `ambient` namespace gets the
service's VIP on its own node, where the node's ztunnel listens (`via:
ztunnel`); a caller outside the mesh asking for an ambient workload gets that
workload's inbound capture address on its node's ztunnel (`via:
ztunnel-inbound`). Everything else is `direct`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

ServiceKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Answer:
    """Where a new connection goes."""

    address: str
    port: int
    via: str  # "direct" in mode none; later the proxy that captures it
    workload: str

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "port": self.port, "via": self.via, "workload": self.workload}


class ResolveError(Exception):
    """A question the resolver cannot answer; `status` is the HTTP status to answer with."""

    status = 400


class UnknownService(ResolveError):
    status = 404


class NoReadyEndpoint(ResolveError):
    status = 503


@dataclass(frozen=True)
class _Service:
    name: str
    namespace: str
    ports: dict[int, int]  # service port -> workload port
    endpoints: tuple[dict[str, Any], ...]
    vip: str | None = None  # this node's VIP of the service: its ztunnel listens there


class Resolver:
    """Answers resolve questions from one resolver table; keeps the round-robin position."""

    # A malformed table raises KeyError, TypeError, ValueError or AttributeError here.
    def __init__(self, table: dict[str, Any] | None = None) -> None:
        self.table: dict[str, Any] = table or {"services": []}
        self._services: dict[ServiceKey, _Service] = {}
        for entry in self.table.get("services") or []:
            ports = {int(p["port"]): int(p.get("targetPort") or p["port"]) for p in entry.get("ports") or []}
            endpoints = tuple(entry.get("endpoints") or ())
            if not all(isinstance(e, dict) and e.get("address") for e in endpoints):
                raise ValueError(f"service {entry['name']}: every endpoint needs an address")
            service = _Service(str(entry["name"]), str(entry.get("namespace") or "default"), ports, endpoints,
                               entry.get("vip"))
            self._services[(service.namespace, service.name)] = service
        self._turns: dict[tuple[ServiceKey, int], itertools.count[int]] = {}
        # namespace -> data-plane mode; a namespace not listed is outside the mesh
        self._modes = {str(ns): str(v.get("mode", "none")) for ns, v in (self.table.get("namespaces") or {}).items()}
        # workload address -> its sidecar's address, for the workloads of this node that have one
        self._sidecars = {str(k): str(v) for k, v in (self.table.get("sidecars") or {}).items()}
        # transparent: iptables takes a mesh caller's connection to its proxy; the answer is the plain VIP
        self._transparent = self.table.get("capture") == "transparent"

    def resolve(self, service: str, port: int | None, namespace: str | None = None,
                source: str | None = None) -> Answer:
        """The endpoint for a new connection to `service`:`port`, asked from `namespace` by the workload at `source`."""
        found = self._lookup(service, namespace)
        if port is None:
            if len(found.ports) != 1:
                raise ResolveError(f"service '{service}' has {len(found.ports)} ports; ask for one of "
                                   f"{_port_list(found)}")
            port = next(iter(found.ports))
        if port not in found.ports:
            raise UnknownService(f"unknown port {port} of service '{service}' (ports: {_port_list(found)})")
        sidecar = self._sidecars.get(source or "")
        if sidecar:
            # A workload with a sidecar sends everything to it; the sidecar routes by service (explicit capture).
            return Answer(sidecar, port, "sidecar", "")
        if self._modes.get(namespace or "", "none") == "ambient" and found.vip:
            # Ambient callers go through their node's ztunnel, which picks the endpoint (explicit capture).
            return Answer(found.vip, port, "ztunnel", "")
        if self._transparent and self._modes.get(namespace or "", "none") == "sidecar" and found.vip:
            return Answer(found.vip, port, "sidecar", "")  # iptables redirects it to the caller's sidecar
        ready = [e for e in found.endpoints if e.get("ready", True)]
        if not ready:
            raise NoReadyEndpoint(f"no ready endpoint for {service}:{port}")
        key = ((found.namespace, found.name), port)
        turn = next(self._turns.setdefault(key, itertools.count()))
        endpoint = ready[turn % len(ready)]
        if endpoint.get("mode") in ("ambient", "sidecar") and endpoint.get("inboundCapture"):
            # A caller outside the mesh reaches a mesh workload through its proxy (plaintext inbound): the node's
            # ztunnel for an ambient workload, its own sidecar for a sidecar workload.
            via = "ztunnel-inbound" if endpoint["mode"] == "ambient" else "sidecar-inbound"
            return Answer(str(endpoint["inboundCapture"]), found.ports[port], via, str(endpoint.get("workload", "")))
        return Answer(str(endpoint["address"]), found.ports[port], "direct", str(endpoint.get("workload", "")))

    def _lookup(self, service: str, namespace: str | None) -> _Service:
        parts = service.rstrip(".").split(".")
        if len(parts) == 1:
            name = parts[0]
            if namespace and (namespace, name) in self._services:
                return self._services[(namespace, name)]
            matches = [s for (_, n), s in self._services.items() if n == name]
            if len(matches) == 1:
                return matches[0]
            if matches:
                spaces = ", ".join(sorted(s.namespace for s in matches))
                raise UnknownService(f"ambiguous service '{service}': it is in namespaces {spaces}; "
                                     f"ask for name.namespace")
        elif len(parts) == 2 or (len(parts) >= 3 and parts[2] == "svc"):
            # name.ns, name.ns.svc, name.ns.svc.cluster.local (any cluster domain)
            if (parts[1], parts[0]) in self._services:
                return self._services[(parts[1], parts[0])]
        raise UnknownService(f"unknown service '{service}'")


def _port_list(service: _Service) -> str:
    return ", ".join(str(p) for p in sorted(service.ports)) or "none"
