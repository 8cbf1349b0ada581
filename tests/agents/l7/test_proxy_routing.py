"""The L7 engine's traffic management on loopback: subsets and weights, faults, timeouts, retries,
circuit breakers, outlier detection, authorization, and Istio YAML end to end."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from agents.l7.authz import PolicyTarget
from agents.l7.routing import Fault, RouteTables
from lab.meshconfig import parse_config, to_agent_json
from tests.agents.l7.harness import PORT, SERVICE, Bench, Config, Upstream

POOL = {"maxConnections": 4294967295, "connectTimeout": 10.0, "http1MaxPendingRequests": 4294967295,
        "http2MaxRequests": 4294967295, "maxRequestsPerConnection": 0, "maxRetries": 4294967295,
        "idleTimeout": 3600.0}


def policy(lb="ROUND_ROBIN", pool=None, outlier=None):
    return {"loadBalancer": lb, "connectionPool": {**POOL, **(pool or {})}, "outlierDetection": outlier}


def table(*routes):
    return RouteTables({SERVICE: {"service": SERVICE, "source": "VirtualService bookinfo/reviews",
                                  "routes": list(routes)}})


def route(name="r", matches=(), destinations=None, **extra):
    return {"name": name, "matches": list(matches),
            "destinations": destinations or [{"service": SERVICE, "weight": 100}], **extra}


@pytest.fixture
async def upstreams():
    ups = [await Upstream(f"reviews-v{i}", f"127.77.1.{i}").start() for i in (1, 2, 3)]
    yield ups
    for up in ups:
        await up.stop()


def endpoints(ups):
    return {(SERVICE, PORT): [up.endpoint(version=f"v{i}") for i, up in enumerate(ups, 1)]}


SUBSETS = {SERVICE: {"source": "DestinationRule bookinfo/reviews", "trafficPolicy": policy(),
                     "subsets": {f"v{i}": {"labels": {"version": f"v{i}"}, "trafficPolicy": policy()}
                                 for i in (1, 2, 3)}}}


async def test_header_match_routes_to_weighted_subsets(upstreams):
    routes = table(
        route("jason", [{"headers": {"end-user": {"exact": "jason"}}}],
              [{"service": SERVICE, "subset": "v2", "weight": 80}, {"service": SERVICE, "subset": "v3", "weight": 20}]),
        route("rest", [], [{"service": SERVICE, "subset": "v1", "weight": 100}]))
    b = await Bench(Config(routes=routes, destination_rules=SUBSETS, eps=endpoints(upstreams)), seed=11).start()
    try:
        jason = await b.session([("GET", f"/j{i}", {"end-user": "jason"}, None) for i in range(1000)])
        others = await b.session([("GET", "/o", {"end-user": "mary"}, None) for _ in range(50)])
    finally:
        await b.stop()
    counts = Counter(r.headers["x-upstream"] for r in jason)
    assert set(counts) == {"reviews-v2", "reviews-v3"} and sum(counts.values()) == 1000
    assert 760 <= counts["reviews-v2"] <= 840  # 80% with a seeded rng: the same count every run
    assert {r.headers["x-upstream"] for r in others} == {"reviews-v1"}
    log = b.logs()[0]
    assert log["route_name"] == "jason" and log["upstream_cluster"].startswith(f"outbound|{PORT}|v")
    # the same seed gives the same split
    b2 = await Bench(Config(routes=routes, destination_rules=SUBSETS, eps=endpoints(upstreams)), seed=11).start()
    try:
        again = await b2.session([("GET", f"/j{i}", {"end-user": "jason"}, None) for i in range(1000)])
    finally:
        await b2.stop()
    assert Counter(r.headers["x-upstream"] for r in again) == counts


async def test_unknown_subset_is_503_nc_and_no_route_is_404_nr(upstreams):
    routes = table(route("only-get", [{"method": {"exact": "GET"}}], [{"service": SERVICE, "subset": "v9",
                                                                        "weight": 100}]))
    b = await Bench(Config(routes=routes, destination_rules=SUBSETS, eps=endpoints(upstreams))).start()
    try:
        nc = await b.get("/")
        nr = await b.get("/", method="POST", body=b"abc")
    finally:
        await b.stop()
    assert (nc.status, nr.status) == (503, 404)
    assert [entry["response_flags"] for entry in b.logs()] == ["NC", "NR"]


async def test_no_endpoints_is_503_uh():
    b = await Bench(Config()).start()
    try:
        r = await b.get("/")
    finally:
        await b.stop()
    assert r.status == 503 and r.body == b"no healthy upstream" and b.logs()[0]["response_flags"] == "UH"


async def test_fault_abort_and_delay_set_their_flags(upstreams):
    routes = table(
        route("abort", [{"uri": {"prefix": "/abort"}}], fault={"abort": {"httpStatus": 418, "percentage": 100.0},
                                                               "delay": None}),
        route("delay", [{"uri": {"prefix": "/delay"}}], fault={"delay": {"fixedDelay": 0.2, "percentage": 100.0},
                                                               "abort": None}),
        route("both", [{"uri": {"prefix": "/both"}}], fault={"delay": {"fixedDelay": 0.1, "percentage": 100.0},
                                                             "abort": {"httpStatus": 503, "percentage": 100.0}}))
    b = await Bench(Config(routes=routes, eps=endpoints(upstreams[:1]))).start()
    try:
        aborted, delayed, both = [await b.get(p) for p in ("/abort", "/delay", "/both")]
    finally:
        await b.stop()
    assert (aborted.status, aborted.body) == (418, b"fault filter abort")
    assert delayed.status == 200 and both.status == 503
    logs = b.logs()
    assert [e["response_flags"] for e in logs] == ["FI", "DI", "DI,FI"]
    assert logs[1]["duration_ms"] >= 200  # the delay happened (a lower bound, not a performance figure)
    assert [s.target for s in upstreams[0].seen] == ["/delay"]


async def test_extra_fault_comes_before_the_route(upstreams):
    def lab_fault(info, downstream):
        return Fault(abort=502) if info.path == "/lab" else None

    b = await Bench(Config(eps=endpoints(upstreams[:1])), extra_fault=lab_fault).start()
    try:
        hit, miss = await b.get("/lab"), await b.get("/other")
    finally:
        await b.stop()
    assert (hit.status, miss.status) == (502, 200) and b.logs()[0]["response_flags"] == "FI"


async def test_route_timeout_is_504_ut(upstreams):
    routes = table(route("slow", timeout=0.2))
    b = await Bench(Config(routes=routes, eps=endpoints(upstreams[:1]))).start()
    try:
        r = await b.get("/?delay=3")
        fast = await b.get("/?delay=0")
    finally:
        await b.stop()
    assert (r.status, r.body) == (504, b"upstream request timeout") and fast.status == 200
    assert b.logs()[0]["response_flags"] == "UT"


async def test_per_try_timeout_moves_on_to_another_host(upstreams):
    upstreams[0].delay = 3.0
    retries = {"attempts": 2, "perTryTimeout": 0.2, "retryOn": ["5xx"], "retriableStatusCodes": [], "backoff": 0.01}
    routes = table(route("r", retries=retries))
    rules = {SERVICE: {"source": "DestinationRule bookinfo/reviews", "trafficPolicy": policy("ROUND_ROBIN"),
                       "subsets": {}}}
    b = await Bench(Config(routes=routes, destination_rules=rules, eps=endpoints(upstreams[:2]))).start()
    try:
        r = await b.get("/")
    finally:
        await b.stop()
    assert r.status == 200 and r.headers["x-upstream"] == "reviews-v2"
    assert b.logs()[0]["attempts"] == 2
    assert [s.headers["x-envoy-attempt-count"] for s in upstreams[0].seen + upstreams[1].seen] == ["1", "2"]


async def test_retries_recover_from_half_503s(upstreams):
    upstreams[0].flaky = True
    retries = {"attempts": 2, "perTryTimeout": None, "retryOn": ["5xx"], "retriableStatusCodes": [], "backoff": 0.005}
    b = await Bench(Config(routes=table(route("r", retries=retries)), eps=endpoints(upstreams[:1]))).start()
    try:
        responses = await b.session([("GET", f"/{i}", {}, None) for i in range(20)])
    finally:
        await b.stop()
    assert [r.status for r in responses] == [200] * 20
    assert len(upstreams[0].seen) == 40
    assert Counter(e["attempts"] for e in b.logs()) == {2: 20}


async def test_without_retries_half_fail(upstreams):
    upstreams[0].flaky = True
    b = await Bench(Config(routes=table(route("r", retries={"attempts": 0})), eps=endpoints(upstreams[:1]))).start()
    try:
        responses = await b.session([("GET", f"/{i}", {}, None) for i in range(10)])
    finally:
        await b.stop()
    assert Counter(r.status for r in responses) == {200: 5, 503: 5}


def cluster_stats(bench):
    return bench.proxy.stats()["clusters"].get(f"outbound|{PORT}||reviews.bookinfo.svc.cluster.local", {})


async def until(condition, limit=10.0):
    """Wait (bounded) until the proxy reaches a state."""
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.01)


async def test_max_connections_and_pending_overflow_is_503_uo(upstreams):
    rules = {SERVICE: {"source": "DestinationRule bookinfo/reviews", "subsets": {},
                       "trafficPolicy": policy(pool={"maxConnections": 1, "http1MaxPendingRequests": 1})}}
    b = await Bench(Config(routes=table(route("r", retries={"attempts": 0})), destination_rules=rules,
                           eps=endpoints(upstreams[:1]))).start()
    try:
        first = asyncio.create_task(b.get("/first?delay=1"))
        await until(lambda: cluster_stats(b).get("active") == 1)  # the first holds the one connection
        second = asyncio.create_task(b.get("/second"))
        await until(lambda: cluster_stats(b).get("pending") == 1)  # the second is the one pending request
        third = await b.get("/third")
        results = [await first, await second]
    finally:
        await b.stop()
    assert [r.status for r in results] == [200, 200]
    assert third.status == 503 and third.body == (
        b"upstream connect error or disconnect/reset before headers. reset reason: overflow")
    assert upstreams[0].connections == 1  # the pending request waited for the one connection
    flags = {e["path"]: e["response_flags"] for e in b.logs()}
    assert flags == {"/third": "UO", "/first?delay=1": "-", "/second": "-"}


async def test_outlier_detection_ejects_after_consecutive_5xx(upstreams):
    upstreams[0].always = 500
    outlier = {"consecutive5xxErrors": 2, "consecutiveGatewayErrors": 0, "interval": 1.0, "baseEjectionTime": 30.0,
               "maxEjectionPercent": 100, "minHealthPercent": 0}
    rules = {SERVICE: {"source": "DestinationRule bookinfo/reviews", "subsets": {},
                       "trafficPolicy": policy("ROUND_ROBIN", outlier=outlier)}}
    b = await Bench(Config(routes=table(route("r", retries={"attempts": 0})), destination_rules=rules,
                           eps=endpoints(upstreams[:2]))).start()
    try:
        responses = await b.session([("GET", f"/{i}", {}, None) for i in range(12)])
    finally:
        await b.stop()
    statuses = [r.status for r in responses]
    assert statuses.count(500) == 2 and len(upstreams[0].seen) == 2  # then the host was out of the pool
    assert statuses[-8:] == [200] * 8
    cluster = b.proxy.stats()["clusters"][f"outbound|{PORT}||reviews.bookinfo.svc.cluster.local"]
    assert cluster["ejected"] == ["127.77.1.1"]


async def test_authorization_denies_and_allows():
    upstream = await Upstream("reviews-v1", "127.77.2.1").start()
    allow_get = {"name": "reviews-get", "namespace": "bookinfo", "scope": "targetRefs", "selector": None,
                 "targetRefs": [{"kind": "Service", "name": "reviews"}], "action": "ALLOW",
                 "rules": [{"from": [{"principals": ["cluster.local/ns/bookinfo/sa/bookinfo-productpage"]}],
                            "to": [{"methods": ["GET"], "paths": ["/reviews/*"]}], "when": []}]}
    target = PolicyTarget("bookinfo", waypoint="waypoint", service="reviews", service_namespace="bookinfo")
    config = Config(policies=[allow_get], target=target, eps={(SERVICE, PORT): [upstream.endpoint()]})
    b = await Bench(config).start()
    other = await Bench(config, principal="spiffe://cluster.local/ns/other/sa/default").start()
    try:
        allowed = await b.get("/reviews/1")
        sneaky = await b.get("/reviews/../admin")  # normalized to /admin before matching
        wrong_method = await b.get("/reviews/1", method="DELETE")
        stranger = await other.get("/reviews/1")
    finally:
        await b.stop()
        await other.stop()
        await upstream.stop()
    assert allowed.status == 200
    for denied in (sneaky, wrong_method, stranger):
        assert (denied.status, denied.body) == (403, b"RBAC: access denied")
    assert [e["response_flags"] for e in b.logs()] == ["-", "RBAC", "RBAC"]
    assert [s.target for s in upstream.seen] == ["/reviews/1"]


ISTIO_YAML = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v2}
    headers:
      request:
        set: {x-canary: "yes"}
      response:
        add: {x-served-by: mesh}
  - name: default
    route:
    - destination: {host: reviews, subset: v1}
      weight: 50
    - destination: {host: reviews, subset: v3}
      weight: 50
    retries: {attempts: 3, retryOn: 5xx}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"""


async def test_istio_yaml_end_to_end(upstreams):
    agent = to_agent_json(parse_config(ISTIO_YAML, "reviews.yaml"))
    config = Config(routes=RouteTables(agent["routeTables"]), destination_rules=agent["destinationRules"],
                    eps=endpoints(upstreams))
    upstreams[2].flaky = True
    b = await Bench(config, seed=3).start()
    try:
        jason = await b.get("/reviews/0", headers={"end-user": "jason"})
        rest = await b.session([("GET", f"/reviews/{i}", {}, None) for i in range(40)])
    finally:
        await b.stop()
    assert jason.status == 200 and jason.headers["x-upstream"] == "reviews-v2"
    assert jason.headers["x-served-by"] == "mesh" and upstreams[1].seen[0].headers["x-canary"] == "yes"
    assert {r.status for r in rest} == {200}  # v3's 503s were retried
    assert {r.headers["x-upstream"] for r in rest} == {"reviews-v1", "reviews-v3"}
    assert not upstreams[1].seen[1:]  # only jason went to v2


async def test_header_changes_with_line_breaks_are_a_500_not_a_crash(upstreams):
    bad_request = table(route("r", requestHeaders={"set": {"x-evil": "a\r\nInjected: 1"}}))
    b = await Bench(Config(routes=bad_request, eps=endpoints(upstreams[:1]))).start()
    try:
        r = await b.get("/")
        b.config.routes = table(route("r", responseHeaders={"add": {"x-evil": "a\nb"}}))
        r2 = await b.get("/")
    finally:
        await b.stop()
    assert r.status == 500 and r2.status == 500
    assert len(upstreams[0].seen) == 1 and "injected" not in upstreams[0].seen[0].headers
