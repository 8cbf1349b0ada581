"""Route selection (agents.l7.routing) and retry decisions (agents.l7.retry), table-driven."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from agents.l7.http1 import Parser
from agents.l7.retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy, retry_policy
from agents.l7.routing import (
    Fault,
    HeaderMutation,
    RequestInfo,
    RouteTables,
    default_table,
    select_route,
)


def table(*routes: dict) -> dict:
    return {"service": "reviews.bookinfo", "source": "VirtualService bookinfo/reviews", "routes": list(routes)}


def to(subset: str | None = None, weight: int = 100, service: str = "reviews.bookinfo", **extra) -> dict:
    return {"service": service, "subset": subset, "port": None, "weight": weight, **extra}


def route(*matches: dict, name: str | None = None, **fields) -> dict:
    return {"name": name, "matches": list(matches), "destinations": [to(name)], **fields}


def req(path: str = "/", method: str = "GET", headers: tuple = (), query: str = "", authority: str = "reviews:9080",
        port: int | None = 9080) -> RequestInfo:
    return RequestInfo(method, path, query, headers, authority, port)


# Routes named after the subset they send to; each row: (match, request, routed?).
MATCHES = [
    ("uri-exact", {"uri": {"exact": "/productpage"}}, req("/productpage"), True),
    ("uri-exact-other", {"uri": {"exact": "/productpage"}}, req("/productpage/1"), False),
    ("uri-exact-case", {"uri": {"exact": "/ProductPage"}}, req("/productpage"), False),
    ("uri-exact-ignore-case", {"uri": {"exact": "/ProductPage"}, "ignoreUriCase": True}, req("/productPAGE"), True),
    ("uri-prefix", {"uri": {"prefix": "/api/v1"}}, req("/api/v1/products"), True),
    ("uri-prefix-is-plain-text", {"uri": {"prefix": "/api"}}, req("/apiary"), True),
    ("uri-prefix-miss", {"uri": {"prefix": "/api"}}, req("/static/api"), False),
    ("uri-prefix-ignore-case", {"uri": {"prefix": "/API"}, "ignoreUriCase": True}, req("/api/x"), True),
    ("uri-regex-full", {"uri": {"regex": "/reviews/[0-9]+"}}, req("/reviews/42"), True),
    ("uri-regex-not-partial", {"uri": {"regex": "/reviews/[0-9]+"}}, req("/reviews/42/x"), False),
    ("path-prefix-segments", {"uri": {"pathPrefix": "/api"}}, req("/api/v1"), True),
    ("path-prefix-whole", {"uri": {"pathPrefix": "/api"}}, req("/api"), True),
    ("path-prefix-not-partial-segment", {"uri": {"pathPrefix": "/api"}}, req("/apiary"), False),
    ("path-prefix-slash", {"uri": {"pathPrefix": "/"}}, req("/anything"), True),
    ("query-not-in-path", {"uri": {"exact": "/p"}}, req("/p", query="u=1"), True),
    ("header-exact", {"headers": {"end-user": {"exact": "jason"}}}, req(headers=(("End-User", "jason"),)), True),
    ("header-exact-other", {"headers": {"end-user": {"exact": "jason"}}}, req(headers=(("end-user", "json"),)),
     False),
    ("header-absent", {"headers": {"end-user": {"exact": "jason"}}}, req(), False),
    ("header-prefix", {"headers": {"user-agent": {"prefix": "curl/"}}}, req(headers=(("User-Agent", "curl/8"),)),
     True),
    ("header-regex", {"headers": {"x-v": {"regex": "v[12]"}}}, req(headers=(("x-v", "v2"),)), True),
    ("header-regex-full", {"headers": {"x-v": {"regex": "v[12]"}}}, req(headers=(("x-v", "v23"),)), False),
    ("header-present", {"headers": {"x-debug": {"present": True}}}, req(headers=(("X-Debug", ""),)), True),
    ("header-repeated-joined", {"headers": {"x-a": {"exact": "1,2"}}}, req(headers=(("x-a", "1"), ("X-A", "2"))),
     True),
    ("without-header-absent", {"withoutHeaders": {"x-canary": {"present": True}}}, req(), True),
    ("without-header-present", {"withoutHeaders": {"x-canary": {"present": True}}},
     req(headers=(("x-canary", "1"),)), False),
    ("without-header-other-value", {"withoutHeaders": {"x-canary": {"exact": "yes"}}},
     req(headers=(("x-canary", "no"),)), True),
    ("method-exact", {"method": {"exact": "POST"}}, req(method="POST"), True),
    ("method-miss", {"method": {"exact": "POST"}}, req(method="GET"), False),
    ("method-regex", {"method": {"regex": "GET|HEAD"}}, req(method="HEAD"), True),
    ("query-exact", {"queryParams": {"u": {"exact": "normal"}}}, req(query="u=normal&x=1"), True),
    ("query-decoded", {"queryParams": {"q": {"exact": "a b"}}}, req(query="q=a%20b"), True),
    ("query-first-value", {"queryParams": {"u": {"exact": "a"}}}, req(query="u=a&u=b"), True),
    ("query-regex", {"queryParams": {"id": {"regex": "[0-9]+"}}}, req(query="id=12"), True),
    ("query-absent", {"queryParams": {"u": {"exact": "normal"}}}, req(), False),
    ("authority-prefix", {"authority": {"prefix": "reviews"}}, req(authority="reviews.bookinfo:9080"), True),
    ("port", {"port": 9080}, req(port=9080), True),
    ("port-other", {"port": 9081}, req(port=9080), False),
    ("fields-are-anded", {"uri": {"prefix": "/api"}, "method": {"exact": "POST"}}, req("/api", method="GET"), False),
    ("fields-are-anded-ok", {"uri": {"prefix": "/api"}, "method": {"exact": "POST"}}, req("/api", method="POST"),
     True),
]


@pytest.mark.parametrize("match, request_, routed", [c[1:] for c in MATCHES], ids=[c[0] for c in MATCHES])
def test_matches(match, request_, routed):
    decision = select_route(table(route(match, name="m")), request_)
    assert (decision.subset == "m") is routed
    if not routed:
        assert decision.direct_response == 404 and decision.response_flag == "NR" and decision.service is None


def test_matches_are_ored_and_the_first_matching_route_wins():
    routes = table(route({"uri": {"prefix": "/usrv"}}, name="first"),
                   route({"uri": {"prefix": "/usrv-expand"}}, name="never"),
                   route({"headers": {"end-user": {"exact": "jason"}}}, {"uri": {"exact": "/login"}}, name="either"),
                   route(name="catch-all"))
    assert select_route(routes, req("/usrv-expand/x")).subset == "first"  # order, not longest prefix
    assert select_route(routes, req("/login")).subset == "either"
    assert select_route(routes, req("/", headers=(("end-user", "jason"),))).subset == "either"
    assert select_route(routes, req("/other")).subset == "catch-all"
    assert select_route(routes, req("/other")).route_name == "catch-all"


def test_default_route_goes_to_the_service_with_istio_defaults():
    decision = select_route(default_table("details.bookinfo"), req("/details/0", query="x=1"))
    assert (decision.service, decision.subset, decision.port) == ("details.bookinfo", None, None)
    assert decision.timeout is None and decision.retry == DEFAULT_RETRY and decision.fault is None
    assert decision.path == "/details/0?x=1" and decision.source is None
    assert DEFAULT_RETRY.attempts == 2 and DEFAULT_RETRY.retry_on == {
        "connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"}
    assert DEFAULT_RETRY.retriable_status_codes == {503}
    tables = RouteTables({"reviews.bookinfo": table(route(name="v1"))})
    assert tables.for_service("reviews.bookinfo")["source"] == "VirtualService bookinfo/reviews"
    assert tables.for_service("ratings.bookinfo") == default_table("ratings.bookinfo")


@pytest.mark.parametrize("weights, expected", [((50, 50), (0.5, 0.5)), ((90, 10), (0.9, 0.1)),
                                               ((20, 30, 50), (0.2, 0.3, 0.5)), ((1, 3), (0.25, 0.75)),
                                               ((0, 100), (0.0, 1.0))])
def test_weights_split_traffic_within_two_percent(weights, expected):
    routes = table({"name": None, "matches": [],
                    "destinations": [to(f"v{i}", w) for i, w in enumerate(weights)]})
    rng = random.Random(1234)
    counts = Counter(select_route(routes, req(), rng).subset for _ in range(10_000))
    for i, share in enumerate(expected):
        assert abs(counts[f"v{i}"] / 10_000 - share) <= 0.02, counts


def test_request_info_from_a_parsed_head():
    [head, _] = Parser().events(b"GET /reviews/1?u=jason HTTP/1.1\r\nHost: reviews:9080\r\nEnd-User: jason\r\n\r\n")
    info = RequestInfo.from_head(head, port=9080)
    assert info == RequestInfo("GET", "/reviews/1", "u=jason", (("Host", "reviews:9080"), ("End-User", "jason")),
                               "reviews:9080", 9080)


def test_weighted_choice_is_repeatable_with_a_seeded_rng():
    routes = table({"name": None, "matches": [], "destinations": [to("v1", 50), to("v3", 50)]})
    first = [select_route(routes, req(), random.Random(7)).subset for _ in range(3)]
    assert first == [select_route(routes, req(), random.Random(7)).subset for _ in range(3)]


def test_no_backend_with_weight_is_a_500():
    routes = table({"name": None, "matches": [], "destinations": [to("v1", 0)]})
    assert select_route(routes, req()).direct_response == 500
    assert select_route(table({"name": None, "matches": [], "destinations": []}), req()).direct_response == 500


@pytest.mark.parametrize("match, rewrite, path, expected", [
    ({"uri": {"prefix": "/api/v1"}}, {"uri": "/v2"}, "/api/v1/products", "/v2/products"),
    ({"uri": {"prefix": "/api"}}, {"uri": "/"}, "/api/products", "/products"),
    ({"uri": {"prefix": "/api"}}, {"uri": "/"}, "/api", "/"),
    ({"uri": {"pathPrefix": "/old"}}, {"uri": "/new"}, "/old/x", "/new/x"),
    ({"uri": {"exact": "/old"}}, {"uri": "/new/page"}, "/old", "/new/page"),
    ({"uri": {"regex": "/o.*"}}, {"uri": "/fixed"}, "/other", "/fixed"),
    ({"headers": {"x": {"present": True}}}, {"uri": "/whole"}, "/any/path", "/whole"),
])
def test_uri_rewrite(match, rewrite, path, expected):
    r = route(match, name="v1", rewrite=rewrite)
    decision = select_route(table(r), req(path, headers=(("x", "1"),), query="q=1"))
    assert decision.path == expected + "?q=1"


def test_authority_rewrite_and_header_mutations():
    r = route(name="v1", rewrite={"uri": None, "authority": "reviews-v1.bookinfo"},
              requestHeaders={"set": {"x-version": "v1"}, "add": {"x-trace": "b"}, "remove": ["x-drop"]},
              responseHeaders={"set": {"cache-control": "no-store"}, "add": {}, "remove": ["server"]})
    decision = select_route(table(r), req())
    assert decision.authority == "reviews-v1.bookinfo"
    headers = [("Host", "reviews"), ("X-Version", "old"), ("x-trace", "a"), ("X-Drop", "1")]
    assert decision.request_headers.apply(headers) == [("Host", "reviews"), ("x-trace", "a"), ("x-version", "v1"),
                                                       ("x-trace", "b")]
    assert decision.response_headers.apply([("Server", "envoy"), ("Cache-Control", "max-age=60")]) == [
        ("cache-control", "no-store")]
    combined = HeaderMutation(set=(("a", "1"),)).then(HeaderMutation(remove=("b",)))
    assert combined.apply([("b", "x")]) == [("a", "1")]


FAULTS = [  # (fault, expected decision fields for the seeded draws)
    ({"delay": {"fixedDelay": 7.0, "percentage": 100.0}, "abort": None}, Fault(7.0, None), None, "DI"),
    ({"delay": None, "abort": {"httpStatus": 500, "percentage": 100.0}}, Fault(0.0, 500), 500, "FI"),
    ({"delay": {"fixedDelay": 1.0, "percentage": 100.0}, "abort": {"httpStatus": 503, "percentage": 100.0}},
     Fault(1.0, 503), 503, "FI"),
    ({"delay": {"fixedDelay": 7.0, "percentage": 0.0}, "abort": None}, None, None, None),
]


@pytest.mark.parametrize("fault, expected, direct, flag", FAULTS)
def test_faults(fault, expected, direct, flag):
    decision = select_route(table(route(name="v1", fault=fault)), req(), random.Random(0))
    assert decision.fault == expected and decision.direct_response == direct and decision.response_flag == flag
    if direct is None:
        assert decision.subset == "v1"


def test_fault_percentage_is_statistical():
    r = route(name="v1", fault={"abort": {"httpStatus": 503, "percentage": 30.0}, "delay": None})
    rng = random.Random(99)
    aborted = sum(select_route(table(r), req(), rng).direct_response == 503 for _ in range(10_000))
    assert abs(aborted / 10_000 - 0.3) <= 0.02


def test_timeouts_and_retries_of_a_route():
    r = route(name="v2", timeout=0.5, retries={"attempts": 3, "perTryTimeout": 2.0, "retryOn": ["gateway-error"],
                                               "retriableStatusCodes": [], "backoff": 0.1})
    decision = select_route(table(r), req())
    assert decision.timeout == 0.5
    assert decision.retry == RetryPolicy(3, 2.0, frozenset({"gateway-error"}), frozenset(), 0.1)
    assert select_route(table(route(name="v1", retries={"attempts": 0})), req()).retry == NO_RETRY
    direct = {"name": "maintenance", "matches": [], "destinations": [], "directResponse": {"status": 503,
                                                                                           "body": "down"}}
    decision = select_route(table(direct), req())
    assert (decision.direct_response, decision.direct_body, decision.service) == (503, "down", None)


# --- retry conditions (Envoy's router semantics) -----------------------------------------------------------

RETRY_ON = [
    # (retryOn, codes, outcome, retried?)
    (["5xx"], [], {"status": 500}, True),
    (["5xx"], [], {"status": 404}, False),
    (["5xx"], [], {"error": "connect-failure"}, True),
    (["5xx"], [], {"error": "timeout"}, True),
    (["gateway-error"], [], {"status": 502}, True),
    (["gateway-error"], [], {"status": 500}, False),
    (["gateway-error"], [], {"error": "reset"}, True),
    (["reset"], [], {"error": "reset"}, True),
    (["reset"], [], {"status": 503}, False),
    (["connect-failure"], [], {"error": "connect-failure"}, True),
    (["connect-failure"], [], {"error": "reset"}, False),
    (["connect-failure"], [], {"status": 503}, False),
    (["refused-stream"], [], {"error": "refused-stream"}, True),
    (["retriable-4xx"], [], {"status": 409}, True),
    (["retriable-4xx"], [], {"status": 404}, False),
    (["retriable-status-codes"], [418], {"status": 418}, True),
    (["retriable-status-codes"], [418], {"status": 503}, False),
    (["unavailable"], [], {"status": 200, "grpc_status": "14"}, True),
    (["cancelled"], [], {"status": 200, "grpc_status": "14"}, False),
    (["connect-failure"], [], {"status": 200}, False),
]


@pytest.mark.parametrize("retry_on, codes, outcome, retried", RETRY_ON)
def test_retry_conditions(retry_on, codes, outcome, retried):
    policy = retry_policy({"attempts": 2, "retryOn": retry_on, "retriableStatusCodes": codes})
    assert policy.should_retry(**outcome) is retried


def test_istio_default_retries_503_and_connect_failures_only():
    assert DEFAULT_RETRY.should_retry(status=503) and DEFAULT_RETRY.should_retry(error="connect-failure")
    assert not DEFAULT_RETRY.should_retry(status=500) and not DEFAULT_RETRY.should_retry(error="reset")
    assert not NO_RETRY.should_retry(status=503)
    with pytest.raises(ValueError, match="unknown upstream error"):
        DEFAULT_RETRY.should_retry(error="eaten-by-a-grue")


def test_backoff_is_jittered_exponential_and_capped():
    rng = random.Random(3)
    policy = RetryPolicy(backoff=0.025)
    for retry, ceiling in [(1, 0.025), (2, 0.075), (3, 0.175), (10, 0.25)]:
        samples = [policy.backoff_delay(retry, rng) for _ in range(500)]
        assert 0 <= min(samples) and max(samples) <= ceiling and max(samples) > ceiling * 0.9
