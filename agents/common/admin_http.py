"""A tiny HTTP/1.1 server for an agent's admin, metrics and readiness ports (15000, 15020, 15021).

Routes map a path to a function of the query that returns a `Reply`; only GET
and HEAD are served, with keep-alive. The node's mesh resolver is one too
(`agents.node.resolver_server`).
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agents.common.tracked_server import TrackedServer
from agents.common.http_head import MAX_HEAD, BadRequest, parse_request_head

JSON = "application/json"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = JSON

    @classmethod
    def json(cls, body: Any, status: int = 200) -> Reply:
        return cls(status, json.dumps(body, indent=1).encode() + b"\n")

    @classmethod
    def text(cls, body: str, content_type: str = "text/plain; charset=utf-8", status: int = 200) -> Reply:
        return cls(status, body.encode(), content_type)


Route = Callable[[Mapping[str, str]], Reply]


def format_reply(reply: Reply, keep_alive: bool, head_only: bool = False) -> bytes:
    """A complete HTTP/1.1 response."""
    head = (f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}\r\n"
            f"Content-Type: {reply.content_type}\r\nContent-Length: {len(reply.body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
    return head.encode() + (b"" if head_only else reply.body)


def route(routes: Mapping[str, Route], method: str, target: str) -> Reply:
    """The reply for one request (pure)."""
    url = urllib.parse.urlsplit(target)
    handler = routes.get(url.path)
    if handler is None:
        return Reply.json({"error": f"no such path {url.path!r}", "paths": sorted(routes)}, 404)
    if method not in ("GET", "HEAD"):
        return Reply.json({"error": f"method {method} not allowed"}, 405)
    return handler(dict(urllib.parse.parse_qsl(url.query)))


class AdminServer(TrackedServer):
    """Serves `routes` on one address."""

    def __init__(self, routes: Mapping[str, Route]) -> None:
        self.routes = routes
        super().__init__()

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port."""
        return await self._listen_tcp(host, port, MAX_HEAD)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track(writer)
        try:
            while True:
                try:
                    request = parse_request_head(await reader.readuntil(b"\r\n\r\n"))
                    if request.content_length:
                        await reader.readexactly(request.content_length)
                except (BadRequest, asyncio.LimitOverrunError) as e:
                    writer.write(format_reply(Reply.json({"error": str(e) or "bad request"}, 400), False))
                    await writer.drain()
                    return
                reply = route(self.routes, request.method, request.target)
                writer.write(format_reply(reply, request.keep_alive, request.method == "HEAD"))
                await writer.drain()
                if not request.keep_alive:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client went away
        finally:
            self._untrack(writer)
            writer.close()


def tail_reply(entries: list[Any], query: Mapping[str, str]) -> Reply:
    """The last `?limit=N` entries of an access-log ring as JSON (all of them without a limit)."""
    try:
        limit = int(query.get("limit", len(entries)))
    except ValueError:
        return Reply.json({"error": f"bad limit {query['limit']!r}"}, 400)
    return Reply.json(entries[-limit:] if limit > 0 else [])
