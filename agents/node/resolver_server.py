"""The mesh resolver over HTTP/1.1: `GET /resolve` and `GET /table` on the node's address.

The request parsing and the answer (`parse_request_head`, `answer`) are pure;
`ResolverServer` only moves bytes: one request head at a time per connection,
keep-alive unless the client asks to close.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents.common.tracked_server import TrackedServer
from agents.node.resolver import ResolveError, Resolver

MAX_HEAD = 16 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class BadRequest(Exception):
    """The client sent something that is not an HTTP/1.x request head (the client's fault: 400)."""


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]  # lower-case names

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"

    @property
    def content_length(self) -> int:
        try:
            return max(0, int(self.headers.get("content-length", "0")))
        except ValueError:
            raise BadRequest("bad Content-Length") from None


def parse_request_head(head: bytes) -> Request:
    """Parse a request line and headers ending in an empty line."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise BadRequest("undecodable request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"bad request line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"bad header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    return Request(parts[0], parts[1], parts[2], headers)


def answer(resolver: Resolver, request: Request) -> tuple[int, Any]:
    """The status and JSON body for one request."""
    url = urllib.parse.urlsplit(request.target)
    if url.path not in ("/resolve", "/table"):
        return 404, {"error": f"no such path {url.path!r} (try /resolve or /table)"}
    if request.method not in ("GET", "HEAD"):
        return 405, {"error": f"method {request.method} not allowed"}
    if url.path == "/table":
        return 200, resolver.table
    query = dict(urllib.parse.parse_qsl(url.query))
    service = query.get("service")
    if not service:
        return 400, {"error": "missing query parameter 'service'"}
    port: int | None = None
    if query.get("port"):
        try:
            port = int(query["port"])
        except ValueError:
            return 400, {"error": f"bad port {query['port']!r}"}
    try:
        return 200, resolver.resolve(service, port, query.get("namespace") or None,
                                     query.get("source") or None).to_json()
    except ResolveError as e:
        return e.status, {"error": str(e)}


def format_response(status: int, body: Any, keep_alive: bool, head_only: bool = False) -> bytes:
    """A complete HTTP/1.1 response with a JSON body."""
    payload = json.dumps(body).encode() + b"\n"
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
    return head.encode() + (b"" if head_only else payload)


class ResolverServer(TrackedServer):
    """Serves the resolver of `current()` (re-read per request, so a pushed table applies at once)."""

    def __init__(self, current: Callable[[], Resolver]) -> None:
        self._current = current
        super().__init__()

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port; returns the bound port (useful with port 0)."""
        return await self._listen_tcp(host, port, MAX_HEAD)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                    request = parse_request_head(head)
                    if request.content_length:
                        await reader.readexactly(request.content_length)
                except BadRequest as e:
                    writer.write(format_response(400, {"error": str(e)}, keep_alive=False))
                    await writer.drain()
                    return
                except asyncio.LimitOverrunError:
                    writer.write(format_response(400, {"error": "request head too large"}, keep_alive=False))
                    await writer.drain()
                    return
                status, body = answer(self._current(), request)
                writer.write(format_response(status, body, request.keep_alive, request.method == "HEAD"))
                await writer.drain()
                if not request.keep_alive:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client went away; nothing to answer
        finally:
            self._untrack(writer)
            writer.close()
