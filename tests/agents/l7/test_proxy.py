"""The L7 engine on real loopback sockets: keep-alive, pipelining, framing, bodies, bad input, upstream failures."""

from __future__ import annotations

import asyncio

import pytest

from agents.l7.upstream import UpstreamConnectError
from tests.agents.l7.harness import PORT, SERVICE, Bench, Config, Upstream, closed_port, split_responses


@pytest.fixture
async def upstream():
    up = await Upstream("reviews-v1", "127.77.0.1").start()
    yield up
    await up.stop()


@pytest.fixture
async def bench(upstream):
    b = await Bench(Config(eps={(SERVICE, PORT): [upstream.endpoint()]})).start()
    yield b
    await b.stop()


async def test_keep_alive_reuses_one_upstream_connection(bench, upstream):
    responses = await bench.session([("GET", f"/r{i}?size=10", {}, None) for i in range(5)])
    assert [r.status for r in responses] == [200] * 5
    assert all(r.body == b"x" * 10 and r.headers["x-upstream"] == "reviews-v1" for r in responses)
    assert upstream.connections == 1 and len(upstream.seen) == 5
    seen = upstream.seen[0]
    assert seen.target == "/r0?size=10" and seen.headers["host"] == "reviews:9080"
    assert seen.headers["x-forwarded-proto"] == "https"  # the downstream was mutual TLS
    assert seen.headers["x-envoy-attempt-count"] == "1" and len(seen.headers["x-request-id"]) == 36
    assert len({s.headers["x-request-id"] for s in upstream.seen}) == 5
    # a second client connection still reuses the idle upstream connection
    assert (await bench.get("/again")).status == 200
    assert upstream.connections == 1
    assert bench.proxy.stats()["clusters"][f"outbound|{PORT}||reviews.bookinfo.svc.cluster.local"]["connections"] == 1


async def test_request_id_is_kept_and_hop_by_hop_headers_are_dropped(bench, upstream):
    r = await bench.get("/", headers={"x-request-id": "abc-123", "Connection": "keep-alive, x-secret",
                                      "x-secret": "1", "keep-alive": "timeout=5", "x-forwarded-proto": "http"})
    assert r.status == 200
    seen = upstream.seen[0].headers
    assert seen["x-request-id"] == "abc-123" and seen["x-forwarded-proto"] == "http"
    assert "x-secret" not in seen and "keep-alive" not in seen and "connection" not in seen
    assert bench.logs()[0]["request_id"] == "abc-123"


async def test_pipelined_requests_are_answered_in_order(bench, upstream):
    data = b"".join(b"GET /p%d?size=%d HTTP/1.1\r\nHost: reviews\r\n\r\n" % (i, i + 1) for i in range(3))
    data += b"GET /last?size=4 HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n"
    responses = split_responses(await bench.raw(data), [b"GET"] * 4)
    assert [(s, b) for s, _, b in responses] == [(200, b"x"), (200, b"xx"), (200, b"xxx"), (200, b"xxxx")]
    assert responses[-1][1]["connection"] == "close"
    assert [s.target for s in upstream.seen] == ["/p0?size=1", "/p1?size=2", "/p2?size=3", "/last?size=4"]
    assert upstream.connections == 1


async def test_chunked_request_and_response_stay_chunked(bench, upstream):
    r = await bench.get("/c?chunked=1&size=3000", method="POST", body=iter([b"hello ", b"chunked ", b"world"]))
    assert r.status == 200 and r.headers["transfer-encoding"] == "chunked" and r.body == b"x" * 3000
    seen = upstream.seen[0]
    assert seen.body == b"hello chunked world" and seen.headers["transfer-encoding"] == "chunked"
    log = bench.logs()[0]
    assert log["bytes_received"] == 19 and log["bytes_sent"] == 3000


async def test_large_bodies_stream_both_ways(bench, upstream):
    body = bytes(range(256)) * 4096  # 1 MiB: beyond the retry buffer, so streamed
    r = await bench.get("/big?size=4000000", method="PUT", body=body)
    assert r.status == 200 and len(r.body) == 4_000_000 and r.headers["content-length"] == "4000000"
    assert upstream.seen[0].body == body
    chunked = await bench.get("/big?size=3000000&chunked=1", method="POST", body=iter([body, body]))
    assert chunked.status == 200 and len(chunked.body) == 3_000_000
    assert upstream.seen[1].body == body + body


async def test_a_streamed_body_is_not_retried(upstream):
    upstream.always = 503
    config = Config(eps={(SERVICE, PORT): [upstream.endpoint()]})
    b = await Bench(config).start()
    try:
        small = await b.get("/small", method="POST", body=b"x" * 1000)
        big = await b.get("/big", method="POST", body=b"x" * 200_000)
    finally:
        await b.stop()
    assert small.status == 503 and big.status == 503
    # Istio's default retry policy retries 503 twice: the small body three times, the streamed one once
    assert [len(s.body) for s in upstream.seen] == [1000, 1000, 1000, 200_000]
    assert b.logs()[0]["response_flags"] == "URX" and b.logs()[1]["attempts"] == 1


async def test_close_delimited_response_is_chunked_for_http11_and_raw_for_http10(bench, upstream):
    r = await bench.get("/e?eof=1&size=5000")
    assert r.status == 200 and r.body == b"x" * 5000 and r.headers["transfer-encoding"] == "chunked"
    raw = await bench.raw(b"GET /e?eof=1&size=7 HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(b"\r\n\r\nxxxxxxx")
    assert b"connection: close" in raw.lower()


async def test_http10_keep_alive_and_head_and_204(bench, upstream):
    data = (b"GET /a?size=3 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
            b"HEAD /h?size=50 HTTP/1.1\r\nHost: r\r\n\r\n"
            b"GET /n?status=204&size=0 HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n")
    raw = await bench.raw(data)
    responses = split_responses(raw, [b"GET", b"HEAD", b"GET"])
    assert [(s, b) for s, _, b in responses] == [(200, b"xxx"), (200, b""), (204, b"")]
    assert responses[0][1]["connection"] == "keep-alive" and responses[1][1]["content-length"] == "50"
    assert [s.method for s in upstream.seen] == ["GET", "HEAD", "GET"]


async def test_connection_close_from_either_side(bench, upstream):
    r = await bench.get("/x?close=1")
    assert r.status == 200 and "connection" not in r.headers  # the upstream's close is its own business
    responses = await bench.session([("GET", "/y", {}, None), ("GET", "/z", {}, None)])
    assert [r.status for r in responses] == [200, 200]
    assert upstream.connections == 2  # the first upstream connection was closed after /x
    raw = await bench.raw(b"GET /q HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\n\r\n")
    assert raw.count(b"HTTP/1.1 200") == 1 and b"connection: close" in raw.lower()
    assert "/never" not in [s.target for s in upstream.seen]


async def test_expect_100_continue_is_answered_by_the_proxy(bench, upstream):
    reader, writer = await asyncio.open_connection("127.0.0.1", bench.port)
    writer.write(b"POST /up HTTP/1.1\r\nHost: r\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200") and upstream.seen[0].body == b"hello"
    assert "expect" not in upstream.seen[0].headers


@pytest.mark.parametrize("request_bytes, status, words", [
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, b"more than one Host"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400, b"smuggling"),
    (b"BAD REQUEST LINE\r\n\r\n", 400, b"malformed request line"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431, b"larger than"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n\r\n", 413, b"larger than 1000000"),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, b"not supported"),
])
async def test_bad_input_gets_the_parsers_status_and_a_close(upstream, request_bytes, status, words):
    b = await Bench(Config(eps={(SERVICE, PORT): [upstream.endpoint()]}), max_request_body=1_000_000).start()
    try:
        raw = await b.raw(request_bytes)
    finally:
        await b.stop()
    assert raw.startswith(b"HTTP/1.1 %d " % status) and words in raw and b"connection: close" in raw.lower()
    assert upstream.seen == []
    assert b.logs()[0]["response_flags"] == "DPE" and b.logs()[0]["response_code"] == status


async def test_upstream_connect_failure_is_503_uf():
    endpoint = {"address": "127.0.0.1", "port": closed_port(), "workload": "gone-v1", "namespace": "bookinfo"}
    b = await Bench(Config(eps={(SERVICE, PORT): [endpoint]})).start()
    try:
        r = await b.get("/")
    finally:
        await b.stop()
    assert r.status == 503 and r.body.startswith(
        b"upstream connect error or disconnect/reset before headers. retried and the latest reset reason: "
        b"connection failure")
    log = b.logs()[0]
    assert log["response_flags"] == "UF,URX" and log["attempts"] == 3  # Istio's default: 2 retries on connect-failure


async def test_connector_errors_carry_their_flag(upstream):
    async def refuse(endpoint, service, downstream):
        raise UpstreamConnectError("UF", "HBONE tunnel refused: 401 denied by policy")

    b = await Bench(Config(eps={(SERVICE, PORT): [upstream.endpoint()]}), connector=refuse).start()
    try:
        r = await b.get("/")
    finally:
        await b.stop()
    assert r.status == 503 and b"HBONE tunnel refused: 401 denied by policy" in r.body


async def test_reused_connection_closed_by_upstream_is_retried_on_a_fresh_one(upstream):
    upstream.drop_second = True
    routes = {SERVICE: {"service": SERVICE, "source": None, "routes": [
        {"name": "no-retries", "matches": [], "destinations": [{"service": SERVICE, "weight": 100}],
         "retries": {"attempts": 0}}]}}
    from agents.l7.routing import RouteTables
    b = await Bench(Config(routes=RouteTables(routes), eps={(SERVICE, PORT): [upstream.endpoint()]})).start()
    try:
        responses = await b.session([("GET", "/one", {}, None), ("GET", "/two", {}, None)])
    finally:
        await b.stop()
    assert [r.status for r in responses] == [200, 200]
    assert upstream.connections == 2 and [s.target for s in upstream.seen] == ["/one", "/two", "/two"]
    assert b.logs()[1]["attempts"] == 1  # not a retry: the same try on a fresh connection


async def test_sidecar_inbound_sends_everything_to_the_local_workload(upstream):
    from agents.ztunnel.telemetry import Peer
    config = Config(eps={(SERVICE, PORT): [upstream.endpoint()]})
    b = Bench(config, reporter="destination", principal=None, route=False)
    b.destination = Peer("reviews-v1", "bookinfo", "reviews", "v1", "reviews", "v1")
    await b.start()
    try:
        responses = await b.session([("GET", "/anything", {}, None), ("DELETE", "/else?status=500", {}, None)])
    finally:
        await b.stop()
    assert [r.status for r in responses] == [200, 500]
    assert len(upstream.seen) == 2  # no retries inbound
    assert upstream.seen[0].headers["x-forwarded-proto"] == "http"
    log = b.logs()[1]
    assert log["reporter"] == "destination" and log["upstream_cluster"] == f"inbound|{PORT}||"
    assert log["destination"]["workload"] == "reviews-v1" and log["source"]["principal"] is None


async def test_no_config_and_connect_method(upstream):
    b = Bench(Config())
    b.proxy.config = lambda: None
    await b.start()
    try:
        r = await b.get("/")
        b.proxy.config = lambda: b.config
        raw = await b.raw(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
    finally:
        await b.stop()
    assert r.status == 503 and b.logs()[0]["response_flags"] == "NC"
    assert raw.startswith(b"HTTP/1.1 405 ")
