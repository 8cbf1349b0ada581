"""Route selection for the L7 proxies: which destination, with what timeout, retries, faults and header changes.

Theory of operation
-------------------
The control plane sends normalized route tables (`lab/meshconfig/routetables.py` makes them
from VirtualServices and HTTPRoutes; the shape is below). For each request the proxy builds
a `RequestInfo` and calls `select_route(table, request)`: the routes are tried in order, the
first whose `matches` match wins (several matches are OR'ed, the fields of one match are
AND'ed, an empty list matches everything), and `RouteDecision` says what to do. A service
with no VirtualService/HTTPRoute gets `default_table(service)`: one route to the service
itself, Istio's default retry policy, no timeout. No matching route: 404 with response
flag NR, as Envoy answers. Randomness (weights, fault percentages) comes from an injectable
`random.Random`, so tests are deterministic.

Normalized route table (plain JSON)::

    {"service": "reviews.bookinfo",                 # the service requests were sent to (name.namespace)
     "source": "VirtualService bookinfo/reviews",   # or "HTTPRoute ns/name", null for the default route
     "routes": [{
        "name": "jason",                            # or null
        "matches": [{                               # [] matches every request
            "uri": {"exact": "/p"} | {"prefix": "/p"} | {"regex": "/p.*"} | {"pathPrefix": "/p"} | null,
            "ignoreUriCase": false,                 # for exact/prefix/pathPrefix (pathPrefix: whole segments)
            "method": StringMatch | null, "authority": StringMatch | null, "port": 9080 | null,
            "headers": {"end-user": {"exact": "jason"}},      # names lower-case; StringMatch:
            "withoutHeaders": {"x-debug": {"present": true}}, #   exact | prefix | regex (full match) | present
            "queryParams": {"u": {"exact": "normal"}}}],
        "destinations": [{"service": "reviews.bookinfo", "subset": "v2" | null, "port": 9080 | null,
                          "weight": 100}],                    # [] only with directResponse
        "directResponse": {"status": 503, "body": ""} | null,
        "rewrite": {"uri": "/new" | null, "replace": "prefix" | "full",   # "prefix": uri replaces a matched
                    "authority": "x" | null} | null,                       # prefix, else the whole path
        "requestHeaders": {"set": {"x": "1"}, "add": {"y": "2"}, "remove": ["z"]} | null,
        "responseHeaders": (the same) | null,
        "timeout": 0.5 | null,                     # seconds; null: none (Istio's default)
        "retries": {"attempts": 2, "perTryTimeout": null, "retryOn": ["connect-failure", ...],
                    "retriableStatusCodes": [503], "backoff": 0.025} | null,   # null: Istio's default
        "fault": {"delay": {"fixedDelay": 7.0, "percentage": 100.0} | null,
                  "abort": {"httpStatus": 500, "percentage": 100.0} | null} | null}]}
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from agents.l7.cluster import ClusterPolicy, ConnectionPoolLimits, LoadBalancerState, cluster_policy, pick_endpoint
from agents.l7.http1_events import RequestHead
from agents.l7.outlier import OutlierDetector, OutlierPolicy
from agents.l7.retry import DEFAULT_RETRY, RetryPolicy, retry_policy

# What a proxy needs from one import: route selection here, upstream decisions from agents.l7.cluster/outlier.
__all__ = ["ClusterPolicy", "ConnectionPoolLimits", "Fault", "HeaderMutation", "LoadBalancerState",
           "OutlierDetector", "OutlierPolicy", "RequestInfo", "RetryPolicy", "RouteDecision", "RouteTables",
           "cluster_policy", "default_table", "pick_endpoint", "select_route"]

Table = Mapping[str, Any]
_RNG = random.Random()


@dataclass(frozen=True)
class RequestInfo:
    """What routing looks at: method, path (without the query), raw query, headers, authority, port."""

    method: str
    path: str
    query: str = ""
    headers: Sequence[tuple[str, str]] = ()
    authority: str = ""
    port: int | None = None

    @classmethod
    def from_target(cls, method: str, target: str, headers: Sequence[tuple[str, str]], authority: str = "",
                    port: int | None = None) -> RequestInfo:
        """A RequestInfo from a request target like `/p?x=1`; authority defaults to the Host header."""
        path, _, query = target.partition("?")
        host = authority or next((v for n, v in headers if n.lower() == "host"), "")
        return cls(method, path, query, tuple(headers), host, port)

    @classmethod
    def from_head(cls, head: RequestHead, port: int | None = None) -> RequestInfo:
        """A RequestInfo from a parsed HTTP/1.1 request head (bytes decoded as latin-1, as HTTP allows)."""
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in head.headers]
        return cls.from_target(head.method.decode("latin-1"), head.target.decode("latin-1"), headers, port=port)


@dataclass(frozen=True)
class HeaderMutation:
    """Header changes in Envoy's order: remove, then set (replace), then add (append)."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def apply(self, headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """`headers` with the changes made (names compared without case)."""
        if not (self.set or self.add or self.remove):
            return list(headers)
        dropped = {n.lower() for n in self.remove} | {n.lower() for n, _ in self.set}
        out = [(n, v) for n, v in headers if n.lower() not in dropped]
        return out + list(self.set) + list(self.add)

    def then(self, other: HeaderMutation) -> HeaderMutation:
        """These changes followed by `other`'s."""
        return HeaderMutation(self.set + other.set, self.add + other.add, self.remove + other.remove)


NO_MUTATION = HeaderMutation()


@dataclass(frozen=True)
class Fault:
    """The fault decided for one request: a delay (seconds, 0 for none) and/or an abort status."""

    delay: float = 0.0
    abort: int | None = None


@dataclass(frozen=True)
class RouteDecision:
    """What the proxy does with one request."""

    service: str | None  # the destination service (cluster), None for a direct response
    subset: str | None = None
    port: int | None = None
    path: str = "/"  # after rewrite, with the query string
    authority: str = ""  # after rewrite
    timeout: float | None = None
    retry: RetryPolicy = DEFAULT_RETRY
    fault: Fault | None = None
    request_headers: HeaderMutation = NO_MUTATION
    response_headers: HeaderMutation = NO_MUTATION
    direct_response: int | None = None  # answer this status without an upstream
    direct_body: str = ""
    response_flag: str | None = None  # Envoy's: NR (no route), FI (fault abort), DI (delay)
    route_name: str | None = None
    source: str | None = None


def default_table(service: str) -> dict[str, Any]:
    """Istio's route when no VirtualService or HTTPRoute applies: all requests to the service itself."""
    return {"service": service, "source": None,
            "routes": [{"name": "default", "matches": [], "destinations": [{"service": service, "weight": 100}]}]}


def select_route(table: Table, request: RequestInfo, rng: random.Random | None = None) -> RouteDecision:
    """The decision for `request` under `table` (the first route with a matching match wins)."""
    rng = rng or _RNG
    query = parse_query(request.query)
    for route in table.get("routes") or ():
        matches = route.get("matches") or ()
        if not matches:
            return decide(table, route, request, None, rng)
        for match in matches:
            if match_request(match, request, query):
                return decide(table, route, request, match, rng)
    return RouteDecision(None, path=target_of(request.path, request.query), authority=request.authority,
                         direct_response=404, response_flag="NR", source=table.get("source"))


def decide(table: Table, route: Mapping[str, Any], request: RequestInfo, match: Mapping[str, Any] | None,
           rng: random.Random) -> RouteDecision:
    """The decision once `route` matched (through `match`, None for a route without matches)."""
    rewrite = route.get("rewrite") or {}
    path = rewrite_path(request.path, rewrite.get("uri"), match if rewrite.get("replace") != "full" else None)
    common: dict[str, Any] = dict(
        path=target_of(path, request.query), authority=rewrite.get("authority") or request.authority,
        timeout=route.get("timeout"), retry=retry_policy(route.get("retries")),
        request_headers=mutation(route.get("requestHeaders")), response_headers=mutation(route.get("responseHeaders")),
        route_name=route.get("name"), source=table.get("source"))
    fault = decide_fault(route.get("fault"), rng)
    if fault is not None:
        common["fault"] = fault
        if fault.abort is not None:
            return RouteDecision(None, direct_response=fault.abort, response_flag="FI", **common)
        common["response_flag"] = "DI"
    direct = route.get("directResponse")
    if direct:
        return RouteDecision(None, direct_response=int(direct["status"]), direct_body=direct.get("body") or "",
                             **common)
    destination = pick_weighted(route.get("destinations") or (), rng)
    if destination is None:  # Gateway API: no backends, or all of weight 0
        return RouteDecision(None, direct_response=500, **common)
    return RouteDecision(destination["service"], destination.get("subset"), destination.get("port"), **common)


def pick_weighted(destinations: Sequence[Mapping[str, Any]], rng: random.Random) -> Mapping[str, Any] | None:
    """One destination, chosen with probability weight / total (weight 0: never); None if none can be."""
    if len(destinations) == 1:
        only = destinations[0]
        return only if only.get("weight", 1) != 0 else None
    total = sum(int(d.get("weight", 1)) for d in destinations)
    if total <= 0:
        return None
    point = rng.random() * total
    for destination in destinations:
        point -= int(destination.get("weight", 1))
        if point < 0:
            return destination
    return next(d for d in reversed(destinations) if int(d.get("weight", 1)) > 0)  # float rounding at the end


def decide_fault(fault: Mapping[str, Any] | None, rng: random.Random) -> Fault | None:
    """Roll the dice for a route's delay and abort (independently, like Envoy's fault filter)."""
    if not fault:
        return None
    delay, abort = fault.get("delay"), fault.get("abort")
    seconds = float(delay["fixedDelay"]) if delay and chance(delay.get("percentage", 0), rng) else 0.0
    status = int(abort["httpStatus"]) if abort and chance(abort.get("percentage", 0), rng) else None
    return Fault(seconds, status) if seconds or status is not None else None


def chance(percentage: float, rng: random.Random) -> bool:
    """True for `percentage` percent of calls."""
    return percentage >= 100 or (percentage > 0 and rng.random() * 100 < percentage)


def mutation(spec: Mapping[str, Any] | None) -> HeaderMutation:
    """A HeaderMutation from a normalized {set, add, remove}."""
    if not spec:
        return NO_MUTATION
    return HeaderMutation(tuple((spec.get("set") or {}).items()), tuple((spec.get("add") or {}).items()),
                          tuple(spec.get("remove") or ()))


def rewrite_path(path: str, uri: str | None, match: Mapping[str, Any] | None) -> str:
    """The path after a uri rewrite: a matched prefix is replaced, otherwise the whole path."""
    if uri is None:
        return path
    matched = (match or {}).get("uri") or {}
    prefix = matched.get("prefix") or matched.get("pathPrefix")
    if prefix is None:
        return uri
    rest = path[len(prefix):]
    if uri.endswith("/") and rest.startswith("/"):
        rest = rest[1:]  # "/api" -> "/" on "/api/v1" gives "/v1", not "//v1"
    return (uri + rest) or "/"


def target_of(path: str, query: str) -> str:
    """The request target for a path and a raw query."""
    return f"{path}?{query}" if query else path


def parse_query(query: str) -> dict[str, str]:
    """Query parameters (the first value of each name), decoded."""
    if not query:
        return {}
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        params.setdefault(name, value)
    return params


# --- matching ----------------------------------------------------------------------------------------------


def match_request(match: Mapping[str, Any], request: RequestInfo, query: Mapping[str, str]) -> bool:
    """Whether every field of one normalized match holds for the request."""
    uri = match.get("uri")
    if uri and not uri_matches(uri, request.path, bool(match.get("ignoreUriCase"))):
        return False
    if match.get("method") and not string_matches(match["method"], request.method):
        return False
    if match.get("authority") and not string_matches(match["authority"], request.authority):
        return False
    if match.get("port") is not None and match["port"] != request.port:
        return False
    headers = match.get("headers")
    without = match.get("withoutHeaders")
    if headers or without:
        values = header_values(request.headers)
        if headers and not all(string_matches(m, values.get(n)) for n, m in headers.items()):
            return False
        if without and any(string_matches(m, values.get(n)) for n, m in without.items()):
            return False
    params = match.get("queryParams")
    return not params or all(string_matches(m, query.get(n)) for n, m in params.items())


def header_values(headers: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Lower-case header names to values; repeated fields joined with ',' as Envoy matches them."""
    values: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        values[key] = f"{values[key]},{value}" if key in values else value
    return values


def uri_matches(uri: Mapping[str, str], path: str, ignore_case: bool) -> bool:
    """A uri match against the path: exact, prefix, regex (whole path), or pathPrefix (whole segments)."""
    if "regex" in uri:
        return compiled(uri["regex"]).fullmatch(path) is not None
    if ignore_case:
        path = path.lower()
    if "exact" in uri:
        return path == (uri["exact"].lower() if ignore_case else uri["exact"])
    if "prefix" in uri:
        return path.startswith(uri["prefix"].lower() if ignore_case else uri["prefix"])
    prefix = (uri["pathPrefix"].lower() if ignore_case else uri["pathPrefix"]).rstrip("/")
    return path == prefix or path.startswith(prefix + "/") or not prefix


def string_matches(match: Mapping[str, Any], value: str | None) -> bool:
    """An Istio StringMatch (exact, prefix, regex as a full match, or present) against a value or None."""
    if value is None:
        return False
    if "exact" in match:
        return value == match["exact"]
    if "prefix" in match:
        return value.startswith(match["prefix"])
    if "regex" in match:
        return compiled(match["regex"]).fullmatch(value) is not None
    return bool(match.get("present", True))


@lru_cache(maxsize=1024)
def compiled(pattern: str) -> re.Pattern[str]:
    """A regex, compiled once (the same patterns are used for every request)."""
    return re.compile(pattern)


@dataclass
class RouteTables:
    """Every service's route table from a snapshot's `routeTables`, with the default for the rest."""

    tables: Mapping[str, Table] = field(default_factory=dict)

    def for_service(self, service: str) -> Table:
        """The table of `service` (name.namespace)."""
        table = self.tables.get(service)
        return table if table is not None else default_table(service)
