"""Moving one HTTP/1.1 exchange's bytes: the downstream request body, one upstream try, the response relay.

Theory of operation: the parsers (`agents.l7.http1`) decide what the bytes mean; this module
only pulls events and writes bytes. `DownstreamStream` pulls request events from the client
connection (whole reads fed to the parser, so pipelined requests wait in its buffer).
`RequestBody` buffers a request body up to a limit, so a retry can send it again; a longer
body is streamed to the first upstream as it arrives and is then no longer replayable.
`send_request` + `response_head` are one try on one upstream connection; `relay_body` copies
the response body to the client, re-framing it (chunked stays chunked, a body delimited by the
upstream's close is chunked for an HTTP/1.1 client) without buffering it whole.
"""

from __future__ import annotations

import asyncio

from agents.l7.http1 import (
    CHUNK_END,
    NEED_DATA,
    Data,
    EndOfMessage,
    Headers,
    Parser,
    ProtocolError,
    ResponseHead,
    chunk_header,
    serialize_last_chunk,
)
from agents.l7.http1_events import _Sentinel
from agents.l7.upstream import UpstreamConnection

READ_SIZE = 256 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = range(4)  # how a response body goes to the client


class UpstreamReset(Exception):
    """The upstream closed, reset or broke HTTP/1.1: `flag` UC or UPE; `before_response`: no byte of it came."""

    def __init__(self, flag: str, detail: str, before_response: bool) -> None:
        super().__init__(detail)
        self.flag = flag
        self.detail = detail
        self.before_response = before_response

    @property
    def status(self) -> int:
        """The local reply when no try got further: 503 for a reset, 502 for a protocol error."""
        return 502 if self.flag == "UPE" else 503

    @property
    def reason(self) -> str:
        """Envoy's reset reason words."""
        return "protocol error" if self.flag == "UPE" else "connection termination"


class DownstreamStream:
    """The client connection: its request parser and its two stream ends."""

    __slots__ = ("parser", "reader", "writer")

    def __init__(self, parser: Parser, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.parser = parser
        self.reader = reader
        self.writer = writer

    async def fill(self) -> None:
        """Feed the parser one read (EOF, or a reset, as end of stream)."""
        try:
            data = await self.reader.read(READ_SIZE)
        except OSError:
            data = b""
        self.parser.feed(data)

    async def next_event(self) -> object:
        """The next request event (a `ProtocolError` propagates)."""
        parser = self.parser
        while True:
            event = parser.next_event()
            if event is not NEED_DATA:
                return event
            await self.fill()


class RequestBody:
    """A request body as it arrives: buffered up to a limit for retries, streamed beyond it."""

    __slots__ = ("stream", "chunks", "trailers", "complete", "size", "streamed", "expect_continue")

    def __init__(self, stream: DownstreamStream, expect_continue: bool = False) -> None:
        self.stream = stream
        self.chunks: list[memoryview] = []
        self.trailers: Headers = []
        self.complete = False
        self.size = 0
        self.streamed = False  # part of it went upstream without being kept: a retry cannot resend it
        self.expect_continue = expect_continue  # the client waits for "100 Continue" before sending it

    @property
    def replayable(self) -> bool:
        """Whether the whole body is buffered (a retry may send it again)."""
        return self.complete and not self.streamed

    async def buffer(self, limit: int) -> bool:
        """Read until the end of the body or until more than `limit` bytes are kept; whether it is complete."""
        while not self.complete and self.size <= limit:
            await self._pull()
        return self.complete

    async def _pull(self) -> Data | None:
        """The next piece of the body (kept in `chunks`), or None at its end."""
        stream = self.stream
        parser = stream.parser
        while True:
            event = parser.next_event()
            if event is not NEED_DATA:
                break
            if self.expect_continue:  # Envoy answers 100-continue itself, then the client sends the body
                self.expect_continue = False
                stream.writer.write(CONTINUE)
            await stream.fill()
        kind = type(event)
        if kind is Data:
            self.chunks.append(event.data)  # type: ignore[union-attr]
            self.size += len(event.data)  # type: ignore[union-attr]
            return event  # type: ignore[return-value]
        if kind is EndOfMessage:
            self.trailers = event.trailers  # type: ignore[union-attr]
            self.complete = True
            return None
        raise ProtocolError(f"unexpected {event!r} inside a request body")

    async def send(self, writer: asyncio.StreamWriter, chunked: bool) -> None:
        """Write the kept part to the upstream, then stream the rest as it arrives (it is not kept)."""
        for piece in self.chunks:
            if chunked:
                writer.writelines((chunk_header(len(piece)), piece, CHUNK_END))
            else:
                writer.write(piece)
        while not self.complete:
            self.streamed = True
            piece = await self._pull()
            if piece is not None:
                self.chunks.pop()
                if chunked:
                    writer.writelines((chunk_header(len(piece.data)), piece.data, CHUNK_END))
                else:
                    writer.write(piece.data)
                await writer.drain()
        if chunked:
            writer.write(serialize_last_chunk(self.trailers))


async def send_request(conn: UpstreamConnection, head: bytes, body: RequestBody | None, chunked: bool,
                       method: bytes) -> None:
    """Write one request to the upstream (head, then body); a failed write is an UpstreamReset."""
    writer = conn.writer
    try:
        writer.write(head)
        if body is not None:
            await body.send(writer, chunked)
        conn.parser.request_sent(method)
        await writer.drain()
    except (ConnectionError, OSError) as e:
        raise UpstreamReset("UC", f"upstream write failed: {e}", True) from None


async def _upstream_event(conn: UpstreamConnection, got: list[bool]) -> object:
    """The next response event; EOF and protocol errors become UpstreamReset (got[0]: a byte came)."""
    parser, reader = conn.parser, conn.reader
    while True:
        try:
            event = parser.next_event()
        except ProtocolError as e:
            if conn.reader.at_eof():
                raise UpstreamReset("UC", f"upstream closed mid-response: {e.message}", not got[0]) from None
            raise UpstreamReset("UPE", f"upstream protocol error: {e.message}", False) from None
        if event is not NEED_DATA:
            if isinstance(event, _Sentinel):  # PAUSED: a 101 or CONNECT answer, never asked for here
                raise UpstreamReset("UPE", "upstream switched protocols unasked", False)
            return event
        try:
            data = await reader.read(READ_SIZE)
        except OSError:
            data = b""
        if data:
            got[0] = True
        parser.feed(data)


async def response_head(conn: UpstreamConnection) -> ResponseHead:
    """The upstream's final response head (1xx interim responses are dropped)."""
    got = [False]
    while True:
        event = await _upstream_event(conn, got)
        if type(event) is ResponseHead:
            if event.status >= 200:
                return event
            continue
        raise UpstreamReset("UC", "upstream closed the connection before a response", not got[0])


async def relay_body(conn: UpstreamConnection, writer: asyncio.StreamWriter, mode: int, head: bytes = b"") -> int:
    """Write `head` (the response head) and copy the response body to the client in `mode` framing; the body
    bytes copied. What the upstream already sent goes out in one write with the head (one send, one DATA
    frame on a tunnel, instead of one per piece); the head is written before the first wait or error."""
    total = 0
    got = [True]
    parser = conn.parser
    parts: list[bytes | memoryview] = [head] if head else []
    try:
        while True:
            try:
                event = parser.next_event()
            except ProtocolError:
                event = NEED_DATA  # let _upstream_event tell a reset from a protocol error, after the flush
            if isinstance(event, _Sentinel):  # NEED_DATA (or PAUSED, which _upstream_event refuses)
                if parts:
                    _write(writer, parts)
                    parts = []
                    await writer.drain()
                event = await _upstream_event(conn, got)
            kind = type(event)
            if kind is Data:
                data = event.data  # type: ignore[union-attr]
                n = len(data)
                total += n
                if mode == CHUNKED:
                    parts += (chunk_header(n), data, CHUNK_END)
                else:
                    parts.append(data)
            elif kind is EndOfMessage:
                if mode == CHUNKED:
                    parts.append(serialize_last_chunk(event.trailers))  # type: ignore[union-attr]
                if parts:
                    _write(writer, parts)
                    parts = []
                    await writer.drain()
                return total
            else:
                raise UpstreamReset("UC", "upstream closed in the middle of a response body", False)
    finally:
        if parts:  # an error before the flush: what was relayed still reaches the client, as before
            _write(writer, parts)


def _write(writer: asyncio.StreamWriter, parts: list[bytes | memoryview]) -> None:
    """One write of `parts` (a lone piece, e.g. a large body read, is not copied into a join)."""
    if len(parts) == 1:
        writer.write(parts[0])
    else:
        writer.writelines(parts)
