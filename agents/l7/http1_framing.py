"""HTTP/1.1 header fields and message framing rules (RFC 9112 §5, §6, §9.3), and why a line is malformed.

Theory of operation: the parser (`agents.l7.http1`) hands a head's field lines to
`parse_fields`, which reads them all with one regex call and picks out the values of the
few framing fields; the functions below say what those mean. They raise
`ProtocolError` with the status a server would answer (400, 501, 505); a client-role
parser turns every such status into 502. Ambiguity is refused rather than resolved, since
two parsers resolving it differently is how request smuggling works.
"""

from __future__ import annotations

import re

from agents.l7.http1_events import Headers, ProtocolError

TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_TOKEN = re.compile(TOKEN)
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_VALUE = rb"([^\x00-\x08\x0a-\x1f\x7f]*)\r"  # field-content and obs-text: no CTLs but HTAB
_FIELD = re.compile(rb"(" + TOKEN + rb"):[ \t]*" + _VALUE + rb"\n")
# One findall reads every field line: a match runs from the LF before a line to the CR that ends it, so
# matches start only at line starts (found by a fast scan for LF) and a bad line is skipped, never read from
# its middle. `parse_fields` compares the count with the number of lines and explains a mismatch.
_FIELDS = re.compile(rb"\n(" + TOKEN + rb"):[ \t]*" + _VALUE + rb"(?=\n)")

# The fields framing looks at (indexes into the lists `parse_fields` collects); the rest pass through untouched.
CONTENT_LENGTH, TRANSFER_ENCODING, CONNECTION, HOST = 0, 1, 2, 3
_FRAMING = {b"content-length": CONTENT_LENGTH, b"transfer-encoding": TRANSFER_ENCODING, b"connection": CONNECTION,
            b"host": HOST}
_FRAMING_LENGTHS = frozenset(len(name) for name in _FRAMING)


def shown(data: bytes | bytearray, limit: int = 60) -> str:
    """Bytes for a message: printable ASCII, escapes (like \\r) for the rest, cut at `limit`."""
    return repr(bytes(data[:limit]))[2:-1]


def parse_fields(src: bytes | bytearray, pos: int, limit: int,
                 max_count: int) -> tuple[Headers, list[list[bytes]]]:
    """The field lines from `pos` (just after a CRLF) to `limit`, and the framing fields' values by index."""
    headers: Headers = _FIELDS.findall(src, pos - 1, limit)
    n = len(headers)
    # Each match ends in a CR followed by LF; with exactly n CRs and n LFs, every line matched and no CR or LF
    # stands alone.
    if src.count(b"\r", pos, limit) != n or src.count(b"\n", pos, limit) != n:
        raise first_bad_field(src, pos, limit)
    if n > max_count:
        raise ProtocolError(f"too many header fields ({n}, at most {max_count})", 431)
    if src.find(b" \r", pos, limit) >= 0 or src.find(b"\t\r", pos, limit) >= 0:  # rare: trailing whitespace
        headers = [(name, value.rstrip(b" \t")) for name, value in headers]
    framing: list[list[bytes]] = [[], [], [], []]
    for name, value in headers:
        if len(name) in _FRAMING_LENGTHS:
            kind = _FRAMING.get(name.lower())
            if kind is not None:
                framing[kind].append(value)
    return headers, framing


def first_bad_field(src: bytes | bytearray, pos: int, limit: int) -> ProtocolError:
    """The error for the first field line that does not parse."""
    while pos < limit:
        m = _FIELD.match(src, pos, limit)
        if m is None:
            eol = src.find(b"\r\n", pos, limit)
            return bad_field(bytes(src[pos:eol if eol >= 0 else limit]))
        pos = m.end()
    return ProtocolError("malformed header section")  # not reached: some line failed above


def content_length(values: list[bytes]) -> int | None:
    """The one Content-Length among the field values (repeats allowed if equal), or None."""
    if not values:
        return None
    found = {v.strip(b" \t") for value in values for v in value.split(b",")}
    for v in found:
        if not v.isdigit() or len(v) > 18:
            raise ProtocolError(f"invalid Content-Length '{shown(v)}'")
    if len(found) > 1:
        raise ProtocolError("conflicting Content-Length values " + ", ".join(sorted(v.decode() for v in found)))
    return int(found.pop())


def is_chunked(values: list[bytes], version: bytes) -> bool:
    """Whether Transfer-Encoding says chunked, the only transfer-coding supported."""
    if not values:
        return False
    if version == b"1.0":
        raise ProtocolError("Transfer-Encoding in an HTTP/1.0 message")
    codings = [c for c in (c.strip(b" \t").lower() for value in values for c in value.split(b",")) if c]
    unknown = [c for c in codings if c != b"chunked"]
    if unknown:
        raise ProtocolError(f"transfer-coding '{shown(unknown[0])}' is not supported (only chunked)", 501)
    if len(codings) != 1:
        raise ProtocolError("Transfer-Encoding must name chunked exactly once")
    return True


def keep_alive(version: bytes, connection: list[bytes]) -> bool:
    """HTTP/1.1 keeps the connection unless `close`; HTTP/1.0 closes it unless `keep-alive`."""
    if not connection:
        return version == b"1.1"
    tokens = {t.strip(b" \t").lower() for value in connection for t in value.split(b",")}
    if b"close" in tokens:
        return False
    return version == b"1.1" or b"keep-alive" in tokens


def bad_start_line(line: bytes | bytearray, what: str) -> ProtocolError:
    """Why a request or status line (with its CRLF) does not parse."""
    if b"\n" in line[:-1] or b"\r" in line[:-2]:
        return ProtocolError(f"bare CR or LF in the {what} line '{shown(line)}'")
    words = line[:-2].split(b" ")
    version = words[-1] if what == "request" else words[0]
    if len(words) >= 3 and version.startswith(b"HTTP/") and not _VERSION.fullmatch(version):
        return ProtocolError(f"malformed HTTP version '{shown(version, 20)}'", 505)
    return ProtocolError(f"malformed {what} line '{shown(line[:-2])}'")


def bad_field(line: bytes) -> ProtocolError:
    """Why a header line (without its CRLF) does not parse."""
    text = shown(line)
    if b"\n" in line or b"\r" in line:
        return ProtocolError(f"bare CR or LF in header line '{text}'")
    if line[:1] in (b" ", b"\t"):
        return ProtocolError(f"obsolete line folding (a header line starting with whitespace: '{text}')")
    name, colon, _ = line.partition(b":")
    if not colon:
        return ProtocolError(f"header line without a colon: '{text}'")
    if name[-1:] in (b" ", b"\t"):
        return ProtocolError(f"whitespace between header name and colon: '{text}'")
    if not _TOKEN.fullmatch(name):
        return ProtocolError(f"invalid header name in '{text}'")
    return ProtocolError(f"invalid character in header value: '{text}'")
