"""Istio networking config (VirtualService, DestinationRule, HTTPRoute): validated with file and line, normalized
into the route tables the L7 engine consumes, and routed by it."""

from __future__ import annotations

import json
import random
import textwrap
from collections import Counter

import pytest

from agents.l7.cluster import cluster_policy
from agents.l7.routing import RequestInfo, RouteTables, select_route
from lab.errors import ConfigError
from lab.meshconfig import ConfigStore, objects_to_yaml, parse_config, to_agent_json

# --- Istio's Bookinfo traffic-management tasks, written for the lab in the same shape ----------------------


def vs(name: str, body: str, namespace: str = "bookinfo") -> str:
    return (f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n"
            f"  namespace: {namespace}\nspec:\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "  ") + "\n")


ALL_V1 = "---\n".join(vs(name, f"""
    hosts:
    - {name}
    http:
    - route:
      - destination:
          host: {name}
          subset: v1
    """) for name in ("productpage", "reviews", "ratings", "details"))

REVIEWS_JASON_V2 = vs("reviews", """
    hosts:
      - reviews
    http:
    - match:
      - headers:
          end-user:
            exact: jason
      route:
      - destination:
          host: reviews
          subset: v2
    - route:
      - destination:
          host: reviews
          subset: v1
    """)

REVIEWS_50_V3 = vs("reviews", """
    hosts:
      - reviews
    http:
    - route:
      - destination:
          host: reviews
          subset: v1
        weight: 50
      - destination:
          host: reviews
          subset: v3
        weight: 50
    """)

REVIEWS_V3 = vs("reviews", """
    hosts:
      - reviews
    http:
    - route:
      - destination:
          host: reviews
          subset: v3
    """)

RATINGS_DELAY = vs("ratings", """
    hosts:
    - ratings
    http:
    - match:
      - headers:
          end-user:
            exact: jason
      fault:
        delay:
          percentage:
            value: 100.0
          fixedDelay: 7s
      route:
      - destination:
          host: ratings
          subset: v1
    - route:
      - destination:
          host: ratings
          subset: v1
    """)

RATINGS_ABORT = vs("ratings", """
    hosts:
    - ratings
    http:
    - match:
      - headers:
          end-user:
            exact: jason
      fault:
        abort:
          percentage:
            value: 100.0
          httpStatus: 500
      route:
      - destination:
          host: ratings
          subset: v1
    - route:
      - destination:
          host: ratings
          subset: v1
    """)

REVIEWS_TIMEOUT = vs("reviews", """
    hosts:
    - reviews
    http:
    - route:
      - destination:
          host: reviews
          subset: v2
      timeout: 0.5s
    """)

REVIEWS_DESTINATION_RULE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: bookinfo
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
"""

CIRCUIT_BREAKER = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
  namespace: default
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1
      http:
        http1MaxPendingRequests: 1
        maxRequestsPerConnection: 1
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
"""

HTTPROUTE_90_10 = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
  namespace: bookinfo
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: reviews
    port: 9080
  rules:
  - backendRefs:
    - name: reviews-v1
      port: 9080
      weight: 90
    - name: reviews-v2
      port: 9080
      weight: 10
"""

SAMPLES = {"virtual-service-all-v1": ALL_V1, "reviews-test-v2": REVIEWS_JASON_V2, "reviews-50-v3": REVIEWS_50_V3,
           "reviews-v3": REVIEWS_V3, "ratings-test-delay": RATINGS_DELAY, "ratings-test-abort": RATINGS_ABORT,
           "reviews-timeout": REVIEWS_TIMEOUT, "destination-rule-reviews": REVIEWS_DESTINATION_RULE,
           "circuit-breaker": CIRCUIT_BREAKER, "httproute-90-10": HTTPROUTE_90_10}


def tables(text: str) -> dict:
    snapshot = to_agent_json(parse_config(text, "sample.yaml"))
    assert json.loads(json.dumps(snapshot)) == snapshot  # plain JSON
    return snapshot


def only_route(snapshot: dict, service: str) -> dict:
    [route] = snapshot["routeTables"][service]["routes"]
    return route


def dest(service: str, subset: str | None, weight: int = 100, port: int | None = None) -> dict:
    return {"service": service, "subset": subset, "port": port, "weight": weight}


def ask(snapshot: dict, service: str, user: str | None = None, rng: random.Random | None = None):
    headers = (("end-user", user),) if user else ()
    request = RequestInfo("GET", "/", "", headers, service.split(".")[0] + ":9080", 9080)
    return select_route(RouteTables(snapshot["routeTables"]).for_service(service), request, rng)


@pytest.mark.parametrize("text", SAMPLES.values(), ids=SAMPLES.keys())
def test_bookinfo_samples_parse_and_round_trip(text):
    objects = parse_config(text, "sample.yaml")
    assert parse_config(objects_to_yaml(objects)) == objects


def test_all_v1():
    snapshot = tables(ALL_V1)
    assert sorted(snapshot["routeTables"]) == ["details.bookinfo", "productpage.bookinfo", "ratings.bookinfo",
                                               "reviews.bookinfo"]
    assert only_route(snapshot, "reviews.bookinfo") == {
        "name": None, "matches": [], "destinations": [dest("reviews.bookinfo", "v1")], "directResponse": None,
        "rewrite": None, "requestHeaders": None, "responseHeaders": None, "timeout": None, "retries": None,
        "fault": None}
    assert snapshot["routeTables"]["reviews.bookinfo"]["source"] == "VirtualService bookinfo/reviews"
    assert ask(snapshot, "details.bookinfo").subset == "v1"


def test_reviews_v2_for_jason():
    snapshot = tables(REVIEWS_JASON_V2)
    jason, rest = snapshot["routeTables"]["reviews.bookinfo"]["routes"]
    assert jason["matches"] == [{"uri": None, "ignoreUriCase": False, "method": None, "authority": None,
                                 "port": None, "headers": {"end-user": {"exact": "jason"}}, "withoutHeaders": {},
                                 "queryParams": {}}]
    assert jason["destinations"] == [dest("reviews.bookinfo", "v2")] and rest["matches"] == []
    assert ask(snapshot, "reviews.bookinfo", "jason").subset == "v2"
    assert ask(snapshot, "reviews.bookinfo", "alice").subset == "v1"
    assert ask(snapshot, "reviews.bookinfo").subset == "v1"


def test_reviews_50_50_v1_v3():
    snapshot = tables(REVIEWS_50_V3)
    assert only_route(snapshot, "reviews.bookinfo")["destinations"] == [dest("reviews.bookinfo", "v1", 50),
                                                                        dest("reviews.bookinfo", "v3", 50)]
    rng = random.Random(2024)
    counts = Counter(ask(snapshot, "reviews.bookinfo", rng=rng).subset for _ in range(10_000))
    assert abs(counts["v1"] / 10_000 - 0.5) <= 0.02 and counts["v1"] + counts["v3"] == 10_000


def test_reviews_all_v3():
    snapshot = tables(REVIEWS_V3)
    assert only_route(snapshot, "reviews.bookinfo")["destinations"] == [dest("reviews.bookinfo", "v3")]


def test_ratings_delay_for_jason():
    snapshot = tables(RATINGS_DELAY)
    jason, rest = snapshot["routeTables"]["ratings.bookinfo"]["routes"]
    assert jason["fault"] == {"delay": {"fixedDelay": 7.0, "percentage": 100.0}, "abort": None}
    assert rest["fault"] is None
    decision = ask(snapshot, "ratings.bookinfo", "jason")
    assert decision.fault.delay == 7.0 and decision.subset == "v1" and decision.response_flag == "DI"
    assert ask(snapshot, "ratings.bookinfo", "alice").fault is None


def test_ratings_abort_for_jason():
    snapshot = tables(RATINGS_ABORT)
    jason = snapshot["routeTables"]["ratings.bookinfo"]["routes"][0]
    assert jason["fault"] == {"delay": None, "abort": {"httpStatus": 500, "percentage": 100.0}}
    decision = ask(snapshot, "ratings.bookinfo", "jason")
    assert (decision.direct_response, decision.response_flag, decision.service) == (500, "FI", None)
    assert ask(snapshot, "ratings.bookinfo").direct_response is None


def test_reviews_timeout():
    snapshot = tables(REVIEWS_TIMEOUT)
    route = only_route(snapshot, "reviews.bookinfo")
    assert route["timeout"] == 0.5 and route["destinations"] == [dest("reviews.bookinfo", "v2")]
    assert ask(snapshot, "reviews.bookinfo").timeout == 0.5


DEFAULT_POOL = {"maxConnections": 4294967295, "connectTimeout": 10.0, "http1MaxPendingRequests": 4294967295,
                "http2MaxRequests": 4294967295, "maxRequestsPerConnection": 0, "maxRetries": 4294967295,
                "idleTimeout": 3600.0}


def test_destination_rule_subsets():
    rules = tables(REVIEWS_DESTINATION_RULE)["destinationRules"]
    default_policy = {"loadBalancer": "LEAST_REQUEST", "connectionPool": DEFAULT_POOL, "outlierDetection": None}
    assert rules == {"reviews.bookinfo": {
        "service": "reviews.bookinfo", "source": "DestinationRule bookinfo/reviews", "shadowed": [],
        "trafficPolicy": default_policy,
        "subsets": {v: {"labels": {"version": v}, "trafficPolicy": default_policy} for v in ("v1", "v2", "v3")}}}
    assert cluster_policy(rules, "reviews.bookinfo", "v2").labels == {"version": "v2"}


def test_circuit_breaker():
    rules = tables(CIRCUIT_BREAKER)["destinationRules"]
    policy = rules["httpbin.default"]["trafficPolicy"]
    assert policy["connectionPool"] == {**DEFAULT_POOL, "maxConnections": 1, "http1MaxPendingRequests": 1,
                                        "maxRequestsPerConnection": 1}
    assert policy["outlierDetection"] == {"consecutive5xxErrors": 1, "consecutiveGatewayErrors": 0, "interval": 1.0,
                                          "baseEjectionTime": 180.0, "maxEjectionPercent": 100,
                                          "minHealthPercent": 0}
    cluster = cluster_policy(rules, "httpbin.default")
    assert cluster.pool.admit(active_connections=1, idle_connections=0, pending_requests=1,
                              active_requests=1).response_flag == "UO"
    assert cluster.outlier.base_ejection_time == 180.0


def test_httproute_90_10():
    snapshot = tables(HTTPROUTE_90_10)
    table = snapshot["routeTables"]["reviews.bookinfo"]
    assert table["source"] == "HTTPRoute bookinfo/reviews"
    [route] = table["routes"]
    assert route["destinations"] == [dest("reviews-v1.bookinfo", None, 90, 9080),
                                      dest("reviews-v2.bookinfo", None, 10, 9080)]
    assert route["matches"] == [{"uri": {"pathPrefix": "/"}, "ignoreUriCase": False, "method": None,
                                 "authority": None, "port": 9080, "headers": {}, "withoutHeaders": {},
                                 "queryParams": {}}]
    rng = random.Random(11)
    counts = Counter(ask(snapshot, "reviews.bookinfo", rng=rng).service for _ in range(10_000))
    assert abs(counts["reviews-v1.bookinfo"] / 10_000 - 0.9) <= 0.02


# --- more of the normalized shape ----------------------------------------------------------------------------

HTTPROUTE_PRECEDENCE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: api
  namespace: shop
spec:
  parentRefs:
  - {group: "", kind: Service, name: api}
  rules:
  - name: catch-all
    backendRefs: [{name: api-v1, port: 80}]
  - name: v2-users
    matches:
    - path: {type: PathPrefix, value: /users}
      headers: [{name: X-Version, value: "2"}]
    - path: {type: Exact, value: /users/me}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-routed, value: v2}]
        remove: [x-debug]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        add: [{name: x-served-by, value: v2}]
    - type: URLRewrite
      urlRewrite:
        hostname: api-v2.shop
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2/users}
    backendRefs: [{name: api-v2, port: 80}]
    timeouts: {request: 10s, backendRequest: 2s}
    retry: {attempts: 3, codes: [502, 503], backoff: 100ms}
  - name: posts
    matches:
    - path: {type: PathPrefix, value: /users}
      method: POST
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: admin
  namespace: shop
spec:
  parentRefs:
  - {group: "", kind: Service, name: api, port: 8080}
  rules:
  - matches:
    - path: {type: RegularExpression, value: "/admin/[a-z]+"}
    backendRefs: [{name: admin, port: 8080, weight: 0}]
"""


def test_httproute_precedence_filters_timeouts_and_retry():
    table = tables(HTTPROUTE_PRECEDENCE)["routeTables"]["api.shop"]
    assert table["source"] == "HTTPRoute shop/api, HTTPRoute shop/admin"
    order = [(r["name"], next(iter(r["matches"][0]["uri"].items()))) for r in table["routes"]]
    assert order == [("v2-users", ("exact", "/users/me")), ("posts", ("pathPrefix", "/users")),
                     ("v2-users", ("pathPrefix", "/users")), ("catch-all", ("pathPrefix", "/")),
                     ("rule-0", ("regex", "/admin/[a-z]+"))]
    v2 = table["routes"][0]
    assert v2["requestHeaders"] == {"set": {"x-routed": "v2"}, "add": {}, "remove": ["x-debug"]}
    assert v2["responseHeaders"] == {"set": {}, "add": {"x-served-by": "v2"}, "remove": []}
    assert v2["rewrite"] == {"uri": "/v2/users", "replace": "prefix", "authority": "api-v2.shop"}
    assert v2["timeout"] == 10.0 and v2["retries"] == {
        "attempts": 3, "perTryTimeout": 2.0, "retryOn": ["connect-failure", "refused-stream", "unavailable",
                                                         "cancelled", "retriable-status-codes"],
        "retriableStatusCodes": [502, 503], "backoff": 0.1}
    assert table["routes"][1]["directResponse"] == {"status": 500, "body": ""}  # no backendRefs
    assert table["routes"][2]["matches"][0]["headers"] == {"x-version": {"exact": "2"}}
    assert table["routes"][4]["matches"][0]["port"] == 8080
    snapshot = {"routeTables": {"api.shop": table}}
    request = RequestInfo.from_target("GET", "/users/7?full=1", [("Host", "api"), ("X-Version", "2")], port=80)
    decision = select_route(RouteTables(snapshot["routeTables"]).for_service("api.shop"), request)
    assert (decision.service, decision.path, decision.authority) == ("api-v2.shop", "/v2/users/7?full=1",
                                                                     "api-v2.shop")
    post = RequestInfo.from_target("POST", "/users", [("Host", "api")], port=80)
    assert select_route(table, post).direct_response == 500
    admin = RequestInfo.from_target("GET", "/admin/x", [("Host", "api")], port=8080)
    assert select_route(table, admin).route_name == "catch-all"  # a prefix match goes before a regex, as in Istio


VS_EVERYTHING = vs("reviews", """
    hosts: [reviews.bookinfo.svc.cluster.local]
    gateways: [mesh]
    http:
    - name: api
      match:
      - uri: {prefix: /api/v1}
        ignoreUriCase: true
        method: {exact: GET}
        queryParams: {debug: {exact: "1"}}
        withoutHeaders: {x-canary: {}}
        port: 9080
      rewrite: {uri: /v1, authority: reviews-api}
      headers:
        request: {set: {x-api: "1"}, remove: [cookie]}
        response: {add: {x-cache: miss}}
      retries: {attempts: 3, perTryTimeout: 2s, retryOn: "gateway-error,connect-failure,503"}
      route:
      - destination: {host: reviews, subset: v2, port: {number: 9080}}
    - name: maintenance
      directResponse: {status: 503, body: {string: down for maintenance}}
    """)


def test_virtual_service_fields():
    table = tables(VS_EVERYTHING)["routeTables"]["reviews.bookinfo"]
    api, maintenance = table["routes"]
    assert api["matches"] == [{"uri": {"prefix": "/api/v1"}, "ignoreUriCase": True, "method": {"exact": "GET"},
                               "authority": None, "port": 9080, "headers": {},
                               "withoutHeaders": {"x-canary": {"present": True}},
                               "queryParams": {"debug": {"exact": "1"}}}]
    assert api["rewrite"] == {"uri": "/v1", "replace": "prefix", "authority": "reviews-api"}
    assert api["requestHeaders"] == {"set": {"x-api": "1"}, "add": {}, "remove": ["cookie"]}
    assert api["retries"] == {"attempts": 3, "perTryTimeout": 2.0, "retryOn": ["gateway-error", "connect-failure",
                                                                               "retriable-status-codes"],
                              "retriableStatusCodes": [503], "backoff": None}
    assert api["destinations"] == [dest("reviews.bookinfo", "v2", 100, 9080)]
    assert maintenance["directResponse"] == {"status": 503, "body": "down for maintenance"}
    decision = select_route(table, RequestInfo.from_target("GET", "/API/v1/books?debug=1", [("Host", "reviews")],
                                                           port=9080))
    assert decision.path == "/v1/books?debug=1" and decision.retry.attempts == 3
    assert select_route(table, RequestInfo.from_target("GET", "/", [])).direct_body == "down for maintenance"


def test_the_oldest_object_for_a_service_wins():
    newer = REVIEWS_V3.replace("name: reviews", "name: reviews-v3")
    route = HTTPROUTE_90_10.replace("name: reviews\n  namespace", "name: reviews-split\n  namespace")
    table = tables("---\n".join([REVIEWS_JASON_V2, newer, route]))["routeTables"]["reviews.bookinfo"]
    assert table["source"] == "VirtualService bookinfo/reviews"
    assert table["shadowed"] == ["VirtualService bookinfo/reviews-v3", "HTTPRoute bookinfo/reviews-split"]
    table = tables("---\n".join([route, REVIEWS_JASON_V2]))["routeTables"]["reviews.bookinfo"]
    assert table["source"] == "HTTPRoute bookinfo/reviews-split"
    assert table["shadowed"] == ["VirtualService bookinfo/reviews"]


def test_subset_policy_overrides_whole_fields():
    text = REVIEWS_DESTINATION_RULE.replace("  subsets:\n", """\
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {tcp: {maxConnections: 10, connectTimeout: 250ms}}
  subsets:
""").replace("      version: v3\n", """\
      version: v3
    trafficPolicy:
      connectionPool: {http: {maxRetries: 1, idleTimeout: 1h}}
      outlierDetection: {consecutiveGatewayErrors: 2}
""")
    rule = tables(text)["destinationRules"]["reviews.bookinfo"]
    assert rule["trafficPolicy"]["loadBalancer"] == "ROUND_ROBIN"
    assert rule["trafficPolicy"]["connectionPool"]["connectTimeout"] == 0.25
    v3 = rule["subsets"]["v3"]["trafficPolicy"]
    assert v3["loadBalancer"] == "ROUND_ROBIN"  # inherited
    assert v3["connectionPool"] == {**DEFAULT_POOL, "maxRetries": 1}  # replaced whole: maxConnections is back
    assert v3["outlierDetection"]["consecutiveGatewayErrors"] == 2
    assert v3["outlierDetection"]["consecutive5xxErrors"] == 5  # Istio's default
    assert rule["subsets"]["v1"]["trafficPolicy"] == rule["trafficPolicy"]


def test_networking_objects_are_stored_like_the_others(tmp_path):
    store = ConfigStore(tmp_path / "meshconfig.json")
    outcomes = store.apply(parse_config("---\n".join([REVIEWS_DESTINATION_RULE, REVIEWS_JASON_V2,
                                                      HTTPROUTE_90_10.replace("bookinfo", "other")])))
    assert outcomes == [("DestinationRule", "bookinfo/reviews", "created"),
                        ("VirtualService", "bookinfo/reviews", "created"),
                        ("HTTPRoute", "other/reviews", "created")]
    assert [o.kind for o in store.get("vs")] == ["VirtualService"]
    assert sorted(to_agent_json(store.objects())["routeTables"]) == ["reviews.bookinfo", "reviews.other"]
