"""A small HTTP/1.1 JSON server on asyncio for the lab API (request heads parsed by `agents.common.http_head`)."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agents.common.http_head import BadRequest, parse_request_head

log = logging.getLogger("meshlab.api")

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # parsed JSON, or None


Handler = Callable[[ApiRequest], Awaitable[tuple[int, Any]]]


def response(status: int, body: Any, keep_alive: bool) -> bytes:
    payload = json.dumps(body, default=str).encode() + b"\n"
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
    return head.encode() + payload


class JsonApiServer:
    """Calls `handler` for each request; the handler returns (status, JSON body)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = parse_request_head(await reader.readuntil(b"\r\n\r\n"))
                    if head.content_length > MAX_BODY:
                        writer.write(response(413, {"error": "request body too large"}, False))
                        return
                    raw = await reader.readexactly(head.content_length) if head.content_length else b""
                    body = json.loads(raw) if raw else None
                except (BadRequest, ValueError, asyncio.LimitOverrunError) as e:
                    writer.write(response(400, {"error": f"bad request: {e}"}, False))
                    return
                url = urllib.parse.urlsplit(head.target)
                request = ApiRequest(head.method, url.path, dict(urllib.parse.parse_qsl(url.query)), head.headers, body)
                try:
                    status, answer = await self.handler(request)
                except Exception as e:  # a bug in a route: answer 500, keep serving, log the traceback
                    log.exception("lab API %s %s failed", head.method, url.path)
                    status, answer = 500, {"error": f"internal error: {type(e).__name__}: {e}"}
                writer.write(response(status, answer, head.keep_alive))
                await writer.drain()
                if not head.keep_alive:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        except asyncio.CancelledError:  # shutting down: end quietly (see channel.py)
            return
        finally:
            writer.close()
