"""What the HTTP/1.1 parser hands out: events, the NEED_DATA/PAUSED markers, and `ProtocolError`.

Theory of operation: see `agents.l7.http1`. Events are small slotted dataclasses; header
fields are lists of (name, value) bytes pairs exactly as received (order and case kept,
surrounding whitespace of values removed), so a proxy forwards what it got.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Headers = list[tuple[bytes, bytes]]


class ProtocolError(Exception):
    """The peer broke HTTP/1.1; `status` is what the proxy should answer (502 for an upstream's fault)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(slots=True)
class RequestHead:
    """A request line and its header fields (names and values as received, in order)."""

    method: bytes
    target: bytes
    headers: Headers
    version: bytes = b"1.1"
    keep_alive: bool = True
    content_length: int | None = None  # None: chunked, or no body
    chunked: bool = False


@dataclass(slots=True)
class ResponseHead:
    """A status line and its header fields; 1xx heads are followed by the real response."""

    status: int
    headers: Headers
    reason: bytes = b""
    version: bytes = b"1.1"
    keep_alive: bool = True
    content_length: int | None = None
    chunked: bool = False

    @property
    def informational(self) -> bool:
        """Whether this is a 1xx interim response."""
        return self.status < 200


@dataclass(slots=True)
class Data:
    """A piece of a message body (chunk boundaries are not preserved)."""

    data: memoryview

    def __repr__(self) -> str:
        shown = bytes(self.data[:40])
        return f"Data({shown!r}{'...' if len(self.data) > 40 else ''}, {len(self.data)} bytes)"


@dataclass(slots=True)
class EndOfMessage:
    """The message is complete; chunked messages may carry trailer fields."""

    trailers: Headers = field(default_factory=list)


@dataclass(slots=True)
class ConnectionClosed:
    """The peer closed its side cleanly, between messages."""


class _Sentinel:
    """A named marker returned by `next_event` instead of an event."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")
PAUSED = _Sentinel("PAUSED")
Event = RequestHead | ResponseHead | Data | EndOfMessage | ConnectionClosed
