"""The mesh resolver's decisions and its HTTP surface, without sockets: table-driven."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agents.common.admin_http import Reply, format_reply, route
from agents.common.http_head import BadRequest, parse_request_head
from agents.node.resolver import Answer, NoReadyEndpoint, ResolveError, Resolver, UnknownService
from agents.node.resolver_server import ResolverServer


def service(name: str, namespace: str, ports: list[tuple[int, int]], *addresses: str,
            **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": namespace,
            "ports": [{"name": f"p{p}", "port": p, "targetPort": t, "protocol": "http"} for p, t in ports],
            "endpoints": [{"workload": f"{name}-{i}", "node": "node-1", "address": a, "labels": {}}
                          for i, a in enumerate(addresses)], **extra}


TABLE = {"services": [
    service("details", "bookinfo", [(9080, 9080)], "127.101.2.10"),
    service("reviews", "bookinfo", [(9080, 19080), (9443, 19443)], "127.101.1.10", "127.101.2.11", "127.101.3.10"),
    service("echo", "bookinfo", [(80, 8080)], "127.101.1.20"),
    service("echo", "tools", [(80, 8081)], "127.101.3.20"),
    service("ratings", "bookinfo", [(9080, 9080)]),
    {"name": "old", "namespace": "bookinfo", "ports": [{"port": 7000}],
     "endpoints": [{"workload": "old-1", "address": "127.101.1.30", "ready": False}]},
]}

CASES = [
    # (service, port, caller namespace) -> (address, port) or error type
    (("details", 9080, None), ("127.101.2.10", 9080)),
    (("details", 9080, "tools"), ("127.101.2.10", 9080)),  # not in tools: the only one of that name
    (("details.bookinfo", 9080, None), ("127.101.2.10", 9080)),
    (("details.bookinfo.svc", 9080, None), ("127.101.2.10", 9080)),
    (("details.bookinfo.svc.cluster.local", 9080, None), ("127.101.2.10", 9080)),
    (("details.bookinfo.svc.lab.example", 9080, None), ("127.101.2.10", 9080)),
    (("details.bookinfo.svc.cluster.local.", 9080, None), ("127.101.2.10", 9080)),
    (("details", None, None), ("127.101.2.10", 9080)),  # one port: no need to name it
    (("reviews", 9443, "bookinfo"), ("127.101.1.10", 19443)),  # targetPort
    (("echo", 80, "bookinfo"), ("127.101.1.20", 8080)),  # own namespace first
    (("echo", 80, "tools"), ("127.101.3.20", 8081)),
    (("echo.tools", 80, "bookinfo"), ("127.101.3.20", 8081)),
    (("echo", 80, None), UnknownService),  # ambiguous
    (("echo", 80, "elsewhere"), UnknownService),  # ambiguous
    (("nope", 80, None), UnknownService),
    (("details.tools", 9080, None), UnknownService),
    (("details.bookinfo.cluster", 9080, None), UnknownService),  # not an FQDN form
    (("a.b.c.d", 9080, None), UnknownService),
    (("details", 9999, None), UnknownService),  # unknown port
    (("reviews", None, None), ResolveError),  # two ports: which one?
    (("ratings", 9080, None), NoReadyEndpoint),  # no endpoint at all
    (("old", 7000, None), NoReadyEndpoint),  # no ready endpoint
]


@pytest.mark.parametrize(("question", "expected"), CASES, ids=[f"{q[0]}:{q[1]}@{q[2]}" for q, _ in CASES])
def test_resolve(question: tuple[str, int | None, str | None], expected: Any) -> None:
    resolver = Resolver(TABLE)
    if isinstance(expected, tuple):
        found = resolver.resolve(*question)
        assert (found.address, found.port, found.via) == (*expected, "direct")
    else:
        with pytest.raises(expected) as info:
            resolver.resolve(*question)
        assert type(info.value) is expected


@pytest.mark.parametrize(("error", "status"), [(ResolveError, 400), (UnknownService, 404), (NoReadyEndpoint, 503)])
def test_errors_carry_the_status_to_answer_with(error: type[ResolveError], status: int) -> None:
    assert error.status == status


def test_round_robin_per_service_and_port() -> None:
    resolver = Resolver(TABLE)
    picks = [resolver.resolve("reviews", 9080, "bookinfo").workload for _ in range(4)]
    assert picks == ["reviews-0", "reviews-1", "reviews-2", "reviews-0"]
    # Another port of the same service keeps its own turn; other names of the same service share it.
    assert resolver.resolve("reviews", 9443, "bookinfo").workload == "reviews-0"
    assert resolver.resolve("reviews.bookinfo.svc.cluster.local", 9080).workload == "reviews-1"


def test_round_robin_skips_endpoints_that_are_not_ready() -> None:
    table = {"services": [service("s", "ns", [(80, 80)], "127.0.0.1", "127.0.0.2")]}
    table["services"][0]["endpoints"][0]["ready"] = False
    resolver = Resolver(table)
    assert {resolver.resolve("s", 80).address for _ in range(3)} == {"127.0.0.2"}


def test_answer_json_is_the_protocol_answer() -> None:
    assert Answer("127.101.2.10", 9080, "direct", "details-v1").to_json() == {
        "address": "127.101.2.10", "port": 9080, "via": "direct", "workload": "details-v1"}


def test_empty_resolver_knows_nothing() -> None:
    with pytest.raises(UnknownService, match="unknown service 'details'"):
        Resolver().resolve("details", 9080)


# -- the HTTP surface ----------------------------------------------------------

HTTP_CASES = [
    ("/resolve?service=details&port=9080", 200, {"address": "127.101.2.10", "port": 9080, "via": "direct",
                                                 "workload": "details-0"}),
    ("/resolve?service=echo&port=80&namespace=tools", 200, {"address": "127.101.3.20", "port": 8081,
                                                            "via": "direct", "workload": "echo-0"}),
    ("/resolve?service=nope&port=9080", 404, {"error": "unknown service 'nope'"}),
    ("/resolve?service=ratings&port=9080", 503, {"error": "no ready endpoint for ratings:9080"}),
    ("/resolve?port=9080", 400, {"error": "missing query parameter 'service'"}),
    ("/resolve?service=details&port=http", 400, {"error": "bad port 'http'"}),
    ("/table", 200, TABLE),
    ("/", 404, None),
]


@pytest.mark.parametrize(("target", "status", "body"), HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_http_answer(target: str, status: int, body: Any) -> None:
    reply = route(ResolverServer(lambda: Resolver(TABLE)).routes, "GET", target)
    assert reply.status == status
    if body is not None:
        assert json.loads(reply.body) == body


def test_http_only_get() -> None:
    assert route(ResolverServer(lambda: Resolver(TABLE)).routes, "POST", "/resolve?service=details").status == 405


def test_a_pushed_table_applies_to_the_next_request() -> None:
    current = [Resolver(TABLE)]
    server = ResolverServer(lambda: current[0])
    assert route(server.routes, "GET", "/resolve?service=details&port=9080").status == 200
    current[0] = Resolver({"services": []})
    assert route(server.routes, "GET", "/resolve?service=details&port=9080").status == 404


@pytest.mark.parametrize(("head", "keep_alive"), [
    (b"GET / HTTP/1.1\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", True),
])
def test_keep_alive(head: bytes, keep_alive: bool) -> None:
    assert parse_request_head(head).keep_alive is keep_alive


@pytest.mark.parametrize("head", [b"GET /\r\n\r\n", b"HELLO\r\n\r\n", b"GET / SPDY/3\r\n\r\n",
                                  b"GET / HTTP/1.1\r\nno colon\r\n\r\n", b"GET / HTTP/1.1\r\n Folded: x\r\n\r\n"])
def test_malformed_request_heads_are_the_clients_fault(head: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_request_head(head)


def test_response_format() -> None:
    raw = format_reply(Reply.json({"error": "x"}, 404), keep_alive=False)
    head, body = raw.split(b"\r\n\r\n")
    assert head.split(b"\r\n") == [b"HTTP/1.1 404 Not Found", b"Content-Type: application/json",
                                   f"Content-Length: {len(body)}".encode(), b"Connection: close"]
    assert json.loads(body) == {"error": "x"}


AMBIENT_TABLE = {
    "namespaces": {"shop": {"mode": "ambient"}, "legacy": {"mode": "none"}},
    "services": [{"name": "web", "namespace": "shop", "vip": "127.9.129.1",
                  "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                  "endpoints": [{"workload": "web-v1", "address": "127.9.1.10", "mode": "ambient",
                                 "inboundCapture": "127.9.129.100"}]},
                 {"name": "old", "namespace": "legacy", "vip": "127.9.129.2",
                  "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                  "endpoints": [{"workload": "old-v1", "address": "127.9.1.11", "mode": "none",
                                 "inboundCapture": None}]}],
}


@pytest.mark.parametrize("service, caller, expected", [
    ("web.shop", "shop", ("127.9.129.1", 80, "ztunnel")),  # ambient caller: its node's VIP, service port
    ("old.legacy", "shop", ("127.9.129.2", 80, "ztunnel")),  # even to a destination outside the mesh
    ("web.shop", "legacy", ("127.9.129.100", 8080, "ztunnel-inbound")),  # plaintext caller to an ambient workload
    ("web.shop", None, ("127.9.129.100", 8080, "ztunnel-inbound")),
    ("old.legacy", "legacy", ("127.9.1.11", 8080, "direct")),  # neither side in the mesh
])
def test_ambient_answers(service: str, caller: str | None, expected: tuple[str, int, str]) -> None:
    answer = Resolver(AMBIENT_TABLE).resolve(service, 80, caller)
    assert (answer.address, answer.port, answer.via) == expected
