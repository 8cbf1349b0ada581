"""The bench's upstream: a small asyncio HTTP/1.1 server that answers every request with a fixed 200.

The echo demo starts a thread per request, which would make the upstream the slowest
hop of every path; this one costs a few microseconds per request, so what the bench
measures is the proxies. Standard library only and self-contained: a lab workload runs
it as `python -c SOURCE` (see `workload_command`) on any node with a Python 3.11+.
It listens on `$MESH_BIND_ADDR:$MESH_PORT` or on `HOST PORT` given as arguments, and
prints `{"port": N}` once it listens. Requests may carry a Content-Length body
(read and dropped); chunked request bodies are refused with 501 and a close.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"
NOT_IMPLEMENTED = b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
MAX_HEAD = 64 * 1024


class FixedResponder(asyncio.Protocol):
    """Answers each complete request head (plus its Content-Length body) with RESPONSE, in order."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.skip = 0  # body bytes of the current request still to drop
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buf = self.buffer
        buf += data
        answers = 0
        while True:
            if self.skip:
                dropped = min(self.skip, len(buf))
                del buf[:dropped]
                self.skip -= dropped
                if self.skip:
                    break
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._fail(BAD_REQUEST)
                break
            head = bytes(buf[:end]).lower()
            del buf[:end + 4]
            if b"transfer-encoding:" in head:
                self._fail(NOT_IMPLEMENTED)
                break
            at = head.find(b"\ncontent-length:")
            if at >= 0:
                value = head[at + 16:].split(b"\r\n", 1)[0].strip()
                if not value.isdigit():
                    self._fail(BAD_REQUEST)
                    break
                self.skip = int(value)
            answers += 1
        if answers:
            self.transport.write(RESPONSE * answers)

    def _fail(self, response: bytes) -> None:
        assert self.transport is not None
        self.transport.write(response)
        self.transport.close()
        self.buffer.clear()


async def serve(host: str, port: int) -> None:
    """Listen on host:port (0: any free port), report the port on stdout, serve forever."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FixedResponder, host, port, backlog=1024, reuse_address=True)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    host = argv[0] if argv else os.environ.get("MESH_BIND_ADDR", "127.0.0.1")
    port = int(argv[1]) if len(argv) > 1 else int(os.environ.get("MESH_PORT", "0"))
    try:
        asyncio.run(serve(host, port))
    except KeyboardInterrupt:
        pass
    return 0


def workload_command(python: str = sys.executable) -> list[str]:
    """The argv of a lab workload that runs this server: the module's own source through `python -c`."""
    with open(__file__, encoding="utf-8") as f:
        return [python, "-c", f.read()]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
