"""The ztunnel's config snapshot (docs/architecture.md, "The ztunnel's config snapshot") as typed, checked objects.

`parse_snapshot(raw, node)` either returns a `Snapshot` with the lookups the data
path needs, or raises `ConfigError` naming the bad field: the agent channel then
NACKs the version and the ztunnel keeps serving its last good config. Nothing
here touches a socket.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.common.certs import parse_spiffe
from agents.common.faults import AgentFault, FaultFormatError, parse_faults
from agents.ztunnel import transparent
from agents.ztunnel.policy import ConnInfo, authorize, mtls_mode

MODES = ("ambient", "sidecar", "none")
MESH_MODES = ("ambient", "sidecar")  # destinations reached over HBONE
CAPTURES = ("explicit", "transparent")  # per-VIP sockets the resolver hands out, or iptables REDIRECT
Address = tuple[str, int]


class ConfigError(ValueError):
    """A snapshot the ztunnel cannot use; the message names the field."""


@dataclass(frozen=True)
class Workload:
    """One workload of the lab, as the ztunnel sees it."""

    name: str
    namespace: str
    service_account: str
    identity: str
    address: str
    node: str
    node_address: str
    hbone_port: int
    mode: str
    labels: Mapping[str, str]
    app: str
    version: str
    ports: tuple[int, ...]
    inbound_capture: str | None
    hbone_address: str = ""  # where HBONE reaches it: its node's ztunnel, or its own sidecar; "" = node_address

    @property
    def hbone_target(self) -> tuple[str, int]:
        """(address, port) of the HBONE server that serves this workload."""
        return self.hbone_address or self.node_address, self.hbone_port

    @property
    def canonical_service(self) -> str:
        return self.app or self.name

    @property
    def canonical_revision(self) -> str:
        return self.version or "latest"

    @property
    def in_mesh(self) -> bool:
        return self.mode in MESH_MODES


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    target_port: int
    protocol: str


@dataclass(frozen=True)
class WaypointRef:
    """The waypoint that serves a service: ztunnels send its traffic there over HBONE."""

    name: str
    namespace: str
    address: str
    hbone_port: int
    identity: str
    node: str = ""  # where it runs (a partition of that node cuts the hop to it)

    @property
    def hbone_target(self) -> tuple[str, int]:
        return self.address, self.hbone_port


@dataclass(frozen=True)
class Service:
    """A service with this node's VIP for it."""

    name: str
    namespace: str
    hostname: str
    vip: str
    ports: tuple[ServicePort, ...]
    endpoints: tuple[str, ...]  # workload names
    waypoint: WaypointRef | None = None

    @property
    def key(self) -> str:
        """`name.namespace`, the key of route tables and destination rules."""
        return f"{self.name}.{self.namespace}"


@dataclass
class Snapshot:
    """One applied config version and the lookups derived from it."""

    raw: dict[str, Any]
    node: str
    trust_domain: str
    node_address: str
    capture: str
    cert_ttl_seconds: int | None
    workloads: list[Workload]
    services: list[Service]
    peer_authentications: list[dict[str, Any]]
    authorization_policies: list[dict[str, Any]]
    cluster: str = "unknown"
    faults: list[AgentFault] = field(default_factory=list)  # live faults (agents/common/faults.py)
    by_address: dict[str, Workload] = field(default_factory=dict, init=False)
    local_ambient: dict[str, Workload] = field(default_factory=dict, init=False)
    outbound: dict[Address, tuple[Service, ServicePort]] = field(default_factory=dict, init=False)
    inbound_capture: dict[Address, Workload] = field(default_factory=dict, init=False)
    by_hostname: dict[str, Service] = field(default_factory=dict, init=False)
    by_name: dict[tuple[str, str], Workload] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for w in self.workloads:
            self.by_name.setdefault((w.namespace, w.name), w)
            self.by_name.setdefault(("", w.name), w)  # a name without namespace: the first such workload
            if w.address in self.by_address:
                raise ConfigError(f"workloads {self.by_address[w.address].name} and {w.name} share "
                                  f"address {w.address}")
            self.by_address[w.address] = w
            if w.node == self.node and w.mode == "ambient":
                self.local_ambient[w.address] = w
                if w.inbound_capture:
                    for port in w.ports:
                        self._claim(self.inbound_capture, (w.inbound_capture, port), w, f"workload {w.name}")
        for s in self.services:
            self.by_hostname.setdefault(s.hostname, s)
            for p in s.ports:
                self._claim(self.outbound, (s.vip, p.port), (s, p), f"service {s.name}.{s.namespace}")
        for a in set(self.outbound) & set(self.inbound_capture):
            raise ConfigError(f"{a[0]}:{a[1]} is both a service VIP and an inbound capture address")

    @staticmethod
    def _claim(index: dict[Address, Any], key: Address, value: Any, who: str) -> None:
        if key in index:
            raise ConfigError(f"{who} and another entry both claim {key[0]}:{key[1]}")
        index[key] = value

    @property
    def fault_ids(self) -> set[str]:
        return {f.id for f in self.faults}

    @property
    def local_identities(self) -> set[str]:
        """The identities this node needs certificates for (one per service account, not per workload)."""
        return {w.identity for w in self.local_ambient.values()}

    def listen_addresses(self) -> set[tuple[str, str, int]]:
        """(kind, ip, port) of every capture socket this config wants bound."""
        if self.capture == "transparent":  # iptables brings everything to two wildcard sockets
            return transparent.listen_addresses()
        return ({("outbound", ip, port) for ip, port in self.outbound}
                | {("inbound", ip, port) for ip, port in self.inbound_capture})

    @property
    def upstream_mark(self) -> int | None:
        """SO_MARK for the ztunnel's plaintext upstream sockets: with transparent capture, so iptables skips them."""
        return transparent.PROXY_MARK if self.capture == "transparent" else None

    def inbound_target(self, ip: str, port: int) -> Workload | None:
        """The local ambient workload a plaintext connection captured for `ip:port` is meant for."""
        if self.capture == "transparent":  # `ip:port` is the workload's own (SO_ORIGINAL_DST)
            w = self.local_ambient.get(ip)
            return w if w is not None and port in w.ports else None
        return self.inbound_capture.get((ip, port))

    def endpoints(self, service: Service) -> list[Workload]:
        """The service's endpoint workloads (unknown names are skipped)."""
        found = (self.by_name.get((service.namespace, n)) or self.by_name.get(("", n)) for n in service.endpoints)
        return [w for w in found if w is not None]

    def service_of(self, workload: Workload, port: int) -> Service | None:
        """A service that has `workload` as an endpoint on target port `port` (first one wins)."""
        for s in self.services:
            if workload.name in s.endpoints and s.namespace == workload.namespace and \
                    any(p.target_port == port for p in s.ports):
                return s
        return None


def parse_snapshot(raw: Any, node: str) -> Snapshot:
    """Check a ztunnel snapshot and build its lookups; raises ConfigError."""
    doc = _dict(raw, "snapshot")
    if _str(doc, "node", "snapshot") != node:
        raise ConfigError(f"snapshot is for node {doc['node']!r}, this ztunnel serves {node!r}")
    ttl = doc.get("certTtlSeconds")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0):
        raise ConfigError(f"certTtlSeconds: want a positive integer, got {ttl!r}")
    policy = _dict(doc.get("policy") or {}, "policy")
    try:
        faults = parse_faults(doc.get("faults"))
    except FaultFormatError as e:
        raise ConfigError(str(e)) from None
    if _str(doc, "capture", "snapshot") not in CAPTURES:
        raise ConfigError(f"snapshot.capture: want one of {', '.join(CAPTURES)}, got {doc['capture']!r}")
    snapshot = Snapshot(
        raw=doc, node=node, trust_domain=_str(doc, "trustDomain", "snapshot"),
        node_address=_ip(doc, "nodeAddress", "snapshot"), capture=_str(doc, "capture", "snapshot"),
        cert_ttl_seconds=ttl,
        workloads=[_workload(w, i) for i, w in enumerate(_list(doc, "workloads", "snapshot"))],
        services=[_service(s, i) for i, s in enumerate(_list(doc, "services", "snapshot"))],
        peer_authentications=[_dict(p, f"policy.peerAuthentications[{i}]")
                              for i, p in enumerate(_list(policy, "peerAuthentications", "policy", True))],
        authorization_policies=[_dict(p, f"policy.authorizationPolicies[{i}]")
                                for i, p in enumerate(_list(policy, "authorizationPolicies", "policy", True))],
        cluster=str(doc.get("cluster") or "unknown"),
        faults=faults,
    )
    _check_policies(snapshot)
    return snapshot


def _check_policies(snapshot: Snapshot) -> None:
    """Evaluate the policies once per local workload, so a malformed one is NACKed, not hit per connection."""
    for w in snapshot.local_ambient.values():
        try:
            for port in w.ports or (0,):
                mtls_mode(snapshot.peer_authentications, w.namespace, w.labels, port)
                authorize(snapshot.authorization_policies,
                          ConnInfo(f"spiffe://{snapshot.trust_domain}/ns/x/sa/y", None, "127.0.0.1",
                                   w.namespace, w.labels, port, w.address))
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"policy: cannot evaluate for workload {w.name}: {type(e).__name__}: {e}") from None


def _workload(raw: Any, i: int) -> Workload:
    where = f"workloads[{i}]"
    d = _dict(raw, where)
    identity = _identity(d, where)
    mode = _str(d, "mode", where)
    if mode not in MODES:
        raise ConfigError(f"{where}.mode: want one of {', '.join(MODES)}, got {mode!r}")
    labels = _dict(d.get("labels") or {}, f"{where}.labels")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ConfigError(f"{where}.labels: want string keys and values")
    ports = d.get("ports") or []
    if not isinstance(ports, list):
        raise ConfigError(f"{where}.ports: want a list of ports")
    capture = d.get("inboundCapture")
    return Workload(
        name=_str(d, "name", where), namespace=_str(d, "namespace", where),
        service_account=_str(d, "serviceAccount", where), identity=identity, address=_ip(d, "address", where),
        node=_str(d, "node", where), node_address=_ip(d, "nodeAddress", where),
        hbone_port=_port(d.get("hbonePort", 15008), f"{where}.hbonePort"), mode=mode, labels=dict(labels),
        app=str(d.get("app") or labels.get("app") or ""), version=str(d.get("version") or labels.get("version") or ""),
        ports=tuple(_port(p, f"{where}.ports[{j}]") for j, p in enumerate(ports)),
        inbound_capture=None if capture is None else _ip(d, "inboundCapture", where),
        hbone_address=_ip(d, "hboneAddress", where) if d.get("hboneAddress") else "",
    )


def _service(raw: Any, i: int) -> Service:
    where = f"services[{i}]"
    d = _dict(raw, where)
    ports = []
    for j, p in enumerate(_list(d, "ports", where)):
        pw = f"{where}.ports[{j}]"
        pd = _dict(p, pw)
        port = _port(pd.get("port"), f"{pw}.port")
        ports.append(ServicePort(str(pd.get("name") or ""), port, _port(pd.get("targetPort", port), f"{pw}.targetPort"),
                                 str(pd.get("protocol") or "tcp")))
    endpoints = _list(d, "endpoints", where)
    if not all(isinstance(e, str) for e in endpoints):
        raise ConfigError(f"{where}.endpoints: want workload names")
    name, namespace = _str(d, "name", where), _str(d, "namespace", where)
    return Service(name=name, namespace=namespace,
                   hostname=str(d.get("hostname") or f"{name}.{namespace}.svc.cluster.local"),
                   vip=_ip(d, "vip", where), ports=tuple(ports), endpoints=tuple(endpoints),
                   waypoint=_waypoint(d.get("waypoint"), f"{where}.waypoint"))


def _waypoint(raw: Any, where: str) -> WaypointRef | None:
    if raw is None:
        return None
    d = _dict(raw, where)
    identity = _identity(d, where)
    return WaypointRef(_str(d, "name", where), _str(d, "namespace", where), _ip(d, "address", where),
                       _port(d.get("hbonePort", 15008), f"{where}.hbonePort"), identity, str(d.get("node") or ""))


# ---------------------------------------------------------------- field checks
def _identity(d: dict[str, Any], where: str) -> str:
    """The SPIFFE identity at `where`.identity."""
    identity = _str(d, "identity", where)
    try:
        parse_spiffe(identity)
    except ValueError as e:
        raise ConfigError(f"{where}.identity: {e}") from None
    return identity


def _dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: want an object, got {type(value).__name__}")
    return value


def _list(d: Mapping[str, Any], key: str, where: str, optional: bool = False) -> list[Any]:
    value = d.get(key, [] if optional else None)
    if not isinstance(value, list):
        raise ConfigError(f"{where}.{key}: want a list, got {type(value).__name__}")
    return value


def _str(d: Mapping[str, Any], key: str, where: str) -> str:
    value = d.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}: want a non-empty string, got {value!r}")
    return value


def _ip(d: Mapping[str, Any], key: str, where: str) -> str:
    value = _str(d, key, where)
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ConfigError(f"{where}.{key}: not an IP address: {value!r}") from None


def _port(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise ConfigError(f"{where}: want a port number 1-65535, got {value!r}")
    return value
