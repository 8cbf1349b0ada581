"""The topology as pure data: what a lab is made of, kept apart from building it.

Loading and validation (with file/line errors) live in `lab.topology.loader`;
everything else in the lab works on these frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["none", "ambient", "sidecar"]
MODES: tuple[str, ...] = ("none", "ambient", "sidecar")
PROVIDERS: tuple[str, ...] = ("local", "docker", "ssh")
# Built-in demo apps a workload can run with `run: {demo: NAME}`.
DEMO_APPS: tuple[str, ...] = ("productpage", "details", "reviews", "ratings", "echo", "loadgen", "sleep")


@dataclass(frozen=True)
class Node:
    name: str
    provider: str | None = None  # None: the topology's default provider
    # Provider-specific settings (docker image, ssh host/user/port, ...), kept verbatim.
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Namespace:
    name: str
    mode: Mode = "none"
    waypoint: bool = False


@dataclass(frozen=True)
class ServicePort:
    port: int
    name: str = "http"
    protocol: Literal["http", "tcp"] = "http"
    target_port: int | None = None  # the workload's port; defaults to `port`

    @property
    def workload_port(self) -> int:
        return self.target_port or self.port


@dataclass(frozen=True)
class Run:
    """What a workload runs: a built-in demo app, or any command."""

    demo: str | None = None
    args: tuple[str, ...] = ()  # extra arguments for a demo app
    command: tuple[str, ...] | str | None = None  # str: run with `sh -c`; tuple: exec
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Workload:
    name: str
    namespace: str
    node: str
    run: Run
    service: str | None = None  # None for a client that serves nothing
    app: str = ""  # `app` label; defaults to the service name (or the workload name)
    version: str = "v1"
    service_account: str = "default"
    labels: dict[str, str] = field(default_factory=dict)  # includes app and version

    def identity(self, trust_domain: str) -> str:
        return f"spiffe://{trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    ports: tuple[ServicePort, ...]
    workloads: tuple[Workload, ...]
    selector: dict[str, str] | None = None  # instead of workloads: the labels of its endpoints (any service's)

    def hostname(self, trust_domain_suffix: str = "cluster.local") -> str:
        return f"{self.name}.{self.namespace}.svc.{trust_domain_suffix}"


@dataclass(frozen=True)
class Topology:
    name: str
    provider: str
    trust_domain: str
    nodes: tuple[Node, ...]
    namespaces: tuple[Namespace, ...]
    services: tuple[Service, ...]
    clients: tuple[Workload, ...] = ()  # top-level `workloads:` that belong to no service
    config: tuple[dict[str, Any], ...] = ()  # initial mesh config documents (Istio YAML)
    source: str = "<memory>"  # the file it came from, for messages
    address_block: str | None = None  # local provider: e.g. "127.101.0.0/16"; None = allocate

    @property
    def workloads(self) -> tuple[Workload, ...]:
        """Every workload: those of services first, then clients."""
        return tuple(w for s in self.services for w in s.workloads) + self.clients

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def namespace(self, name: str) -> Namespace:
        return next(n for n in self.namespaces if n.name == name)

    def service(self, name: str, namespace: str | None = None) -> Service:
        return next(s for s in self.services if s.name == name and (namespace is None or s.namespace == namespace))
