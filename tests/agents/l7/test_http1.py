"""agents.l7.http1 against h11 (the reference) on generated valid messages, and on a table of malformed ones."""

from __future__ import annotations

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.l7.http1 import (
    CHUNK_END,
    HOP_BY_HOP,
    LAST_CHUNK,
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Parser,
    ProtocolError,
    RequestHead,
    ResponseHead,
    chunk_header,
    serialize_chunk,
    serialize_last_chunk,
    serialize_request_head,
    serialize_response_head,
    without_hop_by_hop,
)

FRAMING = {"content-length", "transfer-encoding", "connection", "host", "expect", "upgrade", "te", "trailer",
           "keep-alive"}
NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,19}", fullmatch=True).filter(
    lambda n: n.lower() not in FRAMING)
VALUES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.strip)
HEADERS = st.lists(st.tuples(NAMES, VALUES), max_size=12)
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE"])
TARGETS = st.from_regex(r"/[A-Za-z0-9._~!$&'()*+,;=:@/%-]{0,30}(\?[A-Za-z0-9=&%-]{0,20})?", fullmatch=True)
BODIES = st.binary(max_size=300)
SLOW = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def encode(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in headers]


@st.composite
def bodies_framed(draw: st.DrawFn, allow_chunked: bool = True) -> tuple[str, bytes, list, bytes]:
    """(framing, body, trailers, wire bytes of the body) with framing none/length/chunked."""
    framing = draw(st.sampled_from(["none", "length", "chunked"] if allow_chunked else ["none", "length"]))
    body = b"" if framing == "none" else draw(BODIES)
    if framing != "chunked":
        return framing, body, [], body
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=5)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if b > a]
    wire = b""
    for piece in pieces:
        ext = draw(st.sampled_from([b"", b";name=value", b";x", b';q="a b"']))  # h11 refuses BWS before ";"
        wire += b"%X" % len(piece) + ext + b"\r\n" + piece + b"\r\n"
    trailers = draw(st.lists(st.tuples(NAMES, VALUES), max_size=3))
    wire += b"0\r\n" + b"".join(n.encode() + b": " + v.encode() + b"\r\n" for n, v in trailers) + b"\r\n"
    return framing, body, trailers, wire


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, dict]:
    """One valid HTTP/1.1 request: its bytes and what it should parse to."""
    method, target, headers = draw(METHODS), draw(TARGETS), draw(HEADERS)
    framing, body, trailers, wire_body = draw(bodies_framed())
    all_headers = [("Host", draw(st.sampled_from(["reviews", "reviews.bookinfo:9080", "10.0.0.1"]))), *headers]
    if framing == "length":
        all_headers.append(("Content-Length", str(len(body))))
    elif framing == "chunked":
        all_headers.append(("Transfer-Encoding", "chunked"))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in all_headers) + "\r\n"
    return head.encode() + wire_body, {"method": method.encode(), "target": target.encode(),
                                       "headers": encode(all_headers), "body": body,
                                       "trailers": encode(trailers)}


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]


def ours_messages(parser: Parser, pieces: list[bytes], expect: int) -> list[dict]:
    """Feed pieces one at a time, collect messages (heads, joined bodies, trailers)."""
    messages: list[dict] = []
    current: dict = {}
    for piece in [*pieces, b""]:
        parser.feed(piece)
        while len(messages) < expect:
            event = parser.next_event()
            if event is NEED_DATA or event is PAUSED or isinstance(event, ConnectionClosed):
                break
            if isinstance(event, RequestHead):
                current = {"method": event.method, "target": event.target, "headers": event.headers, "body": b""}
            elif isinstance(event, ResponseHead):
                current = {"status": event.status, "headers": event.headers, "body": b""}
            elif isinstance(event, Data):
                assert isinstance(event.data, memoryview)
                current["body"] += bytes(event.data)
            elif isinstance(event, EndOfMessage):
                current["trailers"] = event.trailers
                messages.append(current)
    return messages


@SLOW
@given(st.lists(requests(), min_size=1, max_size=4), st.lists(st.integers(0, 10_000), max_size=8))
def test_pipelined_requests_split_anywhere_parse_like_h11(messages, cuts):
    data = b"".join(wire for wire, _ in messages)
    pieces = split(data, cuts)
    got = ours_messages(Parser("server"), pieces, len(messages))
    assert got == [expected for _, expected in messages]
    # h11, the reference, reads the same bytes the same way
    conn = h11.Connection(h11.SERVER)
    theirs: list[dict] = []
    for piece in pieces:
        conn.receive_data(piece)
        while True:
            event = conn.next_event()
            if event in (h11.NEED_DATA, h11.PAUSED):
                break
            if isinstance(event, h11.Request):
                current = {"method": event.method, "target": event.target,
                           "headers": list(event.headers.raw_items()), "body": b""}
            elif isinstance(event, h11.Data):
                current["body"] += event.data
            elif isinstance(event, h11.EndOfMessage):
                current["trailers"] = list(event.headers.raw_items())
                theirs.append(current)
                conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
    assert got == theirs


@st.composite
def responses(draw: st.DrawFn, last: bool) -> tuple[bytes, bytes, dict]:
    """(request method, response bytes, expected) for one valid response."""
    method = draw(st.sampled_from(["GET", "GET", "POST", "HEAD"]))
    status = draw(st.sampled_from([200, 201, 204, 206, 304, 404, 500, 503]))
    reason = draw(st.sampled_from(["", "OK", "Whatever it is"]))
    headers = draw(HEADERS)
    framings = ["length", "chunked"] + (["close"] if last else [])
    framing = draw(st.sampled_from(framings))
    no_body = method == "HEAD" or status in (204, 304)
    body = b"" if no_body else draw(BODIES)
    all_headers = list(headers)
    wire_body = body
    trailers: list = []
    if framing == "length":
        all_headers.append(("Content-Length", str(len(body))))
    elif framing == "chunked" and not no_body:
        all_headers.append(("Transfer-Encoding", "chunked"))
        _, body, trailers, wire_body = draw(bodies_framed().filter(lambda framed: framed[0] == "chunked"))
    elif framing == "chunked":
        all_headers.append(("Transfer-Encoding", "chunked"))
    head = f"HTTP/1.1 {status} {reason}".rstrip(" ") + "\r\n" + "".join(f"{n}: {v}\r\n" for n, v in all_headers)
    return method.encode(), head.encode() + b"\r\n" + wire_body, {
        "status": status, "headers": encode(all_headers), "body": body, "trailers": encode(trailers)}


@st.composite
def response_sequences(draw: st.DrawFn) -> list:
    count = draw(st.integers(1, 4))
    return [draw(responses(last=i == count - 1)) for i in range(count)]


@SLOW
@given(response_sequences(), st.lists(st.integers(0, 10_000), max_size=8))
def test_responses_split_anywhere_parse_like_h11(sequence, cuts):
    data = b"".join(wire for _, wire, _ in sequence)
    pieces = split(data, cuts)
    parser = Parser("client")
    for method, _, _ in sequence:
        parser.request_sent(method)
    got = ours_messages(parser, pieces, len(sequence))
    assert got == [expected for _, _, expected in sequence]
    conn = h11.Connection(h11.CLIENT)
    theirs: list[dict] = []
    pending = list(pieces)
    for method, _, _ in sequence:
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
        conn.send(h11.EndOfMessage())
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(pending.pop(0) if pending else b"")
                continue
            if isinstance(event, h11.Response):
                current = {"status": event.status_code,
                           "headers": list(event.headers.raw_items()), "body": b""}
            elif isinstance(event, h11.Data):
                current["body"] += event.data
            elif isinstance(event, h11.EndOfMessage):
                current["trailers"] = list(event.headers.raw_items())
                theirs.append(current)
                break
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
    assert got == theirs


# --- malformed input: the status the proxy answers, and what the message says ------------------------------

GET = b"GET / HTTP/1.1\r\nHost: a\r\n"
MALFORMED = [
    ("cl-and-te", GET + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "both Content-Length"),
    ("te-and-cl", GET + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400, "both Content-Length"),
    ("differing-cl", GET + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\n", 400, "conflicting Content-Length"),
    ("differing-cl-list", GET + b"Content-Length: 3, 4\r\n\r\n", 400, "conflicting Content-Length values 3, 4"),
    ("cl-negative", GET + b"Content-Length: -1\r\n\r\n", 400, "invalid Content-Length '-1'"),
    ("cl-plus", GET + b"Content-Length: +5\r\n\r\n", 400, "invalid Content-Length"),
    ("cl-hex", GET + b"Content-Length: 0x10\r\n\r\n", 400, "invalid Content-Length"),
    ("cl-huge", GET + b"Content-Length: 1234567890123456789012\r\n\r\n", 400, "invalid Content-Length"),
    ("obs-fold", GET + b"X-A: one\r\n two\r\n\r\n", 400, "obsolete line folding"),
    ("space-before-colon", GET + b"X-A : one\r\n\r\n", 400, "whitespace between header name and colon"),
    ("tab-before-colon", GET + b"Content-Length\t: 5\r\n\r\n", 400, "whitespace between header name and colon"),
    ("no-colon", GET + b"X-A one\r\n\r\n", 400, "header line without a colon"),
    ("bad-name", GET + b"X(A): one\r\n\r\n", 400, "invalid header name"),
    ("empty-name", GET + b": one\r\n\r\n", 400, "invalid header name"),
    ("nul-in-value", GET + b"X-A: o\x00ne\r\n\r\n", 400, "invalid character in header value"),
    ("bare-cr-in-value", GET + b"X-A: a\rX-B: b\r\n\r\n", 400, "bare CR or LF"),
    ("bare-lf-in-head", GET + b"X-A: a\nX-B: b\r\n\r\n", 400, "bare CR or LF"),
    ("bare-lf-head", b"GET / HTTP/1.1\nHost: a\n\n", 400, "bare LF"),
    ("no-host", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400, "without a Host header"),
    ("two-hosts", GET + b"Host: b\r\n\r\n", 400, "more than one Host"),
    ("te-gzip", GET + b"Transfer-Encoding: gzip\r\n\r\n", 501, "transfer-coding 'gzip' is not supported"),
    ("te-gzip-chunked", GET + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501, "'gzip' is not supported"),
    ("te-chunked-twice", GET + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
     "chunked exactly once"),
    ("te-in-http10", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "HTTP/1.0 message"),
    ("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "HTTP version 2.0 is not supported"),
    ("http-0.9-ish", b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505, "HTTP version 0.9"),
    ("version-garbage", b"GET / HTTP/1.1.1\r\nHost: a\r\n\r\n", 505, "malformed HTTP version 'HTTP/1.1.1'"),
    ("lowercase-version", b"GET / http/1.1\r\nHost: a\r\n\r\n", 400, "malformed request line"),
    ("no-target", b"GET HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed request line"),
    ("two-spaces", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed request line"),
    ("space-in-target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed request line"),
    ("bad-method", b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed request line"),
    ("chunk-size-not-hex", GET + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "malformed chunk size line 'zz"),
    ("chunk-size-huge", GET + b"Transfer-Encoding: chunked\r\n\r\n" + b"f" * 17 + b"\r\n", 400, "malformed chunk"),
    ("chunk-no-crlf", GET + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n", 400, "not followed by CRLF"),
    ("chunk-line-endless", GET + b"Transfer-Encoding: chunked\r\n\r\n1;" + b"x" * 5000, 400, "chunk size line longer"),
    ("trailer-with-cl", GET + b"Transfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 5\r\n\r\n", 400,
     "framing or Host field in a trailer"),
    ("head-too-big", GET + b"X-A: " + b"a" * 70_000 + b"\r\n\r\n", 431, "larger than 65536 bytes"),
    ("head-too-big-incomplete", GET + b"X-A: " + b"a" * 70_000, 431, "larger than 65536 bytes"),
    ("too-many-headers", GET + b"X-A: a\r\n" * 100 + b"\r\n", 431, "too many header fields (101, at most 100)"),
]


@pytest.mark.parametrize("data, status, message", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_requests_get_a_status_and_a_reason(data, status, message):
    parser = Parser("server")
    with pytest.raises(ProtocolError) as info:
        parser.events(data)
    assert info.value.status == status
    assert message in str(info.value)
    with pytest.raises(ProtocolError):  # a broken connection stays broken
        parser.next_event()


@pytest.mark.parametrize("name", ["differing-cl", "te-gzip", "no-host", "two-hosts", "space-before-colon"])
def test_h11_refuses_them_too(name):
    [data] = [c[1] for c in MALFORMED if c[0] == name]
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    with pytest.raises(h11.RemoteProtocolError):
        conn.next_event()


def test_an_upstream_error_is_always_502():
    parser = Parser("client")
    parser.request_sent(b"GET")
    with pytest.raises(ProtocolError) as info:
        parser.events(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert info.value.status == 502 and "both Content-Length" in info.value.message
    with pytest.raises(ProtocolError, match="no request is outstanding") as info:
        Parser("client").events(b"HTTP/1.1 200 OK\r\n\r\n")
    assert info.value.status == 502


def test_body_limit_for_buffered_use():
    with pytest.raises(ProtocolError) as info:
        Parser(max_body_bytes=10).events(GET + b"Content-Length: 11\r\n\r\n")
    assert info.value.status == 413
    parser = Parser(max_body_bytes=10)
    with pytest.raises(ProtocolError) as info:
        parser.events(GET + b"Transfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n5\r\n")
    assert info.value.status == 413 and "larger than 10 bytes" in info.value.message
    assert [type(e) for e in Parser(max_body_bytes=10).events(GET + b"Content-Length: 10\r\n\r\n" + b"x" * 10)] == [
        RequestHead, Data, EndOfMessage]


def test_header_limits_can_be_set():
    with pytest.raises(ProtocolError) as info:
        Parser(max_header_count=2).events(GET + b"A: 1\r\nB: 2\r\n\r\n")
    assert info.value.status == 431
    with pytest.raises(ProtocolError) as info:
        Parser(max_header_bytes=30).events(GET + b"A: 1\r\n\r\n")
    assert info.value.status == 431


def test_a_head_trickled_byte_by_byte():
    data = GET + b"X-A:  padded value \t\r\n\r\n"
    parser = Parser()
    events = []
    for i in range(len(data)):
        events += parser.events(data[i:i + 1])
    assert events == [RequestHead(b"GET", b"/", [(b"Host", b"a"), (b"X-A", b"padded value")]), EndOfMessage()]


# --- connection semantics ------------------------------------------------------------------------------------


@pytest.mark.parametrize("head, keep_alive", [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, CLOSE\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
    (b"GET / HTTP/1.0\r\nconnection: Keep-Alive\r\nHost: a\r\n\r\n", True),
])
def test_keep_alive(head, keep_alive):
    parser = Parser()
    request, end = parser.events(head)
    assert request.keep_alive is keep_alive and isinstance(end, EndOfMessage)
    assert parser.state == ("IDLE" if keep_alive else "MUST_CLOSE")


def test_after_a_closing_message_only_eof_is_read():
    parser = Parser()
    events = parser.events(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /more HTTP/1.1\r\n")
    assert [type(e) for e in events] == [RequestHead, EndOfMessage]
    assert parser.next_event() is NEED_DATA
    parser.feed(b"")
    assert parser.events() == [ConnectionClosed()]
    assert parser.next_event() == ConnectionClosed()


def test_clean_close_between_messages_and_unclean_ones():
    parser = Parser()
    parser.feed(b"\r\n" + GET + b"\r\n")
    parser.feed(b"")
    assert [type(e) for e in parser.events()] == [RequestHead, EndOfMessage, ConnectionClosed]
    parser = Parser()
    assert parser.events(b"GET / HTTP/1.1\r\nHo") == []
    parser.feed(b"")
    with pytest.raises(ProtocolError, match="closed in the middle of a request head"):
        parser.next_event()
    parser = Parser()
    parser.events(GET + b"Content-Length: 10\r\n\r\nabc")
    parser.feed(b"")
    with pytest.raises(ProtocolError, match=r"before the end of the body \(7 bytes missing\)"):
        parser.events()


@pytest.mark.parametrize("method, status", [(b"HEAD", 200), (b"GET", 204), (b"GET", 304), (b"HEAD", 404)])
def test_responses_without_a_body(method, status):
    parser = Parser("client")
    parser.request_sent(method)
    parser.request_sent(b"GET")
    events = parser.events(b"HTTP/1.1 %d X\r\nContent-Length: 42\r\n\r\n" % status
                           + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage, ResponseHead, Data, EndOfMessage]
    assert events[0].status == status and bytes(events[3].data) == b"ok"


def test_interim_responses_precede_the_final_one():
    parser = Parser("client")
    parser.request_sent(b"POST")
    events = parser.events(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                           b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert [(type(e).__name__, getattr(e, "status", None)) for e in events] == [
        ("ResponseHead", 100), ("ResponseHead", 103), ("ResponseHead", 201), ("EndOfMessage", None)]
    assert events[0].informational and not events[2].informational


def test_close_delimited_response_body():
    parser = Parser("client")
    parser.request_sent(b"GET")
    head, data = parser.events(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello ")
    assert head.keep_alive is False and head.content_length is None and bytes(data.data) == b"hello "
    parser.feed(b"world")
    parser.feed(b"")
    events = parser.events()
    assert [type(e) for e in events] == [Data, EndOfMessage, ConnectionClosed]
    assert bytes(events[0].data) == b"world"


def test_http10_response_closes_unless_keep_alive():
    parser = Parser("client")
    parser.request_sent(b"GET")
    [head, end] = parser.events(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert head.keep_alive is False and parser.state == "MUST_CLOSE"


def test_connect_and_upgrade_pause_the_parser():
    parser = Parser()
    events = parser.events(b"CONNECT reviews:9080 HTTP/1.1\r\nHost: reviews:9080\r\n\r\n\x16\x03\x01tls bytes")
    assert [type(e) for e in events] == [RequestHead, EndOfMessage]
    assert parser.next_event() is PAUSED and parser.trailing_data == b"\x16\x03\x01tls bytes"
    client = Parser("client")
    client.request_sent(b"GET")
    [head] = client.events(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello")
    assert head.status == 101 and client.next_event() is PAUSED and client.trailing_data == b"\x81\x05hello"
    tunnel = Parser("client")
    tunnel.request_sent(b"CONNECT")
    assert [type(e) for e in tunnel.events(b"HTTP/1.1 200 OK\r\n\r\nraw")] == [ResponseHead]
    assert tunnel.next_event() is PAUSED and tunnel.trailing_data == b"raw"


def test_bodies_are_memoryviews_without_copies():
    body = b"x" * 100_000
    parser = Parser()
    parser.events(GET + b"Content-Length: 200000\r\n\r\n")
    parser.feed(body)
    [data] = parser.events()
    assert isinstance(data.data, memoryview) and data.data.obj is body  # the fed bytes themselves
    parser.feed(body[:10])
    parser.feed(body[10:])  # two pieces: joined once, then handed over whole
    data, end = parser.events()
    assert len(data.data) == 100_000
    assert "Data(b'xxxx" in repr(data)


# --- serializing ------------------------------------------------------------------------------------------------


@SLOW
@given(METHODS, TARGETS, HEADERS, st.lists(st.binary(min_size=1, max_size=50), max_size=4), HEADERS)
def test_serialized_requests_read_back_by_both_parsers(method, target, headers, chunks, trailers):
    head_fields = [(b"Host", b"reviews"), *encode(headers), (b"Transfer-Encoding", b"chunked")]
    wire = serialize_request_head(method.encode(), target.encode(), head_fields)
    wire += b"".join(serialize_chunk(c) for c in chunks) + serialize_last_chunk(encode(trailers))
    [got] = ours_messages(Parser(), [wire], 1)
    assert got == {"method": method.encode(), "target": target.encode(), "headers": head_fields,
                   "body": b"".join(chunks), "trailers": encode(trailers)}
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(wire)
    request = conn.next_event()
    assert list(request.headers.raw_items()) == head_fields


def test_response_heads_and_chunk_framing():
    assert serialize_response_head(200, [(b"Content-Length", b"2")]) == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    assert serialize_response_head(403, [], b"RBAC: access denied") == b"HTTP/1.1 403 RBAC: access denied\r\n\r\n"
    assert serialize_response_head(299, [], version=b"1.0") == b"HTTP/1.0 299 \r\n\r\n"
    assert chunk_header(255) + b"x" * 255 + CHUNK_END == serialize_chunk(b"x" * 255)
    assert serialize_chunk(b"") == b"" and serialize_last_chunk() == LAST_CHUNK == b"0\r\n\r\n"
    assert serialize_last_chunk([(b"Grpc-Status", b"0")]) == b"0\r\nGrpc-Status: 0\r\n\r\n"


@pytest.mark.parametrize("bad", [
    lambda: serialize_request_head(b"GET", b"/", [(b"X", b"a\r\nInjected: yes")]),
    lambda: serialize_request_head(b"GET", b"/", [(b"X\n", b"a")]),
    lambda: serialize_request_head(b"GET", b"/a b", []),
    lambda: serialize_response_head(200, [], b"OK\r\nX: y"),
    lambda: serialize_response_head(42, []),
    lambda: serialize_last_chunk([(b"T", b"\n")]),
])
def test_serializers_refuse_to_split_a_message(bad):
    with pytest.raises(ValueError):
        bad()


def test_hop_by_hop_fields_are_dropped():
    headers = [(b"Host", b"a"), (b"Connection", b"keep-alive, X-Trace"), (b"Keep-Alive", b"timeout=5"),
               (b"x-trace", b"1"), (b"TE", b"trailers"), (b"Upgrade", b"h2c"), (b"X-Keep", b"yes")]
    assert without_hop_by_hop(headers) == [(b"Host", b"a"), (b"X-Keep", b"yes")]
    assert b"transfer-encoding" in HOP_BY_HOP
