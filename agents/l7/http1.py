"""Sans-IO HTTP/1.1 parsing for both directions: requests from clients, responses from upstreams.

Theory of operation
-------------------
A `Parser` is fed bytes (`feed(data)`, `feed(b"")` for end of stream) and hands out one
event per `next_event()` call: a `RequestHead` (role "server") or `ResponseHead` (role
"client"), zero or more `Data` pieces, an `EndOfMessage` (with trailers), and finally
`ConnectionClosed`; `NEED_DATA` when it needs more bytes, `PAUSED` when the connection
stopped being HTTP/1.1 (an accepted CONNECT, a 101 upgrade): `trailing_data` then holds
what followed. The caller drives the loop, so pipelining is safe: bytes after one message
stay buffered until the caller asks for the next event.

States (`state`), and what moves between them::

    IDLE --head--> BODY (Content-Length) | CHUNK_SIZE (chunked) | CLOSE_BODY (response
         until EOF) | END (no body) --EndOfMessage--> IDLE, or MUST_CLOSE when the
         message was not keep-alive, or PAUSED after CONNECT / 101.
    CHUNK_SIZE -> CHUNK_DATA -> CHUNK_END -> CHUNK_SIZE ... size 0 -> TRAILERS -> EndOfMessage
    MUST_CLOSE --EOF--> CLOSED (ConnectionClosed, again on every later call); bytes that
         arrive after a closing message are not read

Anything else is a `ProtocolError` carrying the status the proxy should answer with:
400 malformed or ambiguous (request smuggling: Content-Length with Transfer-Encoding,
differing Content-Lengths, obs-fold, whitespace before a colon, bare CR/LF), 413 body over
`max_body_bytes`, 431 head over `max_header_bytes` or `max_header_count`, 501 a
transfer-coding other than chunked, 505 an HTTP version other than 1.0/1.1. A client-role
parser reads an upstream, so its errors carry 502 (the upstream's fault). After an error
the parser is dead: every later call raises the same error.

Speed (this is the proxies' hot path): the end of a head is found with `bytes.find` (an
incomplete head is never searched twice), the request line is one precompiled regex match
and all header lines one `findall` (`agents.l7.http1_framing.parse_fields`), only the few
framing fields are looked at, and body bytes are handed out as `memoryview`s of the fed
`bytes` without copying. `scripts/bench_http1.py` compares it with h11.
"""

from __future__ import annotations

import re
from collections import deque

from agents.l7.http1_events import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    Headers,
    ProtocolError,
    RequestHead,
    ResponseHead,
    _Sentinel,
)
from agents.l7.http1_framing import (
    CONNECTION,
    CONTENT_LENGTH,
    HOST,
    TOKEN,
    TRANSFER_ENCODING,
    bad_start_line,
    content_length,
    is_chunked,
    parse_fields,
    shown,
)
from agents.l7.http1_framing import keep_alive as keep_alive_of
from agents.l7.http1_serialize import (
    CHUNK_END,
    HOP_BY_HOP,
    LAST_CHUNK,
    chunk_header,
    serialize_chunk,
    serialize_last_chunk,
    serialize_request_head,
    serialize_response_head,
    without_hop_by_hop,
)

__all__ = ["CHUNK_END", "HOP_BY_HOP", "LAST_CHUNK", "NEED_DATA", "PAUSED", "ConnectionClosed", "Data", "EndOfMessage",
           "Event", "Headers", "Parser", "ProtocolError", "RequestHead", "ResponseHead", "chunk_header",
           "serialize_chunk", "serialize_last_chunk", "serialize_request_head", "serialize_response_head",
           "without_hop_by_hop"]

DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_HEADER_COUNT = 100
MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions

_REQUEST_LINE = re.compile(rb"(" + TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/([0-9])\.([0-9])\r\n")
_STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?\r\n")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?\r\n")

IDLE, END, BODY, CHUNK_SIZE, CHUNK_DATA, CHUNK_END_STATE, TRAILERS, CLOSE_BODY, MUST_CLOSE, PAUSED_STATE, CLOSED, \
    ERROR = range(12)
STATE_NAMES = ("IDLE", "END", "BODY", "CHUNK_SIZE", "CHUNK_DATA", "CHUNK_END", "TRAILERS", "CLOSE_BODY",
               "MUST_CLOSE", "PAUSED", "CLOSED", "ERROR")


class Parser:
    """An HTTP/1.1 receiver: role "server" reads requests, role "client" reads responses."""

    def __init__(self, role: str = "server", *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
                 max_header_count: int = DEFAULT_MAX_HEADER_COUNT, max_body_bytes: int | None = None) -> None:
        if role not in ("server", "client"):
            raise ValueError(f"role must be 'server' or 'client', not {role!r}")
        self.role = role
        self.max_header_bytes = max_header_bytes
        self.max_header_count = max_header_count
        self.max_body_bytes = max_body_bytes
        self._server = role == "server"
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._eof = False
        self._state = IDLE
        self._remaining = 0  # body bytes left (BODY, CHUNK_DATA)
        self._body_total = 0  # chunked bytes so far, for max_body_bytes
        self._keep_alive = True  # of the current message
        self._pause_after = False  # CONNECT request: not HTTP/1.1 after it
        self._methods: deque[bytes] = deque()  # client role: methods of requests sent, oldest first
        self._error: ProtocolError | None = None
        self._scanned = 0  # bytes of an incomplete head already searched for its end

    # --- input --------------------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes; `b""` means the peer closed its side (EOF)."""
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("bytes fed after end of stream")
        buf = self._buf
        if self._pos >= len(buf):
            self._buf, self._pos = (data if type(data) is bytes else bytes(data)), 0
        elif isinstance(buf, bytes):
            grown = bytearray(memoryview(buf)[self._pos:])
            grown += data
            self._buf, self._pos = grown, 0
        else:
            if self._pos:
                del buf[:self._pos]
                self._pos = 0
            buf += data

    def request_sent(self, method: bytes) -> None:
        """Client role: a request with `method` went out (responses to HEAD and CONNECT differ)."""
        self._methods.append(method)

    @property
    def state(self) -> str:
        """The parser's state name (see the module docstring)."""
        return STATE_NAMES[self._state]

    @property
    def trailing_data(self) -> bytes:
        """Bytes received but not parsed (what followed a CONNECT or a 101 upgrade)."""
        return bytes(self._buf[self._pos:])

    def events(self, data: bytes | None = None) -> list[Event]:
        """Feed `data` (if given) and return every event available now (until NEED_DATA or PAUSED)."""
        if data is not None:
            self.feed(data)
        out: list[Event] = []
        while True:
            event = self.next_event()
            if event is NEED_DATA or event is PAUSED:
                return out
            out.append(event)  # type: ignore[arg-type]
            if type(event) is ConnectionClosed:
                return out

    # --- the state machine --------------------------------------------------------------------------

    def next_event(self) -> Event | _Sentinel:
        """The next event, NEED_DATA, or PAUSED; raises `ProtocolError` on bad input."""
        state = self._state
        try:
            if state == IDLE:
                return self._head()
            if state == BODY or state == CHUNK_DATA:
                return self._counted_body()
            if state == END:
                return self._end_of_message([])
            if state == CHUNK_SIZE or state == CHUNK_END_STATE or state == TRAILERS:
                return self._chunked()
            if state == CLOSE_BODY:
                return self._close_body()
            if state == MUST_CLOSE or state == CLOSED:
                if self._eof:
                    self._state = CLOSED
                    return ConnectionClosed()
                return NEED_DATA
            if state == PAUSED_STATE:
                return PAUSED
        except ProtocolError as e:
            if not self._server:
                e.status = 502  # the upstream's fault: the proxy answers its client 502
            self._state, self._error = ERROR, e
            raise
        assert self._error is not None
        raise self._error

    def _head(self) -> Event | _Sentinel:
        """IDLE: parse a request or status line and its header fields."""
        buf, pos = self._buf, self._pos
        if self._server and buf.startswith(b"\r\n", pos):
            while buf.startswith(b"\r\n", pos):  # RFC 9112 §2.2: ignore empty lines before a request
                pos += 2
            self._pos, self._scanned = pos, 0
        scanned = self._scanned
        end = buf.find(b"\r\n\r\n", pos + scanned - 3 if scanned > 3 else pos)
        if end < 0:
            return self._incomplete_head(buf, pos)
        self._scanned = 0
        stop = end + 4
        if stop - pos > self.max_header_bytes:
            raise ProtocolError(f"header section is larger than {self.max_header_bytes} bytes", 431)
        src, start, limit = buf, pos, end + 2
        self._pos = stop
        if self._server:
            m = _REQUEST_LINE.match(src, start, limit)
            if m is None:
                raise bad_start_line(src[start:src.find(b"\r\n", start, limit) + 2], "request")
            method, target, major, minor = m.groups()
            if major != b"1" or minor not in (b"0", b"1"):
                raise ProtocolError(f"HTTP version {(major + b'.' + minor).decode()} is not supported "
                                    "(only 1.0 and 1.1)", 505)
            headers, framing = parse_fields(src, m.end(), limit, self.max_header_count)
            return self._request(method, target, major + b"." + minor, headers, framing)
        m = _STATUS_LINE.match(src, start, limit)
        if m is None:
            raise bad_start_line(src[start:src.find(b"\r\n", start, limit) + 2], "status")
        major, minor, code, reason = m.groups()
        if major != b"1" or minor not in (b"0", b"1"):
            raise ProtocolError(f"HTTP version {(major + b'.' + minor).decode()} is not supported")
        headers, framing = parse_fields(src, m.end(), limit, self.max_header_count)
        return self._response(int(code), reason or b"", major + b"." + minor, headers, framing)

    def _incomplete_head(self, buf: bytes | bytearray, pos: int) -> _Sentinel:
        """No end of head yet: too much, a bare-LF head, EOF in the middle, or wait."""
        pending = len(buf) - pos
        if pending > self.max_header_bytes:
            raise ProtocolError(f"header section is larger than {self.max_header_bytes} bytes", 431)
        scan = pos + self._scanned - 2 if self._scanned > 2 else pos
        if buf.find(b"\n\n", scan) >= 0 or buf.find(b"\n\r\n", scan) >= 0:
            raise ProtocolError("line ending without CR (bare LF); HTTP/1.1 lines end with CRLF")
        self._scanned = pending
        if self._eof:
            if pending == 0:
                self._state = CLOSED
                return ConnectionClosed()  # type: ignore[return-value]
            what = "request" if self._server else "response"
            raise ProtocolError(f"connection closed in the middle of a {what} head")
        return NEED_DATA

    # --- framing (RFC 9112 §6) ----------------------------------------------------------------------

    def _request(self, method: bytes, target: bytes, version: bytes, headers: Headers,
                 framing: list[list[bytes]]) -> RequestHead:
        """A parsed request head; sets up the body state."""
        hosts = framing[HOST]
        if len(hosts) > 1:
            raise ProtocolError("more than one Host header field")
        if not hosts and version == b"1.1":
            raise ProtocolError("HTTP/1.1 request without a Host header field")
        chunked = is_chunked(framing[TRANSFER_ENCODING], version)
        if chunked and framing[CONTENT_LENGTH]:
            raise ProtocolError("both Content-Length and Transfer-Encoding (request smuggling risk)")
        length = None if chunked else content_length(framing[CONTENT_LENGTH])
        if length is not None and self.max_body_bytes is not None and length > self.max_body_bytes:
            raise ProtocolError(f"request body of {length} bytes is larger than {self.max_body_bytes}", 413)
        keep_alive = keep_alive_of(version, framing[CONNECTION])
        self._keep_alive, self._pause_after = keep_alive, method == b"CONNECT"
        self._start_body(chunked, length or 0)
        return RequestHead(method, target, headers, version, keep_alive, length, chunked)

    def _response(self, status: int, reason: bytes, version: bytes, headers: Headers,
                  framing: list[list[bytes]]) -> ResponseHead:
        """A parsed response head; sets up the body state from the request it answers."""
        if not self._methods:
            raise ProtocolError("response received while no request is outstanding")
        method = self._methods[0]
        keep_alive = keep_alive_of(version, framing[CONNECTION])
        head = ResponseHead(status, headers, reason, version, keep_alive)
        if status < 200:
            if status == 101:
                self._state = PAUSED_STATE
            return head  # the final response follows (or the protocol switched)
        self._methods.popleft()
        if method == b"CONNECT" and status < 300:
            self._state = PAUSED_STATE
            return head
        chunked = is_chunked(framing[TRANSFER_ENCODING], version)
        if chunked and framing[CONTENT_LENGTH]:
            raise ProtocolError("both Content-Length and Transfer-Encoding")
        length = None if chunked else content_length(framing[CONTENT_LENGTH])
        self._keep_alive, self._pause_after = keep_alive, False
        if method == b"HEAD" or status == 204 or status == 304:
            self._start_body(False, 0)
            return head
        head.content_length, head.chunked = length, chunked
        if not chunked and length is None:
            head.keep_alive = self._keep_alive = False
            self._state = CLOSE_BODY
            return head
        self._start_body(chunked, length or 0)
        return head

    def _start_body(self, chunked: bool, length: int) -> None:
        """Enter the body state for the framing found."""
        self._body_total = 0
        if chunked:
            self._state = CHUNK_SIZE
        elif length:
            self._state, self._remaining = BODY, length
        else:
            self._state = END

    # --- bodies -------------------------------------------------------------------------------------

    def _take(self, n: int) -> memoryview:
        """The next `n` buffered bytes (`n` <= what is buffered), without copying when possible."""
        buf, pos = self._buf, self._pos
        end = pos + n
        if type(buf) is bytes:
            self._pos = end
            return memoryview(buf)[pos:end]
        if end == len(buf):  # hand the whole bytearray over: nothing will write to it again
            self._buf, self._pos = b"", 0
            return memoryview(buf)[pos:]
        self._pos = end
        return memoryview(bytes(buf[pos:end]))

    def _counted_body(self) -> Event | _Sentinel:
        """BODY / CHUNK_DATA: hand out what is buffered, up to the bytes remaining."""
        available = len(self._buf) - self._pos
        if available <= 0:
            if self._eof:
                raise ProtocolError(f"connection closed before the end of the body ({self._remaining} bytes missing)")
            return NEED_DATA
        n = self._remaining if self._remaining < available else available
        self._remaining -= n
        if not self._remaining:
            self._state = END if self._state == BODY else CHUNK_END_STATE
        return Data(self._take(n))

    def _close_body(self) -> Event | _Sentinel:
        """CLOSE_BODY: a response body that ends when the upstream closes."""
        available = len(self._buf) - self._pos
        if available:
            return Data(self._take(available))
        if self._eof:
            return self._end_of_message([])
        return NEED_DATA

    def _chunked(self) -> Event | _Sentinel:
        """CHUNK_SIZE / CHUNK_END / TRAILERS: the framing between chunk data."""
        buf = self._buf
        while True:
            pos, state = self._pos, self._state
            if state == CHUNK_END_STATE:
                if len(buf) - pos < 2:
                    return self._need_more("chunk")
                if buf[pos:pos + 2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                self._pos, self._state = pos + 2, CHUNK_SIZE
                continue
            if state == CHUNK_SIZE:
                eol = buf.find(b"\n", pos, pos + MAX_CHUNK_LINE)
                if eol < 0:
                    if len(buf) - pos >= MAX_CHUNK_LINE:
                        raise ProtocolError(f"chunk size line longer than {MAX_CHUNK_LINE} bytes")
                    return self._need_more("chunk size line")
                m = _CHUNK_SIZE.match(buf, pos, eol + 1)
                if m is None:
                    raise ProtocolError(f"malformed chunk size line '{shown(buf[pos:eol + 1], 40)}'")
                size = int(m.group(1), 16)
                self._pos = eol + 1
                if size == 0:
                    self._state = TRAILERS
                    continue
                self._body_total += size
                if self.max_body_bytes is not None and self._body_total > self.max_body_bytes:
                    raise ProtocolError(f"body is larger than {self.max_body_bytes} bytes", 413)
                self._state, self._remaining = CHUNK_DATA, size
                return self._counted_body()
            return self._trailers(buf, pos)

    def _trailers(self, buf: bytes | bytearray, pos: int) -> Event | _Sentinel:
        """TRAILERS: the trailer section after the last chunk, then EndOfMessage."""
        if buf.startswith(b"\r\n", pos):
            self._pos = pos + 2
            return self._end_of_message([])
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            if len(buf) - pos > self.max_header_bytes:
                raise ProtocolError(f"trailer section is larger than {self.max_header_bytes} bytes", 431)
            return self._need_more("trailer section")
        self._pos = end + 4
        section = b"\r\n" + buf[pos:end + 2]  # `_fields` wants a CRLF before the first line
        trailers, framing = parse_fields(section, 2, len(section), self.max_header_count)
        if any(framing[k] for k in (CONTENT_LENGTH, TRANSFER_ENCODING, HOST)):
            raise ProtocolError("framing or Host field in a trailer section")
        return self._end_of_message(trailers)

    def _need_more(self, what: str) -> _Sentinel:
        """NEED_DATA, or an error when the peer already closed."""
        if self._eof:
            raise ProtocolError(f"connection closed in the middle of a {what}")
        return NEED_DATA

    def _end_of_message(self, trailers: Headers) -> EndOfMessage:
        """The end of one message: ready for the next, or closing, or paused."""
        if self._pause_after:
            self._state = PAUSED_STATE
        elif self._keep_alive:
            self._state = IDLE
        else:
            self._state = MUST_CLOSE
        return EndOfMessage(trailers)
