"""Small HTTP/1.1 helpers on the standard library for the demo apps and the load generator.

Client side: `fetch` (resolve through the mesh, then one request) and `request` (explicit
host:port). Server side: `Request`/`Reply`, an app is a callable `Request -> Reply`, and
`make_server`/`serve_until_terminated` run it on a keep-alive ThreadingHTTPServer.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agents.common.resolve import ResolveError, resolve, source_address

# ---------------------------------------------------------------- durations

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds from '150ms', '2s', '1.5s', '500us', '1m' (a bare number is seconds)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"bad duration {text!r} (examples: 150ms, 2s, 1.5s, 500us)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


# ---------------------------------------------------------------- client


class FetchError(Exception):
    """A request that got no HTTP response; `reason` is resolve, connect, timeout or protocol."""

    def __init__(self, message: str, reason: str = "connect") -> None:
        super().__init__(message)
        self.reason = reason


Response = tuple[int, dict[str, str], bytes]


def request(
    host: str,
    port: int,
    path: str = "/",
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
    *,
    method: str = "GET",
    body: bytes | None = None,
    host_header: str | None = None,
) -> Response:
    """One HTTP/1.1 request to host:port within `timeout` seconds; (status, headers, body)."""
    deadline = time.monotonic() + timeout
    conn = http.client.HTTPConnection(host, port, timeout=timeout, source_address=source_address())
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        sent = {k.lower() for k in (headers or {})}
        if "host" not in sent:
            conn.putheader("Host", host_header or f"{host}:{port}")
        if "connection" not in sent:
            conn.putheader("Connection", "close")
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None or method in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
        _set_remaining(conn, deadline)
        response = conn.getresponse()
        _set_remaining(conn, deadline)
        data = response.read()
    except TimeoutError:
        raise FetchError(f"{host}:{port}: timed out after {timeout:g}s", "timeout") from None
    except ConnectionRefusedError:
        raise FetchError(f"{host}:{port}: connection refused", "connect") from None
    except http.client.HTTPException as exc:
        raise FetchError(f"{host}:{port}: bad response: {exc!r}", "protocol") from None
    except OSError as exc:
        raise FetchError(f"{host}:{port}: {exc.strerror or exc}", "connect") from None
    finally:
        conn.close()
    return response.status, _header_dict(response.getheaders()), data


def fetch(
    service: str,
    port: int,
    path: str = "/",
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
    *,
    method: str = "GET",
    body: bytes | None = None,
    resolver: str | None = None,
    namespace: str | None = None,
) -> Response:
    """Resolve service:port through the mesh resolver, then one request (see `request`)."""
    deadline = time.monotonic() + timeout
    try:
        host, real_port = resolve(service, port, resolver=resolver, namespace=namespace, timeout=min(timeout, 2.0))
    except ResolveError as exc:
        raise FetchError(str(exc), "resolve") from None
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchError(f"{service}:{port}: timed out after {timeout:g}s", "timeout")
    return request(
        host, real_port, path, headers, remaining, method=method, body=body, host_header=f"{service}:{port}"
    )


def _set_remaining(conn: http.client.HTTPConnection, deadline: float) -> None:
    """Shrink the socket timeout to what is left of the request's deadline."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    if conn.sock is not None:
        conn.sock.settimeout(remaining)


def _header_dict(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Lower-cased header names; repeated headers joined with ', '."""
    result: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        result[key] = f"{result[key]}, {value}" if key in result else value
    return result


# ---------------------------------------------------------------- server


@dataclass
class Request:
    """An incoming request as the apps see it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    target: str = ""

    def header(self, name: str, default: str | None = None) -> str | None:
        """A request header by case-insensitive name."""
        return self.headers.get(name.lower(), default)

    def cookie(self, name: str) -> str | None:
        """A cookie value from the Cookie header."""
        for part in (self.header("cookie") or "").split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                return urllib.parse.unquote(value)
        return None


@dataclass
class Reply:
    """What an app answers; Content-Length is added by the server."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_reply(value: object, status: int = 200) -> Reply:
    """A JSON reply."""
    return Reply(status, (json.dumps(value, indent=2) + "\n").encode(), "application/json")


def text_reply(text: str, status: int = 200) -> Reply:
    """A plain-text reply."""
    return Reply(status, text.encode(), "text/plain; charset=utf-8")


App = Callable[[Request], Reply]


class AppServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that serves one app and does not wait for idle keep-alive clients."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: App, name: str, log: bool = True) -> None:
        self.app = app
        self.name = name
        self.log = log
        super().__init__(address, AppHandler)

    def handle_error(self, request: object, client_address: object) -> None:
        """One line for a client that went away, a traceback for anything else."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            if self.log:
                print(f"{self.name}: connection from {client_address}: {error}", file=sys.stderr, flush=True)
            return
        super().handle_error(request, client_address)

    @property
    def port(self) -> int:
        """The bound port (useful after binding port 0)."""
        return self.server_address[1]


class AppHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler that turns requests into `Request` and calls the app."""

    protocol_version = "HTTP/1.1"
    server_version = "meshlab-demo"
    sys_version = ""
    timeout = 60  # close idle keep-alive connections after a minute
    wbufsize = 64 * 1024  # status line, headers and body leave in one write (flushed per request)
    disable_nagle_algorithm = True
    server: AppServer

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

    def _serve(self) -> None:
        started = time.monotonic()
        body = self._read_body()
        if body is None:
            return
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        headers = _header_dict(list(self.headers.items()))
        req = Request(self.command, url.path or "/", query, headers, body, self.path)
        try:
            reply = self.server.app(req)
        except Exception:  # an app bug must not kill the connection silently
            traceback.print_exc()
            reply = text_reply("internal error\n", 500)
        try:
            self._write(reply)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. its timeout); nothing to answer
        if self.server.log:
            elapsed = (time.monotonic() - started) * 1000
            print(f"{self.command} {self.path} {reply.status} {elapsed:.1f}ms", flush=True)

    def _read_body(self) -> bytes | None:
        """The request body (Content-Length or chunked); None after answering 400."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        if not length.strip().isdigit():
            self.send_error(400, "bad Content-Length")
            return None
        return self.rfile.read(int(length))

    def _read_chunked(self) -> bytes | None:
        chunks = []
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                self.send_error(400, "bad chunk size")
                return None
            if size == 0:
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(8)

    def _write(self, reply: Reply) -> None:
        bodiless = reply.status in (204, 304)
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        if not bodiless:
            self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and not bodiless:
            self.wfile.write(reply.body)

    def log_message(self, format: str, *args: object) -> None:
        """Only errors from http.server reach here (per-request lines are printed by _serve)."""
        if self.server.log:
            print(f"{self.address_string()} {format % args}", file=sys.stderr, flush=True)

    def log_request(self, code: object = "-", size: object = "-") -> None:
        """Silenced: _serve prints one line per request."""


def make_server(app: App, host: str, port: int, name: str = "app", log: bool = True) -> AppServer:
    """Bind an app server (port 0 picks a free port)."""
    return AppServer((host, port), app, name, log)


def serve_until_terminated(server: AppServer) -> int:
    """Serve until SIGTERM/SIGINT, then close and return 0."""

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    print(f"{server.name} listening on {host}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    print(f"{server.name} stopped", flush=True)
    return 0


def start_in_thread(server: AppServer, poll_interval: float = 0.05) -> threading.Thread:
    """Serve in a daemon thread (tests and in-process use); stop with server.shutdown()."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True)
    thread.start()
    return thread
