"""Sans-IO HTTP/1.1 serialization: request and response heads, chunk framing, hop-by-hop headers.

Theory of operation: the proxy writes what the parser (`agents.l7.http1`) read, after
routing changed it, so the serializers take the same shapes (header lists of
(name, value) bytes pairs, case kept). They build one `bytes` per head with a single
join, and refuse a CR or LF smuggled into a name, value, method, target or reason (a
header mutation from config must never split a message): one count over the result
checks it, not a loop over bytes. Bodies are never copied: `chunk_header(n)` and
`CHUNK_END` frame a chunk around the caller's buffer for a vectored write.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from http import HTTPStatus

HeaderPairs = Sequence[tuple[bytes, bytes]]

CHUNK_END = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"

# Connection-scoped fields a proxy must not forward (RFC 9110 §7.6.1), plus those named in Connection.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding", b"upgrade",
                        b"trailer", b"proxy-authenticate", b"proxy-authorization"})

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


def _lines(first: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """`first` CRLF, each `name: value` CRLF, CRLF; ValueError if any part held a CR or LF."""
    parts = [first]
    for name, value in headers:
        parts.append(name + b": " + value)
    out = b"\r\n".join(parts) + b"\r\n\r\n"
    if out.count(b"\n") != len(parts) + 1 or out.count(b"\r") != len(parts) + 1:
        raise ValueError("CR or LF inside a request/status line or header field")
    return out


def serialize_request_head(method: bytes, target: bytes, headers: HeaderPairs, version: bytes = b"1.1") -> bytes:
    """`METHOD target HTTP/x.y` and the header fields, as bytes ready to send."""
    if b" " in method or b" " in target:
        raise ValueError("space in a request method or target")
    return _lines(method + b" " + target + b" HTTP/" + version, headers)


def serialize_response_head(status: int, headers: HeaderPairs, reason: bytes | None = None,
                            version: bytes = b"1.1") -> bytes:
    """`HTTP/x.y status reason` and the header fields; the reason defaults to the standard phrase."""
    if not 100 <= status <= 999:
        raise ValueError(f"status {status} is not a 3-digit code")
    if reason is None:
        reason = _REASONS.get(status, b"")
    return _lines(b"HTTP/" + version + b" %d " % status + reason, headers)


def chunk_header(size: int) -> bytes:
    """The size line that opens a chunk of `size` (> 0) bytes; `CHUNK_END` closes it."""
    return b"%x\r\n" % size


def serialize_chunk(data: bytes | memoryview) -> bytes:
    """One whole chunk (copies `data`; prefer `chunk_header` + data + `CHUNK_END` for large bodies)."""
    if not len(data):
        return b""  # an empty chunk would end the body
    return b"%x\r\n" % len(data) + bytes(data) + CHUNK_END


def serialize_last_chunk(trailers: HeaderPairs = ()) -> bytes:
    """The last chunk, with trailer fields if any."""
    if not trailers:
        return LAST_CHUNK
    return _lines(b"0", trailers)


def connection_scoped(headers: HeaderPairs) -> frozenset[bytes]:
    """Lower-case names a proxy must drop: the standard hop-by-hop ones and those listed in Connection."""
    listed = {token.strip(b" \t").lower() for name, value in headers if name.lower() == b"connection"
              for token in value.split(b",")}
    return HOP_BY_HOP | listed if listed else HOP_BY_HOP


def without_hop_by_hop(headers: HeaderPairs) -> list[tuple[bytes, bytes]]:
    """The end-to-end header fields of a message (what a proxy forwards)."""
    drop = connection_scoped(headers)
    return [(name, value) for name, value in headers if name.lower() not in drop]
