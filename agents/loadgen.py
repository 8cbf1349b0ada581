"""`loadgen TARGET [options]`: a bounded HTTP/1.1 load generator with a fortio-like report.

TARGET is `service:port[/path]` (resolved through the mesh resolver once per new connection)
or `http://host:port/path` (direct). With --qps every request has an intended start time and
latency is measured from it, so a slow server cannot hide its queueing (no coordinated omission).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import signal
import sys
import urllib.parse
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from agents.common.http import parse_duration
from agents.common.resolve import ResolveError, resolve, source_address

DEFAULT_DURATION_S = 5.0
MAX_DURATION_S = 3600.0
MAX_CONNECTIONS = 1000
ERROR_CODE = -1
PERCENTILES = (("p50", 50.0), ("p75", 75.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


# ---------------------------------------------------------------- target and request


@dataclass(frozen=True)
class Target:
    """Where the load goes: a mesh service (via the resolver) or a direct host:port."""

    host: str
    port: int
    path: str
    via_resolver: bool

    @property
    def host_header(self) -> str:
        """The Host header to send."""
        return f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"

    def __str__(self) -> str:
        if self.via_resolver:
            return f"{self.host}:{self.port}{self.path}"
        return f"http://{self.host_header}{self.path}"


def parse_target(text: str, path: str | None = None) -> Target:
    """`service:port[/path]` or `http://host[:port]/path`; an explicit `path` wins (ValueError if bad)."""
    if text.startswith("http://"):
        url = urllib.parse.urlsplit(text)
        try:
            port = url.port or 80
        except ValueError:
            raise ValueError(f"bad port in {text!r}") from None
        if not url.hostname:
            raise ValueError(f"no host in {text!r}")
        url_path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        return Target(url.hostname, port, path or url_path, via_resolver=False)
    if "://" in text:
        raise ValueError(f"only http:// targets are supported, not {text!r}")
    hostport, slash, rest = text.partition("/")
    service, colon, port_text = hostport.rpartition(":")
    if not colon or not service or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad target {text!r} (want service:port[/path] or http://host:port/path)")
    return Target(service, int(port_text), path or (f"/{rest}" if slash else "/"), via_resolver=True)


def parse_header(text: str) -> tuple[str, str]:
    """'Name: value' or 'Name:value' (ValueError if bad)."""
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not _TOKEN.match(name) or "\r" in value or "\n" in value:
        raise ValueError(f"bad header {text!r} (want Name:value)")
    return name, value


def build_request(method: str, target: Target, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """The bytes of one keep-alive HTTP/1.1 request."""
    names = {name.lower() for name, _ in headers}
    lines = [f"{method} {target.path} HTTP/1.1"]
    if "host" not in names:
        lines.append(f"Host: {target.host_header}")
    if "user-agent" not in names:
        lines.append("User-Agent: meshlab-loadgen")
    lines += [f"{name}: {value}" for name, value in headers]
    if method in ("POST", "PUT", "PATCH") and "content-length" not in names:
        lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# ---------------------------------------------------------------- HTTP/1.1 response reader


class ProtocolError(Exception):
    """The server sent something that is not a valid HTTP/1.1 response."""


class ConnectionClosed(Exception):
    """The connection closed; `early` when not a single byte of the response arrived."""

    def __init__(self, message: str, early: bool = False) -> None:
        super().__init__(message)
        self.early = early


@dataclass
class HttpResponse:
    """One response as read from the wire."""

    status: int
    headers: dict[str, str]
    body: bytes
    wire_bytes: int
    keep_alive: bool


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> HttpResponse:
    """Read one response: status line, headers, then a Content-Length, chunked or close-delimited body."""
    wire = 0
    while True:
        line = await _read_line(reader, early=wire == 0)
        wire += len(line)
        version, status = _parse_status_line(line)
        headers, header_bytes = await _read_headers(reader)
        wire += header_bytes
        if not (100 <= status < 200) or status == 101:
            break
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
    if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
        return HttpResponse(status, headers, b"", wire, keep_alive)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body, body_bytes = await _read_chunked(reader)
    elif "content-length" in headers:
        length = headers["content-length"].split(",")[0].strip()
        if not length.isdigit():
            raise ProtocolError(f"bad Content-Length {length!r}")
        body = await _read_exactly(reader, int(length))
        body_bytes = len(body)
    else:
        body = await reader.read()
        body_bytes, keep_alive = len(body), False
    return HttpResponse(status, headers, body, wire + body_bytes, keep_alive)


async def _read_line(reader: asyncio.StreamReader, early: bool = False) -> bytes:
    """One CRLF-terminated line (ConnectionClosed on EOF, ProtocolError if too long)."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        raise ConnectionClosed("connection closed", early=early and not exc.partial) from None
    except asyncio.LimitOverrunError:
        raise ProtocolError("line too long") from None
    return line


async def _read_exactly(reader: asyncio.StreamReader, size: int) -> bytes:
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise ConnectionClosed("connection closed mid-body") from None


def _parse_status_line(line: bytes) -> tuple[str, int]:
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (len(parts[1]) == 3 and parts[1].isdigit()):
        raise ProtocolError(f"bad status line {line[:60]!r}")
    return parts[0], int(parts[1])


async def _read_headers(reader: asyncio.StreamReader) -> tuple[dict[str, str], int]:
    headers: dict[str, str] = {}
    size = 0
    while True:
        line = await _read_line(reader)
        size += len(line)
        if size > 256 * 1024:
            raise ProtocolError("response headers too large")
        if line in (b"\r\n", b"\n"):
            return headers, size
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon:
            raise ProtocolError(f"bad header line {line[:60]!r}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value


async def _read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, int]:
    chunks, size_on_wire = [], 0
    while True:
        line = await _read_line(reader)
        size_on_wire += len(line)
        try:
            size = int(line.split(b";")[0].strip(), 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size {line[:40]!r}") from None
        if size == 0:
            while (trailer := await _read_line(reader)) not in (b"\r\n", b"\n"):
                size_on_wire += len(trailer)
            return b"".join(chunks), size_on_wire + 2
        data = await _read_exactly(reader, size + 2)
        size_on_wire += len(data)
        chunks.append(data[:size])


# ---------------------------------------------------------------- connections


class Connection:
    """One keep-alive connection of the load; reconnects (and re-resolves) when closed."""

    def __init__(self, target: Target, request: bytes, method: str, resolver: str | None,
                 namespace: str | None) -> None:
        self.target = target
        self.request = request
        self.method = method
        self.resolver = resolver
        self.namespace = namespace
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        """Resolve (for mesh targets) and connect."""
        host, port = self.target.host, self.target.port
        if self.target.via_resolver:
            host, port = await asyncio.to_thread(resolve, host, port, self.resolver, self.namespace)
        # Connect from the workload's own address, as a pod's traffic comes from its pod IP:
        # the mesh tells workloads apart by source address.
        self.reader, self.writer = await asyncio.open_connection(host, port, limit=256 * 1024,
                                                                 local_addr=source_address())

    async def exchange(self) -> HttpResponse:
        """Send the request and read the response; retry once if a reused connection was stale."""
        for attempt in (1, 2):
            reused = self.writer is not None
            if not reused:
                await self.open()
            assert self.reader is not None and self.writer is not None
            try:
                self.writer.write(self.request)
                await self.writer.drain()
                response = await read_response(self.reader, self.method)
            except (ConnectionClosed, ConnectionResetError, BrokenPipeError) as exc:
                self.close()
                stale = isinstance(exc, (ConnectionResetError, BrokenPipeError)) or exc.early
                if reused and stale and attempt == 1:
                    continue
                raise
            if not response.keep_alive:
                self.close()
            return response
        raise ConnectionClosed("connection closed")  # not reached

    def close(self) -> None:
        """Drop the connection (the next exchange reconnects)."""
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def error_reason(exc: BaseException) -> str:
    """A short, aggregatable reason for a failed request."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, ResolveError):
        return f"resolve: {exc}"
    if isinstance(exc, ConnectionRefusedError) or "[Errno 111]" in str(exc):
        return "connection refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "connection reset"
    if isinstance(exc, ConnectionClosed):
        return str(exc)
    if isinstance(exc, ProtocolError):
        return f"bad response: {exc}"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


# ---------------------------------------------------------------- schedule and results


class Schedule:
    """Hands out intended start times: every 1/qps (or immediately with qps 0) until count or duration."""

    def __init__(self, start: float, qps: float, count: int | None, duration: float) -> None:
        self.start = start
        self.qps = qps
        self.count = count
        self.end = start + duration
        self.issued = 0
        self.stopped = False

    def next_start(self, now: float) -> float | None:
        """The intended start time of the next request, or None when the run is over."""
        if self.stopped or now >= self.end or (self.count is not None and self.issued >= self.count):
            return None
        intended = self.start + self.issued / self.qps if self.qps > 0 else now
        if intended >= self.end:
            return None
        self.issued += 1
        return intended

    def stop(self) -> None:
        """End the run early (SIGINT/SIGTERM); requests in flight still complete."""
        self.stopped = True


@dataclass
class LoadResult:
    """What a run measured."""

    target: str
    connections: int
    requested_qps: float = 0.0
    duration_s: float = 0.0
    latencies: array = field(default_factory=lambda: array("d"))  # seconds, one per request
    codes: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    bytes_received: int = 0
    body_pattern: str | None = None
    body_matches: Counter = field(default_factory=Counter)

    @property
    def count(self) -> int:
        """Requests made (responses and errors)."""
        return len(self.latencies)

    @property
    def qps(self) -> float:
        """Achieved requests per second."""
        return self.count / self.duration_s if self.duration_s > 0 else 0.0

    def latency_ms(self) -> dict[str, float]:
        """min/avg/max and percentiles in milliseconds (nearest-rank)."""
        if not self.latencies:
            return {key: 0.0 for key in ("min", "avg", "max", *(name for name, _ in PERCENTILES))}
        ordered = sorted(self.latencies)
        stats = {"min": ordered[0], "avg": sum(ordered) / len(ordered), "max": ordered[-1]}
        for name, pct in PERCENTILES:
            stats[name] = ordered[max(0, math.ceil(pct * len(ordered) / 100 - 1e-9) - 1)]
        return {key: round(value * 1000, 3) for key, value in stats.items()}

    def to_json(self) -> dict:
        """The result as one JSON-ready object."""
        return {
            "target": self.target,
            "count": self.count,
            "duration_s": round(self.duration_s, 3),
            "qps": round(self.qps, 2),
            "requested_qps": self.requested_qps,
            "connections": self.connections,
            "latency_ms": self.latency_ms(),
            "codes": {str(code): n for code, n in sorted(self.codes.items())},
            "errors": dict(self.errors.most_common()),
            "bytes_received": self.bytes_received,
            "body_matches": dict(sorted(self.body_matches.items())),
            "body_pattern": self.body_pattern,
        }

    def to_text(self) -> str:
        """A fortio-like report."""
        return format_report(self.to_json())


def format_report(doc: dict) -> str:
    """A fortio-like report from the JSON form of a result (so the lab can render a remote run)."""
    lat = doc["latency_ms"]
    count = doc["count"]
    pace = f"requested {doc['requested_qps']:g} qps" if doc.get("requested_qps", 0) > 0 else "max qps"
    via = "mesh resolver" if "://" not in doc["target"] else "direct"
    lines = [
        f"Target: {doc['target']} ({via})",
        f"Ran {count} calls in {doc['duration_s']:.3f} s over {doc['connections']} connections: "
        f"{doc['qps']:.1f} qps ({pace})",
        f"Latency ms: min {lat['min']:.3f} avg {lat['avg']:.3f} max {lat['max']:.3f}",
        "Percentiles ms: " + " ".join(
            f"{label} {lat[key]:.3f}" for label, key in
            (("p50", "p50"), ("p75", "p75"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p999"))),
    ]
    for code, n in doc["codes"].items():
        lines.append(f"Code {code} : {n} ({_percent(n, count)} %)")
    for reason, n in doc["errors"].items():
        lines.append(f"Error {reason} : {n}")
    matches = doc.get("body_matches") or {}
    body_pattern = doc.get("body_pattern")
    if body_pattern is not None or matches:
        lines.append(f"Body matches{f' for /{body_pattern}/' if body_pattern else ''}:" + ("" if matches else " none"))
        for text, n in matches.items():
            lines.append(f"  {text} : {n} ({_percent(n, count)} %)")
    lines.append(f"Bytes received: {doc['bytes_received']}")
    return "\n".join(lines) + "\n"


def _percent(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f}" if total else "0.0"


# ---------------------------------------------------------------- the run


def check_bounds(duration: float | None, count: int | None) -> float:
    """The run's time limit in seconds; ValueError for unbounded or over-long runs."""
    if count is not None and count < 1:
        raise ValueError("count must be at least 1")
    if duration is None:
        return MAX_DURATION_S if count is not None else DEFAULT_DURATION_S
    if duration < 0 or duration > MAX_DURATION_S:
        raise ValueError(f"duration must be between 0 and {MAX_DURATION_S:g}s")
    if duration == 0:
        if count is None:
            raise ValueError("refusing an unbounded run: give a duration or a count (-n)")
        return MAX_DURATION_S
    return duration


async def run_load(
    target: str | Target,
    *,
    qps: float = 0.0,
    connections: int = 1,
    duration: float | None = DEFAULT_DURATION_S,
    count: int | None = None,
    path: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    method: str = "GET",
    timeout: float = 5.0,
    count_body: str | None = None,
    resolver: str | None = None,
    namespace: str | None = None,
    schedule_hook: list[Schedule] | None = None,
) -> LoadResult:
    """Run a bounded load and return what it measured (ValueError for bad parameters).

    `duration` None means: bounded by `count` (capped at an hour), or the 5 s default.
    `schedule_hook`, if given, receives the Schedule (so a caller can stop the run early).
    """
    limit = check_bounds(duration, count)
    if qps < 0 or not 1 <= connections <= MAX_CONNECTIONS or timeout <= 0:
        raise ValueError(f"need qps >= 0, 1 <= connections <= {MAX_CONNECTIONS}, timeout > 0")
    where = target if isinstance(target, Target) else parse_target(target, path)
    pattern = re.compile(count_body) if count_body else None
    request = build_request(method.upper(), where, headers)
    result = LoadResult(str(where), connections, qps, body_pattern=count_body)
    loop = asyncio.get_running_loop()
    schedule = Schedule(loop.time(), qps, count, limit)
    if schedule_hook is not None:
        schedule_hook.append(schedule)
    pool = [Connection(where, request, method.upper(), resolver, namespace) for _ in range(connections)]
    try:
        await asyncio.gather(*(_drive(conn, schedule, result, timeout, pattern) for conn in pool))
    finally:
        for conn in pool:
            conn.close()
    result.duration_s = loop.time() - schedule.start
    return result


async def _drive(conn: Connection, schedule: Schedule, result: LoadResult, timeout: float,
                 pattern: re.Pattern[str] | None) -> None:
    """One connection's loop: wait for the next intended start, do the request, record it."""
    loop = asyncio.get_running_loop()
    while (intended := schedule.next_start(loop.time())) is not None:
        delay = intended - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            response = await asyncio.wait_for(conn.exchange(), timeout)
        except (OSError, asyncio.TimeoutError, ResolveError, ConnectionClosed, ProtocolError) as exc:
            conn.close()
            result.latencies.append(loop.time() - intended)
            result.codes[ERROR_CODE] += 1
            result.errors[error_reason(exc)] += 1
            continue
        result.latencies.append(loop.time() - intended)
        result.codes[response.status] += 1
        result.bytes_received += response.wire_bytes
        if pattern is not None:
            text = response.body.decode("utf-8", "replace")
            for match in {m.group(0) for m in pattern.finditer(text)}:
                result.body_matches[match] += 1


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict]:
    """Command-line arguments and the run_load keyword arguments (exit 2 with usage on errors)."""
    parser = argparse.ArgumentParser(
        prog="loadgen",
        description="Bounded HTTP/1.1 load: stops at --duration or -n, whichever comes first "
                    f"(-n alone runs until the count, at most {MAX_DURATION_S:g}s).",
    )
    parser.add_argument("target", help="service:port[/path] (via the mesh resolver) or http://host:port/path")
    parser.add_argument("--qps", type=float, default=0.0, help="requests per second over all connections (0 = max)")
    parser.add_argument("-c", "--connections", type=int, default=1, help="keep-alive connections (default 1)")
    parser.add_argument("-t", "--duration", help=f"how long, e.g. 10s, 2m (default {DEFAULT_DURATION_S:g}s)")
    parser.add_argument("-n", dest="count", type=int, help="number of requests")
    parser.add_argument("--path", help="request path (overrides the target's)")
    parser.add_argument("-H", "--header", action="append", default=[], help="extra header Name:value (repeatable)")
    parser.add_argument("--method", default="GET", help="HTTP method (default GET)")
    parser.add_argument("--timeout", default="5s", help="per-request timeout (default 5s)")
    parser.add_argument("--count-body", metavar="REGEX", help="count responses by each distinct match in the body")
    parser.add_argument("--resolver", help="mesh resolver host:port (default $MESH_RESOLVER)")
    parser.add_argument("--namespace", help="namespace for short service names (default $MESH_NAMESPACE)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    try:
        if args.path is not None and not args.path.startswith("/"):
            raise ValueError(f"path {args.path!r} must start with /")
        duration = parse_duration(args.duration) if args.duration is not None else None
        options = {
            "target": args.target,
            "qps": args.qps,
            "connections": args.connections,
            "duration": duration,
            "count": args.count,
            "path": args.path,
            "headers": [parse_header(h) for h in args.header],
            "method": args.method.upper(),
            "timeout": parse_duration(args.timeout),
            "count_body": args.count_body,
            "resolver": args.resolver,
            "namespace": args.namespace,
        }
        if not _TOKEN.match(options["method"]):
            raise ValueError(f"bad method {args.method!r}")
        if args.count_body:
            re.compile(args.count_body)
        parse_target(args.target, args.path)
        check_bounds(duration, args.count)
        if args.qps < 0 or not 1 <= args.connections <= MAX_CONNECTIONS or options["timeout"] <= 0:
            raise ValueError(f"need --qps >= 0, 1 <= --connections <= {MAX_CONNECTIONS}, --timeout > 0")
    except (ValueError, re.error) as exc:
        parser.error(str(exc))
    return args, options


async def _run_with_signals(options: dict) -> LoadResult:
    """run_load, ending early (with a report) on SIGINT/SIGTERM."""
    hook: list[Schedule] = []
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda: hook and hook[0].stop())
    return await run_load(**options, schedule_hook=hook)


def main(argv: list[str]) -> int:
    """Run the load described by argv and print the report."""
    args, options = parse_args(argv)
    result = asyncio.run(_run_with_signals(options))
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(result.to_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
