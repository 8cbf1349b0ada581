"""The supervisor's control socket: JSON lines, one request object per line, one response per line.

The transport only frames and parses; what an op does is `handle(request) -> response`,
passed in by the supervisor. Requests on one connection are answered in order.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agents.common.tracked_server import TrackedServer

LINE_LIMIT = 16 * 1024 * 1024  # a resolver table for a big topology is one line

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def decode_request(line: bytes) -> dict[str, Any]:
    """One request line as an object; ValueError if it is not a JSON object with an 'op'."""
    request = json.loads(line)
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        raise ValueError("a request is a JSON object with a string 'op'")
    return request


def encode_response(response: dict[str, Any]) -> bytes:
    return json.dumps(response, separators=(",", ":")).encode() + b"\n"


def socket_in_use(path: Path) -> bool:
    """True when something accepts connections on the unix socket at `path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    here = os.getcwd()
    try:
        os.chdir(path.parent)  # see ControlServer.start: the full path may be too long
        probe.connect(path.name)
        return True
    except OSError:
        return False
    finally:
        os.chdir(here)
        probe.close()


class ControlServer(TrackedServer):
    """Listens on a unix socket and hands each request to `handle`."""

    def __init__(self, handle: Handler) -> None:
        self._handle = handle
        super().__init__()

    async def start(self, path: Path) -> None:
        # Bind by a name relative to the socket's folder: an absolute path may be longer
        # than the 108 bytes a unix socket address can hold (deep MESHLAB_HOME, pytest tmp).
        here = os.getcwd()
        os.chdir(path.parent)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path.name, limit=LINE_LIMIT)
        finally:
            os.chdir(here)
        os.chmod(path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track(writer)
        try:
            while line := await reader.readline():
                if not line.strip():
                    continue
                try:
                    request = decode_request(line)
                except ValueError as e:
                    response: dict[str, Any] = {"ok": False, "error": f"bad request: {e}"}
                else:
                    response = await self._handle(request)
                writer.write(encode_response(response))
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass  # the client went away or sent an oversized line; it gets no answer
        finally:
            self._untrack(writer)
            writer.close()
