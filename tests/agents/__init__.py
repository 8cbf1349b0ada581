"""Helpers shared by the agent tests: in-process app servers and a fake mesh resolver."""

from __future__ import annotations

import itertools
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from agents.common.http import App, AppServer, Reply, Request, json_reply, make_server, start_in_thread


@contextmanager
def running(app: App) -> Iterator[AppServer]:
    """Serve `app` on 127.0.0.1 (free port) in a thread for the duration of the block."""
    server = make_server(app, "127.0.0.1", 0, log=False)
    start_in_thread(server, poll_interval=0.01)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Recorder:
    """Wraps an app and records the requests it saw."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.requests: list[Request] = []
        self.lock = threading.Lock()

    def __call__(self, req: Request) -> Reply:
        with self.lock:
            self.requests.append(req)
        return self.app(req)


class FakeResolver:
    """A mesh resolver answering /resolve from a dict: service -> servers (round robin) or an error."""

    def __init__(self) -> None:
        self.endpoints: dict[str, Iterator[tuple[str, int]]] = {}
        self.failures: dict[str, int] = {}
        self.queries: list[dict[str, str]] = []

    def route(self, service: str, *servers: AppServer | tuple[str, int]) -> None:
        """Send new connections to `service` to these servers in turn."""
        addresses = [s if isinstance(s, tuple) else ("127.0.0.1", s.port) for s in servers]
        self.endpoints[service] = itertools.cycle(addresses)
        self.failures.pop(service, None)

    def fail(self, service: str, status: int = 503) -> None:
        """Answer `status` for `service` (503: no ready endpoint)."""
        self.failures[service] = status

    def __call__(self, req: Request) -> Reply:
        if req.path != "/resolve":
            return json_reply({"error": "not found"}, 404)
        self.queries.append(dict(req.query))
        service, port = req.query.get("service", ""), req.query.get("port", "")
        if service in self.failures:
            return json_reply({"error": f"no ready endpoint for {service}:{port}"}, self.failures[service])
        if service not in self.endpoints:
            return json_reply({"error": f"unknown service '{service}'"}, 404)
        host, real_port = next(self.endpoints[service])
        return json_reply({"address": host, "port": real_port, "via": "direct", "workload": service})


@contextmanager
def resolver_running() -> Iterator[tuple[FakeResolver, str]]:
    """A FakeResolver and its host:port."""
    fake = FakeResolver()
    with running(fake) as server:
        yield fake, f"127.0.0.1:{server.port}"
