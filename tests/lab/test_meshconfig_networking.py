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


# --- errors: every problem, by file, line and field ----------------------------------------------------------

VS_HEAD = ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n"
           "  namespace: bookinfo\nspec:\n")
DR_HEAD = VS_HEAD.replace("VirtualService", "DestinationRule")
RT_HEAD = VS_HEAD.replace("networking.istio.io/v1", "gateway.networking.k8s.io/v1").replace("VirtualService",
                                                                                           "HTTPRoute")
ROUTE = "http:\n- route:\n  - destination:\n      host: reviews\n"  # a valid http section, from line 8 or 9
PARENT = "parentRefs:\n- {group: '', kind: Service, name: reviews}\n"  # lines 7-8


def spec_of(head: str, body: str) -> str:
    return head + textwrap.indent(body, "  ")


def vs_route(body: str) -> str:
    """A VirtualService whose one http route has these fields, from line 9."""
    return spec_of(VS_HEAD, "hosts: [reviews]\nhttp:\n- " + textwrap.indent(body, "  ")[2:])


ERRORS = [
    ("host-name-dot-namespace", spec_of(VS_HEAD, "hosts: [reviews.bookinfo]\n" + ROUTE),
     ["spec.hosts[0]: host 'reviews.bookinfo' is not a service of the lab: use a short name like 'reviews' or "
      "an FQDN like 'reviews.bookinfo.svc.cluster.local' (Istio reads 'reviews.bookinfo' as an external host; "
      "write 'reviews.bookinfo.svc.cluster.local') (net.yaml:7)"]),
    ("host-wildcard", spec_of(VS_HEAD, "hosts: ['*.bookinfo.svc.cluster.local']\n" + ROUTE),
     ["spec.hosts[0]: host '*.bookinfo.svc.cluster.local' is not a service of the lab: use a short name like "
      "'reviews' or an FQDN like 'reviews.bookinfo.svc.cluster.local' (net.yaml:7)"]),
    ("tcp-routes", spec_of(VS_HEAD, "hosts: [reviews]\n" + ROUTE + "tcp:\n- route: []\n"),
     ["spec.tcp: field 'tcp' is not supported: meshlab routes HTTP only (use http) (net.yaml:12)"]),
    ("gateway-not-mesh", spec_of(VS_HEAD, "hosts: [reviews]\ngateways: [bookinfo-gateway]\n" + ROUTE),
     ["spec.gateways[0]: only the 'mesh' gateway is supported (meshlab has no gateways) (net.yaml:8)"]),
    ("no-http", spec_of(VS_HEAD, "hosts: [reviews]\n"),
     ["spec: missing required field 'http' (net.yaml:7)"]),
    ("mirror", vs_route("route:\n- destination: {host: reviews}\nmirror:\n  host: reviews\n"),
     ["spec.http[0].mirror: field 'mirror' is not supported: meshlab's proxies send each request to one "
      "destination (no mirroring) (net.yaml:11)"]),
    ("source-labels",
     vs_route("match:\n- sourceLabels: {app: productpage}\nroute:\n- destination: {host: reviews}\n"),
     ["spec.http[0].match[0].sourceLabels: field 'sourceLabels' is not supported: route by headers, or control "
      "access with an AuthorizationPolicy (net.yaml:10)"]),
    ("uri-two-kinds", vs_route("match:\n- uri: {exact: /a, prefix: /a}\nroute:\n- destination: {host: reviews}\n"),
     ["spec.http[0].match[0].uri: set exactly one of exact, prefix and regex (net.yaml:10)"]),
    ("uri-empty", vs_route("match:\n- uri: {}\nroute:\n- destination: {host: reviews}\n"),
     ["spec.http[0].match[0].uri: set exactly one of exact, prefix and regex (net.yaml:10)"]),
    ("bad-regex", vs_route("match:\n- uri: {regex: '/a(['}\nroute:\n- destination: {host: reviews}\n"),
     ["spec.http[0].match[0].uri.regex: invalid regex '/a([': unterminated character set at position 3 "
      "(net.yaml:10)"]),
    ("header-upper-case",
     vs_route("match:\n- headers: {End-User: {exact: jason}}\nroute:\n- destination: {host: reviews}\n"),
     ["spec.http[0].match[0].headers.End-User: header name 'End-User' must be lower case (Istio matches "
      "headers by lower-case name) (net.yaml:10)"]),
    ("query-prefix", vs_route("match:\n- queryParams: {u: {prefix: norm}}\nroute:\n- destination: {host: reviews}\n"),
     ["spec.http[0].match[0].queryParams.u.prefix: prefix matching of query parameters is not supported by "
      "Istio; use exact or regex (net.yaml:10)"]),
    ("route-and-direct", vs_route("route:\n- destination: {host: reviews}\ndirectResponse: {status: 503}\n"),
     ["spec.http[0]: set exactly one of route and directResponse (net.yaml:9)"]),
    ("neither-route-nor-direct", vs_route("timeout: 1s\n"),
     ["spec.http[0]: set exactly one of route and directResponse (net.yaml:9)"]),
    ("unreachable-route",
     spec_of(VS_HEAD, "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews, subset: v1}\n"
                      "- route:\n  - destination: {host: reviews, subset: v2}\n"),
     ["spec.http[0]: only the last HTTP route may have no match (this one hides the ones after it) (net.yaml:9)"]),
    ("weight-too-big", vs_route("route:\n- destination: {host: reviews}\n  weight: 101\n"),
     ["spec.http[0].route[0].weight: 101 is out of range 0-100 (net.yaml:11)"]),
    ("weights-missing",
     vs_route("route:\n- destination: {host: reviews, subset: v1}\n- destination: {host: reviews, subset: v2}\n"),
     ["spec.http[0].route: give the destinations weights (they are split by weight; Istio's examples make them "
      "add up to 100) (net.yaml:10)"]),
    ("timeout-integer", vs_route("route:\n- destination: {host: reviews}\ntimeout: 10\n"),
     ["spec.http[0].timeout: expected a duration like '500ms', '2s' or '1m', got an integer (10) (net.yaml:11)"]),
    ("timeout-no-unit", vs_route("route:\n- destination: {host: reviews}\ntimeout: '10'\n"),
     ["spec.http[0].timeout: expected a duration like '500ms', '2s' or '1m', got a string '10' (net.yaml:11)"]),
    ("retry-on-unknown",
     vs_route("route:\n- destination: {host: reviews}\nretries: {attempts: 3, retryOn: '5xx,timeout'}\n"),
     ["spec.http[0].retries.retryOn: unknown retry condition 'timeout'; expected status codes or: 5xx, "
      "gateway-error, reset, connect-failure, refused-stream, retriable-4xx, retriable-status-codes, "
      "unavailable, cancelled (net.yaml:11)"]),
    ("per-try-zero", vs_route("route:\n- destination: {host: reviews}\nretries: {attempts: 3, perTryTimeout: 0s}\n"),
     ["spec.http[0].retries.perTryTimeout: duration '0s' must be more than zero (net.yaml:11)"]),
    ("fault-empty", vs_route("route:\n- destination: {host: reviews}\nfault: {}\n"),
     ["spec.http[0].fault: fault is empty; set delay or abort (net.yaml:11)"]),
    ("delay-without-fixed-delay",
     vs_route("route:\n- destination: {host: reviews}\nfault:\n  delay:\n    percentage: {value: 10}\n"),
     ["spec.http[0].fault.delay: missing required field 'fixedDelay' (net.yaml:13)"]),
    ("abort-grpc",
     vs_route("route:\n- destination: {host: reviews}\nfault:\n  abort:\n    grpcStatus: UNAVAILABLE\n"),
     ["spec.http[0].fault.abort.grpcStatus: field 'grpcStatus' is not supported: use httpStatus (net.yaml:13)",
      "spec.http[0].fault.abort: missing required field 'httpStatus' (net.yaml:13)"]),
    ("abort-status-range", vs_route("route:\n- destination: {host: reviews}\nfault:\n  abort:\n    httpStatus: 99\n"),
     ["spec.http[0].fault.abort.httpStatus: 99 is out of range 200-599 (net.yaml:13)"]),
    ("percentage-over-100",
     vs_route("route:\n- destination: {host: reviews}\nfault:\n  abort:\n    httpStatus: 503\n"
              "    percentage: {value: 150}\n"),
     ["spec.http[0].fault.abort.percentage.value: 150 is out of range 0-100 (net.yaml:14)"]),
    ("destination-port-number", vs_route("route:\n- destination:\n    host: reviews\n    port: 9080\n"),
     ["spec.http[0].route[0].destination.port: expected a mapping, got an integer (9080) (net.yaml:12)"]),
    ("subset-upper-case", vs_route("route:\n- destination: {host: reviews, subset: V1}\n"),
     ["spec.http[0].route[0].destination.subset: invalid subset name 'V1' (net.yaml:10)"]),
    ("rewrite-no-slash", vs_route("route:\n- destination: {host: reviews}\nrewrite: {uri: v2}\n"),
     ["spec.http[0].rewrite.uri: rewrite uri 'v2' must start with '/' (net.yaml:11)"]),
    ("uri-regex-rewrite",
     vs_route("route:\n- destination: {host: reviews}\nrewrite:\n  uriRegexRewrite: {match: a, rewrite: b}\n"),
     ["spec.http[0].rewrite.uriRegexRewrite: field 'uriRegexRewrite' is not supported: use uri (net.yaml:12)"]),
    ("header-set-list", vs_route("route:\n- destination: {host: reviews}\nheaders:\n  request:\n    set: [x-a]\n"),
     ["spec.http[0].headers.request.set: expected a mapping, got a list (net.yaml:13)"]),
    ("dr-tls", spec_of(DR_HEAD, "host: reviews\ntrafficPolicy:\n  tls: {mode: ISTIO_MUTUAL}\n"),
     ["spec.trafficPolicy.tls: field 'tls' is not supported: traffic between meshlab proxies is always Istio "
      "mutual TLS (net.yaml:9)"]),
    ("dr-consistent-hash",
     spec_of(DR_HEAD, "host: reviews\ntrafficPolicy:\n  loadBalancer:\n"
                      "    consistentHash: {httpHeaderName: x-user}\n"),
     ["spec.trafficPolicy.loadBalancer.consistentHash: field 'consistentHash' is not supported: use simple "
      "(net.yaml:10)",
      "spec.trafficPolicy.loadBalancer: missing required field 'simple' (net.yaml:10)"]),
    ("dr-lb-unknown", spec_of(DR_HEAD, "host: reviews\ntrafficPolicy:\n"
                                       "  loadBalancer: {simple: LEAST_CONNECTIONS}\n"),
     ["spec.trafficPolicy.loadBalancer.simple: unknown load balancer 'LEAST_CONNECTIONS'; expected one of: "
      "UNSPECIFIED, ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, RANDOM, PASSTHROUGH (net.yaml:9)"]),
    ("dr-subset-twice",
     spec_of(DR_HEAD, "host: reviews\nsubsets:\n- name: v1\n  labels: {version: v1}\n- name: v1\n"
                      "  labels: {version: v2}\n"),
     ["spec.subsets[1].name: duplicate subset 'v1' (first at line 9) (net.yaml:11)"]),
    ("dr-subset-no-labels", spec_of(DR_HEAD, "host: reviews\nsubsets:\n- name: v1\n"),
     ["spec.subsets[0]: a subset needs labels to select its endpoints (net.yaml:9)"]),
    ("dr-consecutive-errors",
     spec_of(DR_HEAD, "host: reviews\ntrafficPolicy:\n  outlierDetection:\n    consecutiveErrors: 5\n"),
     ["spec.trafficPolicy.outlierDetection.consecutiveErrors: field 'consecutiveErrors' is not supported: it "
      "is deprecated in Istio; use consecutive5xxErrors (net.yaml:10)"]),
    ("dr-ejection-percent",
     spec_of(DR_HEAD, "host: reviews\ntrafficPolicy:\n  outlierDetection:\n    maxEjectionPercent: 120\n"),
     ["spec.trafficPolicy.outlierDetection.maxEjectionPercent: 120 is out of range 0-100 (net.yaml:10)"]),
    ("dr-max-connections-zero",
     spec_of(DR_HEAD, "host: reviews\ntrafficPolicy:\n  connectionPool:\n    tcp: {maxConnections: 0}\n"),
     ["spec.trafficPolicy.connectionPool.tcp.maxConnections: 0 is out of range 1-4294967295 (net.yaml:10)"]),
    ("dr-interval-space", spec_of(DR_HEAD, "host: reviews\ntrafficPolicy:\n  outlierDetection:\n    interval: 1 s\n"),
     ["spec.trafficPolicy.outlierDetection.interval: expected a duration like '500ms', '2s' or '1m', got a "
      "string '1 s' (net.yaml:10)"]),
    ("dr-h2-upgrade",
     spec_of(DR_HEAD, "host: reviews\ntrafficPolicy:\n  connectionPool:\n    http: {h2UpgradePolicy: UPGRADE}\n"),
     ["spec.trafficPolicy.connectionPool.http.h2UpgradePolicy: field 'h2UpgradePolicy' is not supported: "
      "meshlab's proxies speak HTTP/1.1 to applications (net.yaml:10)"]),
    ("dr-no-host", spec_of(DR_HEAD, "subsets: []\n"),
     ["spec: missing required field 'host' (net.yaml:7)"]),
    ("route-parent-gateway", spec_of(RT_HEAD, "parentRefs:\n- name: bookinfo-gateway\n"),
     ['spec.parentRefs[0]: parentRefs must name a Service (group: "", kind: Service), not Gateway: meshlab has '
      "no Gateways; attach the route to the service it routes (Gateway API for the mesh) (net.yaml:8)"]),
    ("route-hostnames", spec_of(RT_HEAD, PARENT + "hostnames: [reviews.example.com]\n"),
     ["spec.hostnames: field 'hostnames' is not supported: a route attached to a Service routes the requests "
      "sent to that service, whatever their host (net.yaml:9)"]),
    ("route-parent-other-namespace",
     spec_of(RT_HEAD, "parentRefs:\n- {group: '', kind: Service, name: reviews, namespace: shop}\n"),
     ["spec.parentRefs[0].namespace: a parent Service in another namespace (a consumer route) is not "
      "supported; put the route in the service's namespace (net.yaml:8)"]),
    ("route-backend-other-namespace",
     spec_of(RT_HEAD, PARENT + "rules:\n- backendRefs:\n  - {name: reviews, namespace: shop, port: 9080}\n"),
     ["spec.rules[0].backendRefs[0].namespace: a backend in another namespace needs a ReferenceGrant, which "
      "meshlab does not support (net.yaml:11)"]),
    ("route-backend-no-port", spec_of(RT_HEAD, PARENT + "rules:\n- backendRefs:\n  - {name: reviews-v1}\n"),
     ["spec.rules[0].backendRefs[0]: missing required field 'port' (net.yaml:11)"]),
    ("route-mirror-filter",
     spec_of(RT_HEAD, PARENT + "rules:\n- filters:\n  - type: RequestMirror\n"
                               "    requestMirror: {backendRef: {name: x, port: 80}}\n"),
     ["spec.rules[0].filters[0].type: filter RequestMirror is not supported (mirroring is not supported) "
      "(net.yaml:11)",
      "spec.rules[0].filters[0].requestMirror: field 'requestMirror' is not supported: mirroring is not "
      "supported (net.yaml:12)"]),
    ("route-path-type", spec_of(RT_HEAD, PARENT + "rules:\n- matches:\n  - path: {type: Prefix, value: /api}\n"),
     ["spec.rules[0].matches[0].path.type: unknown path match type 'Prefix'; expected one of: Exact, "
      "PathPrefix, RegularExpression (net.yaml:11)"]),
    ("route-prefix-rewrite-exact",
     spec_of(RT_HEAD, PARENT + "rules:\n- matches:\n  - path: {type: Exact, value: /a}\n  filters:\n"
                               "  - type: URLRewrite\n    urlRewrite:\n"
                               "      path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}\n"),
     ["spec.rules[0].filters[0].urlRewrite.path.type: ReplacePrefixMatch needs a PathPrefix match (net.yaml:15)"]),
    ("route-method-lower", spec_of(RT_HEAD, PARENT + "rules:\n- matches:\n  - method: get\n"),
     ["spec.rules[0].matches[0].method: unknown method 'get'; expected one of: GET, HEAD, POST, PUT, DELETE, "
      "CONNECT, OPTIONS, TRACE, PATCH (net.yaml:11)"]),
    ("route-retry-code", spec_of(RT_HEAD, PARENT + "rules:\n- retry: {attempts: 2, codes: [200]}\n"),
     ["spec.rules[0].retry.codes[0]: 200 is out of range 400-599 (net.yaml:10)"]),
    ("route-backend-timeout-longer",
     spec_of(RT_HEAD, PARENT + "rules:\n- timeouts: {request: 1s, backendRequest: 2s}\n"),
     ["spec.rules[0].timeouts.backendRequest: backendRequest must not be longer than request (net.yaml:10)"]),
    ("route-duration-decimal", spec_of(RT_HEAD, PARENT + "rules:\n- timeouts: {request: 1.5s}\n"),
     ["spec.rules[0].timeouts.request: expected a duration like '10s' or '500ms', got a string '1.5s' "
      "(net.yaml:10)"]),
    ("route-filter-twice",
     spec_of(RT_HEAD, PARENT + "rules:\n- filters:\n  - type: RequestHeaderModifier\n"
                               "    requestHeaderModifier: {remove: [a]}\n  - type: RequestHeaderModifier\n"
                               "    requestHeaderModifier: {remove: [b]}\n"),
     ["spec.rules[0].filters[1].type: duplicate filter RequestHeaderModifier (first at line 11) (net.yaml:13)"]),
    ("route-session-persistence", spec_of(RT_HEAD, PARENT + "rules:\n- sessionPersistence: {sessionName: s}\n"),
     ["spec.rules[0].sessionPersistence: field 'sessionPersistence' is not supported: meshlab's proxies keep "
      "no sessions (net.yaml:10)"]),
    ("missing-spec", VS_HEAD[:-6],
     ["missing required field 'spec' (net.yaml:1)"]),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_errors_name_file_line_and_field(text, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "/somewhere/net.yaml")
    assert [str(p) for p in info.value.problems] == expected
