"""Upstream clusters (DestinationRule): subsets as endpoint filters, load balancing, connection pool limits.

Theory of operation
-------------------
A route decision names a service and maybe a subset; `cluster_policy(rules, service,
subset)` turns the snapshot's normalized DestinationRules into that cluster's
`ClusterPolicy` (Istio's defaults without a rule; None for a subset no rule defines, which
Envoy answers with 503 and flag NC). The proxy keeps one `LoadBalancerState` and one
`OutlierDetector` (`agents.l7.outlier`) per cluster, filters the service's endpoints with
`select_endpoints(endpoints, policy.labels)`, and picks one with `pick_endpoint`, or none
(503 UH: no healthy upstream). Before sending it asks `policy.pool.admit(...)` with its
counts; "overflow" is Envoy's 503 with flag UO.

Normalized DestinationRules (the snapshot's `destinationRules`, keyed by service)::

    {"reviews.bookinfo": {
        "source": "DestinationRule bookinfo/reviews",
        "trafficPolicy": TrafficPolicy,
        "subsets": {"v1": {"labels": {"version": "v1"}, "trafficPolicy": TrafficPolicy}}}}
    TrafficPolicy = {                            # every field filled in (Istio's defaults); a subset's
        "loadBalancer": "LEAST_REQUEST",         # policy is already merged with the rule's (a field the
        "connectionPool": {                      # subset sets replaces the rule's whole field)
            "maxConnections": 4294967295, "connectTimeout": 10.0, "http1MaxPendingRequests": 4294967295,
            "http2MaxRequests": 4294967295, "maxRequestsPerConnection": 0, "maxRetries": 4294967295,
            "idleTimeout": 3600.0},
        "outlierDetection": {"consecutive5xxErrors": 5, "consecutiveGatewayErrors": 0, "interval": 10.0,
                             "baseEjectionTime": 30.0, "maxEjectionPercent": 10, "minHealthPercent": 0} | null}

Load balancing: ROUND_ROBIN in turn; RANDOM; LEAST_REQUEST (Istio's default since 1.14) as
Envoy does it with equal weights, the better of two random picks by active requests;
PASSTHROUGH the endpoint the caller asked for (`state.original`), else the first. Ejected
hosts are skipped unless fewer than `minHealthPercent` of the hosts would remain (then all
are used, Envoy's panic mode); endpoints marked `"ready": false` never are.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.l7.outlier import OutlierPolicy

UNLIMITED = 2**32 - 1
LOAD_BALANCERS = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "PASSTHROUGH")
DEFAULT_LOAD_BALANCER = "LEAST_REQUEST"
Endpoint = Mapping[str, Any]  # {"address": ..., "workload": ..., "labels": {...}, "ready": bool?}


@dataclass(frozen=True)
class Admission:
    """The pool's answer for one request: reuse an idle connection, connect, queue, or overflow (flag UO)."""

    action: str
    response_flag: str | None = None


@dataclass(frozen=True)
class ConnectionPoolLimits:
    """A normalized `connectionPool` (Istio's defaults: unlimited) and the admission decisions it makes."""

    max_connections: int = UNLIMITED
    max_pending_requests: int = UNLIMITED
    max_requests: int = UNLIMITED
    max_requests_per_connection: int = 0  # 0: unlimited
    max_retries: int = UNLIMITED
    connect_timeout: float = 10.0
    idle_timeout: float = 3600.0

    @classmethod
    def from_json(cls, spec: Mapping[str, Any] | None) -> ConnectionPoolLimits:
        """From the snapshot's `connectionPool` (None: the defaults)."""
        spec = spec or {}
        d = cls()
        return cls(int(spec.get("maxConnections", d.max_connections)),
                   int(spec.get("http1MaxPendingRequests", d.max_pending_requests)),
                   int(spec.get("http2MaxRequests", d.max_requests)),
                   int(spec.get("maxRequestsPerConnection", d.max_requests_per_connection)),
                   int(spec.get("maxRetries", d.max_retries)),
                   float(spec.get("connectTimeout", d.connect_timeout)),
                   float(spec.get("idleTimeout", d.idle_timeout)))

    def admit(self, *, active_connections: int, idle_connections: int, pending_requests: int,
              active_requests: int) -> Admission:
        """Envoy's HTTP/1 pool with circuit breakers: what to do with one more request."""
        if active_requests >= self.max_requests:
            return Admission("overflow", "UO")
        if idle_connections > 0:
            return Admission("reuse")
        if pending_requests >= self.max_pending_requests:
            return Admission("overflow", "UO")
        if active_connections < self.max_connections:
            return Admission("connect")
        return Admission("queue")

    def admit_retry(self, active_retries: int) -> bool:
        """Whether one more retry may run now (maxRetries counts concurrent retries to the cluster)."""
        return active_retries < self.max_retries

    def reusable(self, requests_served: int) -> bool:
        """Whether a connection that carried `requests_served` requests may carry another."""
        return not self.max_requests_per_connection or requests_served < self.max_requests_per_connection


@dataclass(frozen=True)
class ClusterPolicy:
    """What a DestinationRule says about one cluster (a service, or one subset of it)."""

    service: str
    subset: str | None = None
    labels: Mapping[str, str] | None = None  # the subset's endpoint filter; None: every endpoint
    load_balancer: str = DEFAULT_LOAD_BALANCER
    pool: ConnectionPoolLimits = ConnectionPoolLimits()
    outlier: OutlierPolicy | None = None
    source: str | None = None


def cluster_policy(rules: Mapping[str, Mapping[str, Any]], service: str,
                   subset: str | None = None) -> ClusterPolicy | None:
    """The policy of `service` (or its `subset`); None if the subset is not defined (Envoy: 503 NC)."""
    rule = rules.get(service)
    if rule is None:
        return None if subset else ClusterPolicy(service)
    policy = rule.get("trafficPolicy") or {}
    labels = None
    if subset is not None:
        defined = (rule.get("subsets") or {}).get(subset)
        if defined is None:
            return None
        labels, policy = dict(defined.get("labels") or {}), defined.get("trafficPolicy") or policy
    outlier = policy.get("outlierDetection")
    return ClusterPolicy(service, subset, labels, policy.get("loadBalancer") or DEFAULT_LOAD_BALANCER,
                         ConnectionPoolLimits.from_json(policy.get("connectionPool")),
                         OutlierPolicy.from_json(outlier) if outlier else None, rule.get("source"))


def endpoint_key(endpoint: Endpoint) -> str:
    """What identifies an endpoint for load balancing and outlier detection: its address."""
    return str(endpoint.get("address") or endpoint.get("workload"))


def select_endpoints(endpoints: Sequence[Endpoint], labels: Mapping[str, str] | None) -> list[Endpoint]:
    """The endpoints a subset's labels select (all of them for no labels)."""
    if not labels:
        return list(endpoints)
    return [e for e in endpoints if all((e.get("labels") or {}).get(k) == v for k, v in labels.items())]


@dataclass
class LoadBalancerState:
    """What load balancing remembers between picks for one cluster."""

    rng: random.Random = field(default_factory=random.Random)
    cursor: int = 0  # ROUND_ROBIN
    active: dict[str, int] = field(default_factory=dict)  # endpoint key -> requests in flight (LEAST_REQUEST)
    ejected: Collection[str] = frozenset()  # from OutlierDetector.ejected(now)
    min_health_percent: int = 0
    original: str | None = None  # PASSTHROUGH: the address the caller asked for

    def started(self, key: str) -> None:
        """A request to `key` began."""
        self.active[key] = self.active.get(key, 0) + 1

    def finished(self, key: str) -> None:
        """A request to `key` ended."""
        left = self.active.get(key, 0) - 1
        if left > 0:
            self.active[key] = left
        else:
            self.active.pop(key, None)


def pick_endpoint(endpoints: Sequence[Endpoint], lb: str, state: LoadBalancerState) -> Endpoint | None:
    """The endpoint for the next request, or None when no endpoint is ready (503 UH)."""
    ready = [e for e in endpoints if e.get("ready", True)]
    healthy = [e for e in ready if endpoint_key(e) not in state.ejected] if state.ejected else ready
    if ready and 100 * len(healthy) < state.min_health_percent * len(ready):
        healthy = ready  # panic: too few healthy hosts, so outlier ejections are ignored
    if not healthy:
        return None
    if len(healthy) == 1:
        return healthy[0]
    if lb == "ROUND_ROBIN":
        chosen = healthy[state.cursor % len(healthy)]
        state.cursor += 1
        return chosen
    if lb == "RANDOM":
        return state.rng.choice(healthy)
    if lb == "PASSTHROUGH":
        return next((e for e in healthy if e.get("address") == state.original), healthy[0])
    if lb != "LEAST_REQUEST":
        raise ValueError(f"unknown load balancer {lb!r}; expected one of {', '.join(LOAD_BALANCERS)}")
    first, second = state.rng.choice(healthy), state.rng.choice(healthy)
    active = state.active
    return second if active.get(endpoint_key(second), 0) < active.get(endpoint_key(first), 0) else first
