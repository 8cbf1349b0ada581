"""The HTTP/1.x request head, parsed purely: shared by the agents' small servers and the lab API.

Only what those servers need: the request line, headers (lower-case names),
keep-alive and Content-Length. The L7 proxies have their own full parser
(`agents.l7.http1`), which also frames bodies.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_HEAD = 16 * 1024


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
    text = head.decode("latin-1")  # decodes every byte
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
