"""An echo server in the style of fortio's: any path echoes, with query-driven delay/status/size.

Query syntax (one random draw per parameter decides; entries without `:pct` mean 100 %):
  delay=150ms:10,2s:5   sleep 150 ms for 10 % of requests, 2 s for 5 %, no delay otherwise
  status=503:5,429:1    answer 503 for 5 %, 429 for 1 %, 200 otherwise
  size=1024 / 1024:50   a body of that many bytes (for all / half of the requests)
`MESH_ECHO_DEFAULTS` (a query string, e.g. `status=503`) applies to requests that do not set those
parameters: a host that always fails, for outlier detection.
`/headers` and `/echo/headers` answer the received request headers as JSON; POST/PUT echo the body.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from agents.common.http import Reply, Request, json_reply, parse_duration, text_reply

T = TypeVar("T")

MAX_DELAY_S = 30.0
MAX_SIZE = 16 * 1024 * 1024
_PCT = re.compile(r"^\d+(\.\d*)?$|^\.\d+$")

Distribution = list[tuple[T, float]]


def parse_distribution(spec: str, parse_value: Callable[[str], T]) -> Distribution:
    """Parse 'v1:p1,v2:p2,...' (percentages, `:p` omitted = 100) into [(value, pct), ...]."""
    entries: Distribution = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"empty entry in {spec!r}")
        value_text, sep, pct_text = item.rpartition(":")
        if not sep:
            value_text, pct_text = item, "100"
        if not _PCT.match(pct_text.strip()):
            raise ValueError(f"bad percentage {pct_text!r} in {spec!r}")
        pct = float(pct_text)
        if pct > 100:
            raise ValueError(f"percentage {pct:g} over 100 in {spec!r}")
        entries.append((parse_value(value_text.strip()), pct))
    total = sum(pct for _, pct in entries)
    if total > 100.0 + 1e-9:
        raise ValueError(f"percentages add up to {total:g} (> 100) in {spec!r}")
    return entries


def pick(entries: Distribution, draw: float) -> T | None:
    """The entry chosen by one draw in [0, 100), or None (the default) past the last one."""
    cumulative = 0.0
    for value, pct in entries:
        cumulative += pct
        if draw < cumulative:
            return value
    return None


def parse_delay(text: str) -> float:
    """A delay in seconds, at most MAX_DELAY_S."""
    seconds = parse_duration(text)
    if seconds > MAX_DELAY_S:
        raise ValueError(f"delay {text!r} over the maximum of {MAX_DELAY_S:g}s")
    return seconds


def parse_status(text: str) -> int:
    """An HTTP status code 200..599 (1xx would break the framing)."""
    if not text.isdigit() or not 200 <= int(text) <= 599:
        raise ValueError(f"bad status {text!r} (want 200..599)")
    return int(text)


def parse_size(text: str) -> int:
    """A body size in bytes, at most MAX_SIZE."""
    if not text.isdigit() or int(text) > MAX_SIZE:
        raise ValueError(f"bad size {text!r} (want 0..{MAX_SIZE})")
    return int(text)


@dataclass
class EchoPlan:
    """What to do for one request, decided from its query."""

    delay_s: float = 0.0
    status: int = 200
    size: int | None = None


def plan_for(query: dict[str, str], rng: random.Random) -> EchoPlan:
    """Draw delay, status and size for one request (ValueError on a bad query)."""
    plan = EchoPlan()
    if "delay" in query:
        plan.delay_s = pick(parse_distribution(query["delay"], parse_delay), rng.uniform(0, 100)) or 0.0
    if "status" in query:
        plan.status = pick(parse_distribution(query["status"], parse_status), rng.uniform(0, 100)) or 200
    if "size" in query:
        plan.size = pick(parse_distribution(query["size"], parse_size), rng.uniform(0, 100))
    return plan


def filler(size: int) -> bytes:
    """A printable body of exactly `size` bytes."""
    line = b"meshlab echo payload 0123456789abcdefghijklmnopqrstuvwxyz\n"
    return (line * (size // len(line) + 1))[:size]


class Echo:
    """The echo app."""

    def __init__(self, identity: dict[str, str], rng: random.Random | None = None,
                 defaults: dict[str, str] | None = None) -> None:
        self.identity = identity
        self.rng = rng or random.Random()
        self.defaults = defaults or {}  # query parameters for requests that do not set them (a failing host)

    def __call__(self, req: Request) -> Reply:
        try:
            plan = plan_for({**self.defaults, **req.query}, self.rng)
        except ValueError as exc:
            return self._tag(text_reply(f"bad request: {exc}\n", 400))
        if plan.delay_s:
            time.sleep(plan.delay_s)
        reply = self._answer(req, plan)
        reply.status = plan.status
        return self._tag(reply)

    def _answer(self, req: Request, plan: EchoPlan) -> Reply:
        if req.path in ("/headers", "/echo/headers"):
            return json_reply(req.headers)
        if plan.size is not None:
            return Reply(body=filler(plan.size), content_type="text/plain; charset=utf-8")
        if req.body or req.method in ("POST", "PUT", "PATCH"):
            return Reply(body=req.body, content_type=req.header("content-type") or "application/octet-stream")
        words = ["echo", req.method, req.target] + [f"{k}={v}" for k, v in self.identity.items() if v]
        return text_reply(" ".join(words) + "\n")

    def _tag(self, reply: Reply) -> Reply:
        """Say which workload answered, in response headers."""
        if self.identity.get("workload"):
            reply.headers.append(("x-meshlab-workload", self.identity["workload"]))
        if self.identity.get("version"):
            reply.headers.append(("x-meshlab-version", self.identity["version"]))
        return reply
