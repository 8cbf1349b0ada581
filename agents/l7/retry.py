"""Retry policy decisions: whether a failed try is retried, and how long to back off first (Envoy's rules).

Theory of operation: a route's normalized `retries` (see `agents.l7.routing`) becomes a
`RetryPolicy`. After each try the proxy asks `should_retry(status=..., error=...)` with the
upstream's status or what went wrong (`connect-failure`, `reset`, `refused-stream`,
`timeout` for a per-try timeout), checks the attempts left itself, and waits
`backoff_delay(n, rng)` before retry n. Istio's default when a route says nothing:
2 retries on connect-failure, refused-stream, unavailable, cancelled and
retriable-status-codes (503). `unavailable` and `cancelled` are gRPC status conditions
(grpc-status 14 and 1) and are read from a `grpc-status` response header when given.
Conditions (Envoy router): `5xx` any 5xx or any failure to get a response; `gateway-error`
502/503/504 or any such failure; `reset` any such failure; `connect-failure`; `refused-stream`;
`retriable-4xx` 409; `retriable-status-codes` the listed codes.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RETRY_ON = ("5xx", "gateway-error", "reset", "connect-failure", "refused-stream", "retriable-4xx",
            "retriable-status-codes", "unavailable", "cancelled")
ERRORS = ("connect-failure", "reset", "refused-stream", "timeout")  # what can go wrong before a response
DEFAULT_RETRY_ON = ("connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes")
DEFAULT_ATTEMPTS = 2
DEFAULT_STATUS_CODES = (503,)
DEFAULT_BACKOFF = 0.025  # Envoy's base interval; the maximum is 10 times it
GRPC_STATUS = {"cancelled": "1", "unavailable": "14"}


@dataclass(frozen=True)
class RetryPolicy:
    """How many retries (after the first try), on what, with which per-try timeout and backoff."""

    attempts: int = DEFAULT_ATTEMPTS
    per_try_timeout: float | None = None
    retry_on: frozenset[str] = frozenset(DEFAULT_RETRY_ON)
    retriable_status_codes: frozenset[int] = frozenset(DEFAULT_STATUS_CODES)
    backoff: float = DEFAULT_BACKOFF

    def should_retry(self, status: int | None = None, error: str | None = None, grpc_status: str | None = None) -> bool:
        """Whether a try that ended with `status` (or `error`, one of ERRORS) is worth another try."""
        if self.attempts <= 0:
            return False
        on = self.retry_on
        if error is not None:
            if error not in ERRORS:
                raise ValueError(f"unknown upstream error {error!r}; expected one of {', '.join(ERRORS)}")
            if on & {"5xx", "gateway-error", "reset"}:
                return True
            return error in on and error in ("connect-failure", "refused-stream")
        if grpc_status is not None and any(GRPC_STATUS[c] == grpc_status for c in on & GRPC_STATUS.keys()):
            return True
        if status is None:
            return False
        if "5xx" in on and status >= 500:
            return True
        if "gateway-error" in on and status in (502, 503, 504):
            return True
        if "retriable-4xx" in on and status == 409:
            return True
        return "retriable-status-codes" in on and status in self.retriable_status_codes

    def backoff_delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (1-based): fully jittered exponential, capped at 10x base."""
        ceiling = min((2 ** retry - 1) * self.backoff, 10 * self.backoff)
        return rng.uniform(0, ceiling)


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=0)


def retry_policy(spec: Mapping[str, Any] | None) -> RetryPolicy:
    """The RetryPolicy of a normalized `retries` (None: Istio's default)."""
    if spec is None:
        return DEFAULT_RETRY
    attempts = int(spec.get("attempts", DEFAULT_ATTEMPTS))
    if attempts <= 0:
        return NO_RETRY
    per_try = spec.get("perTryTimeout")
    return RetryPolicy(attempts=attempts, per_try_timeout=float(per_try) if per_try else None,
                       retry_on=frozenset(spec.get("retryOn") or DEFAULT_RETRY_ON),
                       retriable_status_codes=frozenset(int(c) for c in spec.get("retriableStatusCodes",
                                                                                 DEFAULT_STATUS_CODES)),
                       backoff=float(spec.get("backoff") or DEFAULT_BACKOFF))
