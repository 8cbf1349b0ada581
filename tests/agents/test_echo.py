"""The fortio-style echo server: the probability syntax (pure) and a few live requests."""

from __future__ import annotations

import http.client
import json
import random
import time

import pytest

from agents.common.http import request
from agents.demo.echo import (
    Echo,
    filler,
    parse_delay,
    parse_distribution,
    parse_size,
    parse_status,
    pick,
    plan_for,
)
from tests.agents import running


@pytest.mark.parametrize(
    "spec, parser, expected",
    [
        ("150ms", parse_delay, [(0.15, 100.0)]),
        ("150ms:10,2s:5", parse_delay, [(0.15, 10.0), (2.0, 5.0)]),
        ("1.5s:0.5", parse_delay, [(1.5, 0.5)]),
        ("500us:100", parse_delay, [(0.0005, 100.0)]),
        ("503:5,429:1", parse_status, [(503, 5.0), (429, 1.0)]),
        ("503", parse_status, [(503, 100.0)]),
        ("1024", parse_size, [(1024, 100.0)]),
        ("1024:50, 10:50", parse_size, [(1024, 50.0), (10, 50.0)]),
    ],
)
def test_parse_distribution(spec, parser, expected):
    entries = parse_distribution(spec, parser)
    assert [(pytest.approx(v), p) for v, p in entries] == expected


@pytest.mark.parametrize(
    "spec, parser, message",
    [
        ("", parse_delay, "empty"),
        ("1s,", parse_delay, "empty"),
        ("1s:101", parse_delay, "over 100"),
        ("1s:60,2s:50", parse_delay, "add up"),
        ("1s,2s", parse_delay, "add up"),
        ("1s:x", parse_delay, "percentage"),
        ("1s:-5", parse_delay, "percentage"),
        ("soon", parse_delay, "duration"),
        ("90s", parse_delay, "maximum"),
        ("99:5", parse_status, "status"),
        ("600", parse_status, "status"),
        ("abc", parse_size, "size"),
        ("999999999999", parse_size, "size"),
    ],
)
def test_parse_distribution_rejects(spec, parser, message):
    with pytest.raises(ValueError, match=message):
        parse_distribution(spec, parser)


@pytest.mark.parametrize(
    "draw, expected",
    [(0.0, "a"), (9.99, "a"), (10.0, "b"), (14.99, "b"), (15.0, None), (99.99, None)],
)
def test_one_draw_picks_along_the_cumulative_percentages(draw, expected):
    assert pick([("a", 10.0), ("b", 5.0)], draw) == expected


def test_hundred_percent_always_picks():
    assert all(pick([(7, 100.0)], d) == 7 for d in (0.0, 50.0, 99.999))


class FixedDraw(random.Random):
    """An rng whose uniform() always draws the same value."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def uniform(self, a: float, b: float) -> float:
        return self.value


def test_plan_for_combines_parameters():
    query = {"delay": "150ms:10,2s:5", "status": "503:50", "size": "100"}
    plan = plan_for(query, FixedDraw(12.0))
    assert (plan.delay_s, plan.status, plan.size) == (2.0, 503, 100)
    plan = plan_for(query, FixedDraw(60.0))
    assert (plan.delay_s, plan.status, plan.size) == (0.0, 200, 100)


def test_filler_has_the_exact_size():
    assert [len(filler(n)) for n in (0, 1, 57, 58, 5000)] == [0, 1, 57, 58, 5000]


# ---------------------------------------------------------------- live


IDENTITY = {"workload": "echo-v1", "version": "v1", "namespace": "demo"}


@pytest.fixture
def echo():
    with running(Echo(dict(IDENTITY), random.Random(7))) as server:
        yield server


def get(server, path, **kwargs):
    return request("127.0.0.1", server.port, path, **kwargs)


def test_get_echoes_who_answered(echo):
    status, headers, body = get(echo, "/any/path?x=1")
    assert status == 200
    assert body.startswith(b"echo GET /any/path?x=1") and b"workload=echo-v1" in body
    assert headers["x-meshlab-workload"] == "echo-v1" and headers["x-meshlab-version"] == "v1"


def test_status_and_size(echo):
    status, headers, body = get(echo, "/?status=503&size=1000")
    assert status == 503 and len(body) == 1000 and headers["content-length"] == "1000"


def test_delay(echo):
    started = time.monotonic()
    status, _, _ = get(echo, "/?delay=200ms")
    assert status == 200 and time.monotonic() - started >= 0.2


def test_headers_are_returned_as_json(echo):
    for path in ("/headers", "/echo/headers"):
        status, _, body = get(echo, path, headers={"end-user": "jason", "X-Trace": "abc"})
        received = json.loads(body)
        assert status == 200 and received["end-user"] == "jason" and received["x-trace"] == "abc"


def test_post_echoes_the_body(echo):
    status, headers, body = get(echo, "/", method="POST", body=b'{"a": 1}', headers={"Content-Type": "application/json"})
    assert status == 200 and body == b'{"a": 1}' and headers["content-type"] == "application/json"


def test_bad_query_is_a_400_not_a_crash(echo):
    status, _, body = get(echo, "/?status=7")
    assert status == 400 and b"bad status" in body
    assert get(echo, "/")[0] == 200


def test_status_probability_roughly_holds(echo):
    codes = [get(echo, "/?status=503:30")[0] for _ in range(200)]
    assert 30 <= codes.count(503) <= 90 and codes.count(200) == 200 - codes.count(503)


def test_keep_alive_and_chunked_request_body(echo):
    conn = http.client.HTTPConnection("127.0.0.1", echo.port, timeout=5)
    try:
        for i in range(3):
            conn.request("GET", f"/?size={i * 10}")
            response = conn.getresponse()
            assert response.status == 200 and len(response.read()) == i * 10
        conn.request("POST", "/", body=iter([b"hel", b"lo"]), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        assert response.read() == b"hello"
        conn.request("HEAD", "/?size=42")
        response = conn.getresponse()
        assert response.getheader("Content-Length") == "42" and response.read() == b""
        conn.request("GET", "/headers")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
