"""Outlier detection (DestinationRule `outlierDetection`) as a pure state machine, with Envoy's rules.

Theory of operation: the proxy reports every try's outcome with `record(host, now,
status=... | error=...)`. A host is ejected as soon as it reaches `consecutive5xxErrors`
5xx responses in a row, or `consecutiveGatewayErrors` 502/503/504s in a row (a threshold of
0 disables that check); errors without a response count as 503 (connect failure, reset,
refused stream) or 504 (timeout), as Envoy maps local-origin errors when they are not split.
Any other response resets the counters. An ejection lasts `baseEjectionTime` times the
number of times the host was ejected (capped at 300 s or the base time, Envoy's
max_ejection_time), and is refused when it would put more than `maxEjectionPercent` of the
pool's hosts out at once: Envoy's check `100 * (ejected + 1) / hosts <= maxEjectionPercent`,
so with Istio's default of 10% a pool of fewer than ten hosts never ejects. Every `interval`
a sweep (run on demand by `record`, `ejected` and `sweep`, from the `now` given) returns
hosts whose time is up, and takes one off the multiplier of hosts that stayed healthy.
`minHealthPercent` is applied by load balancing (`agents.l7.cluster.pick_endpoint`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_EJECTION_TIME = 300.0  # Envoy's default max_ejection_time
ERROR_STATUS = {"connect-failure": 503, "reset": 503, "refused-stream": 503, "timeout": 504}


@dataclass(frozen=True)
class OutlierPolicy:
    """A normalized `outlierDetection` with Istio's defaults."""

    consecutive_5xx: int = 5
    consecutive_gateway: int = 0
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10
    min_health_percent: int = 0

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> OutlierPolicy:
        """From the snapshot's shape (see `agents.l7.cluster`)."""
        default = cls()
        return cls(int(spec.get("consecutive5xxErrors", default.consecutive_5xx)),
                   int(spec.get("consecutiveGatewayErrors", default.consecutive_gateway)),
                   float(spec.get("interval", default.interval)),
                   float(spec.get("baseEjectionTime", default.base_ejection_time)),
                   int(spec.get("maxEjectionPercent", default.max_ejection_percent)),
                   int(spec.get("minHealthPercent", default.min_health_percent)))


@dataclass(frozen=True)
class Ejection:
    """A host taken out of the pool until `until` (the `count`-th time), and why."""

    host: str
    until: float
    count: int
    reason: str  # "consecutive5xxErrors" or "consecutiveGatewayErrors"


@dataclass
class _HostState:
    """Counters of one host."""

    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    ejections: int = 0  # the ejection time multiplier
    ejected_until: float | None = None


class OutlierDetector:
    """The outlier state of one cluster's hosts."""

    def __init__(self, policy: OutlierPolicy, hosts: Iterable[str] = ()) -> None:
        self.policy = policy
        self.hosts: dict[str, _HostState] = {}
        self.next_sweep: float | None = None
        self.set_hosts(hosts)

    def set_hosts(self, hosts: Iterable[str]) -> None:
        """The hosts of the pool now (new ones start clean, gone ones are forgotten)."""
        wanted = list(hosts)
        self.hosts = {h: self.hosts.get(h) or _HostState() for h in wanted}

    def record(self, host: str, now: float, status: int | None = None, error: str | None = None) -> Ejection | None:
        """Count one try's outcome (a status, or an error from ERROR_STATUS); the ejection it caused, if any."""
        self.sweep(now)
        if status is None:
            if error not in ERROR_STATUS:
                raise ValueError(f"record needs a status or one of the errors {', '.join(ERROR_STATUS)}")
            status = ERROR_STATUS[error]
        state = self.hosts.get(host)
        if state is None:
            state = self.hosts[host] = _HostState()
        policy = self.policy
        state.consecutive_5xx = state.consecutive_5xx + 1 if status >= 500 else 0
        state.consecutive_gateway = state.consecutive_gateway + 1 if status in (502, 503, 504) else 0
        if policy.consecutive_5xx and state.consecutive_5xx >= policy.consecutive_5xx:
            reason = "consecutive5xxErrors"
        elif policy.consecutive_gateway and state.consecutive_gateway >= policy.consecutive_gateway:
            reason = "consecutiveGatewayErrors"
        else:
            return None
        state.consecutive_5xx = state.consecutive_gateway = 0
        if state.ejected_until is not None or not self._may_eject():
            return None
        state.ejections += 1
        duration = min(policy.base_ejection_time * state.ejections,
                       max(MAX_EJECTION_TIME, policy.base_ejection_time))
        state.ejected_until = now + duration
        return Ejection(host, now + duration, state.ejections, reason)

    def _may_eject(self) -> bool:
        """Whether one more ejection stays within maxEjectionPercent of the pool."""
        ejected = sum(1 for s in self.hosts.values() if s.ejected_until is not None)
        return 100.0 * (ejected + 1) / max(len(self.hosts), 1) <= self.policy.max_ejection_percent

    def sweep(self, now: float) -> list[str]:
        """Run the interval sweeps due by `now`; the hosts returned to the pool."""
        if self.next_sweep is None:
            self.next_sweep = now + self.policy.interval
            return []
        returned: list[str] = []
        missed = (now - self.next_sweep) // self.policy.interval
        if missed > 1000:  # a long quiet spell: what 1000 sweeps do, every later one does too
            self.next_sweep += (missed - 1000) * self.policy.interval
        while now >= self.next_sweep:
            at = self.next_sweep
            for host, state in self.hosts.items():
                if state.ejected_until is not None:
                    if at >= state.ejected_until:
                        state.ejected_until = None
                        returned.append(host)
                elif state.ejections:
                    state.ejections -= 1
            self.next_sweep = at + self.policy.interval
        return returned

    def ejected(self, now: float) -> frozenset[str]:
        """The hosts out of the pool at `now`."""
        self.sweep(now)
        return frozenset(h for h, s in self.hosts.items() if s.ejected_until is not None)
