"""VirtualServices, HTTPRoutes and DestinationRules turned into the route tables the L7 proxies consume.

`route_tables(objects)` returns the snapshot's `{"routeTables": {...}, "destinationRules":
{...}}`, keyed by service (`name.namespace`); the shapes are documented in
`agents/l7/routing.py` (route tables) and `agents/l7/cluster.py` (DestinationRules).
Defaults are filled in here, so the agents need not know Istio's.

Which object routes a service: objects come oldest first, and the oldest one naming the
service wins. If it is a VirtualService, it alone routes the service (Istio uses one
VirtualService per host for mesh traffic); if it is an HTTPRoute, every HTTPRoute attached
to the service is merged and its matches are ordered by Gateway API precedence (Exact path,
then the longest PathPrefix, then RegularExpression, then method, then the most header and
query matches; ties keep creation order and rule order). What lost is listed in `shadowed`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lab.meshconfig.networking import parse_duration, service_key
from lab.meshconfig.parse import ConfigObject

DEFAULT_RETRY_ON = ["connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"]
UINT32 = 2**32 - 1
DEFAULT_POOL = {"maxConnections": UINT32, "connectTimeout": 10.0, "http1MaxPendingRequests": UINT32,
                "http2MaxRequests": UINT32, "maxRequestsPerConnection": 0, "maxRetries": UINT32, "idleTimeout": 3600.0}
DEFAULT_OUTLIER = {"consecutive5xxErrors": 5, "consecutiveGatewayErrors": 0, "interval": 10.0,
                   "baseEjectionTime": 30.0, "maxEjectionPercent": 10, "minHealthPercent": 0}
LOAD_BALANCER_NAMES = {"UNSPECIFIED": "LEAST_REQUEST", "LEAST_CONN": "LEAST_REQUEST"}


def route_tables(objects: Iterable[ConfigObject]) -> dict[str, dict[str, Any]]:
    """The networking objects among `objects` as the agents' route tables and DestinationRules."""
    routing: dict[str, list[tuple[ConfigObject, Any]]] = {}  # service -> (object, its routes for it), oldest first
    rules: dict[str, dict[str, Any]] = {}
    for obj in objects:
        if obj.kind == "VirtualService":
            routes = [vs_route(r, obj.namespace) for r in obj.spec.get("http", [])]
            for host in dict.fromkeys(obj.spec.get("hosts", [])):
                routing.setdefault(service_key(host, obj.namespace) or host, []).append((obj, routes))
        elif obj.kind == "HTTPRoute":
            for parent in obj.spec.get("parentRefs", []):
                routes = [r for i, rule in enumerate(obj.spec.get("rules") or [{}])
                          for r in gateway_routes(rule, i, obj.namespace, parent.get("port"))]
                routing.setdefault(f"{parent['name']}.{obj.namespace}", []).append((obj, routes))
        elif obj.kind == "DestinationRule":
            key = service_key(obj.spec["host"], obj.namespace) or obj.spec["host"]
            if key in rules:
                rules[key]["shadowed"].append(source(obj))
            else:
                rules[key] = destination_rule(obj)
    tables = {service: table(service, entries) for service, entries in routing.items()}
    return {"routeTables": tables, "destinationRules": rules}


def source(obj: ConfigObject) -> str:
    """How tables name the object they came from."""
    return f"{obj.kind} {obj.namespace}/{obj.name}"


def table(service: str, entries: list[tuple[ConfigObject, Any]]) -> dict[str, Any]:
    """One service's table from the objects naming it (the oldest decides which kind wins)."""
    winner = entries[0][0]
    if winner.kind == "VirtualService":
        return {"service": service, "source": source(winner), "shadowed": [source(o) for o, _ in entries[1:]],
                "routes": entries[0][1]}
    merged = [entry for obj, routes in entries if obj.kind == "HTTPRoute" for entry in routes]
    merged.sort(key=lambda route: precedence(route["matches"][0]))
    sources = list(dict.fromkeys(source(o) for o, _ in entries if o.kind == "HTTPRoute"))
    return {"service": service, "source": ", ".join(sources),
            "shadowed": [source(o) for o, _ in entries if o.kind != "HTTPRoute"], "routes": merged}


def precedence(match: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """Gateway API's ordering of matches (smaller first)."""
    uri = match.get("uri") or {"pathPrefix": "/"}
    kind, value = next(iter(uri.items()))
    rank = {"exact": 0, "pathPrefix": 1, "regex": 2}[kind]
    return (rank, -len(value), 0 if match.get("method") else 1, -len(match.get("headers") or {}),
            -len(match.get("queryParams") or {}))


# --- VirtualService ----------------------------------------------------------------------------------------


def vs_route(spec: dict[str, Any], namespace: str) -> dict[str, Any]:
    """One VirtualService http[] route, normalized."""
    destinations = []
    entries = spec.get("route", [])
    for entry in entries:
        d = entry["destination"]
        weight = entry.get("weight", 0) if len(entries) > 1 else 100
        destinations.append({"service": service_key(d["host"], namespace) or d["host"], "subset": d.get("subset"),
                             "port": (d.get("port") or {}).get("number"), "weight": weight})
    headers = spec.get("headers", {})
    direct = spec.get("directResponse")
    return {"name": spec.get("name"), "matches": [vs_match(m) for m in spec.get("match", [])],
            "destinations": destinations,
            "directResponse": {"status": direct["status"], "body": (direct.get("body") or {}).get("string", "")}
            if direct else None,
            "rewrite": vs_rewrite(spec.get("rewrite")),
            "requestHeaders": header_operations(headers.get("request")),
            "responseHeaders": header_operations(headers.get("response")),
            "timeout": seconds(spec.get("timeout")) or None,
            "retries": vs_retries(spec.get("retries")), "fault": vs_fault(spec.get("fault"))}


def vs_match(spec: dict[str, Any]) -> dict[str, Any]:
    """One HTTPMatchRequest, normalized."""
    def maps(name: str) -> dict[str, dict[str, Any]]:
        return {key: (value or {"present": True}) for key, value in (spec.get(name) or {}).items()}
    return {"uri": spec.get("uri"), "ignoreUriCase": bool(spec.get("ignoreUriCase")), "method": spec.get("method"),
            "authority": spec.get("authority"), "port": spec.get("port"), "headers": maps("headers"),
            "withoutHeaders": maps("withoutHeaders"), "queryParams": maps("queryParams")}


def vs_rewrite(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """A rewrite: uri replaces a matched prefix (else the whole path); authority the Host."""
    if not spec:
        return None
    return {"uri": spec.get("uri"), "replace": "prefix", "authority": spec.get("authority")}


def vs_retries(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """HTTPRetry with Istio's defaults (None: the route has none, so the mesh default applies)."""
    if spec is None:
        return None
    retry_on, codes = DEFAULT_RETRY_ON, [503]
    if spec.get("retryOn"):
        tokens = [t.strip() for t in spec["retryOn"].split(",") if t.strip()]
        codes = [int(t) for t in tokens if t.isdigit()]
        retry_on = [t for t in tokens if not t.isdigit()]
        if codes and "retriable-status-codes" not in retry_on:
            retry_on.append("retriable-status-codes")
    return {"attempts": spec.get("attempts", 0), "perTryTimeout": seconds(spec.get("perTryTimeout")),
            "retryOn": retry_on, "retriableStatusCodes": codes, "backoff": seconds(spec.get("backoff"))}


def vs_fault(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """HTTPFaultInjection; a percentage left out means no request (Istio's documented default)."""
    if not spec:
        return None
    delay, abort = spec.get("delay"), spec.get("abort")

    def percent(part: dict[str, Any]) -> float:
        return float((part.get("percentage") or {}).get("value", part.get("percent", 0)))
    return {"delay": {"fixedDelay": seconds(delay["fixedDelay"]), "percentage": percent(delay)} if delay else None,
            "abort": {"httpStatus": abort["httpStatus"], "percentage": percent(abort)} if abort else None}


def header_operations(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """set/add/remove, each present."""
    if not spec:
        return None
    return {"set": dict(spec.get("set") or {}), "add": dict(spec.get("add") or {}), "remove": list(spec.get("remove")
                                                                                                  or [])}


def seconds(duration: str | None) -> float | None:
    """A duration string in seconds (None stays None)."""
    return None if duration is None else parse_duration(duration)


# --- HTTPRoute ---------------------------------------------------------------------------------------------


def gateway_routes(rule: dict[str, Any], index: int, namespace: str, port: int | None) -> list[dict[str, Any]]:
    """One HTTPRoute rule as one normalized route per match (precedence orders matches, not rules)."""
    filters = {f["type"]: f for f in rule.get("filters", [])}
    request = filters.get("RequestHeaderModifier", {}).get("requestHeaderModifier")
    response = filters.get("ResponseHeaderModifier", {}).get("responseHeaderModifier")
    rewrite = filters.get("URLRewrite", {}).get("urlRewrite")
    timeouts = rule.get("timeouts", {})
    backends = [{"service": f"{b['name']}.{namespace}", "subset": None, "port": b.get("port"),
                 "weight": b.get("weight", 1)} for b in rule.get("backendRefs", [])]
    base = {"name": rule.get("name") or f"rule-{index}", "destinations": backends,
            "directResponse": None if backends else {"status": 500, "body": ""},
            "rewrite": gateway_rewrite(rewrite), "requestHeaders": gateway_headers(request),
            "responseHeaders": gateway_headers(response), "timeout": seconds(timeouts.get("request")) or None,
            "retries": gateway_retry(rule.get("retry"), seconds(timeouts.get("backendRequest"))), "fault": None}
    return [{**base, "matches": [gateway_match(m, port)]} for m in rule.get("matches") or [{}]]


def gateway_match(spec: dict[str, Any], port: int | None) -> dict[str, Any]:
    """One HTTPRouteMatch, normalized (path defaults to PathPrefix "/")."""
    path = spec.get("path", {})
    kind = {"Exact": "exact", "PathPrefix": "pathPrefix", "RegularExpression": "regex"}[path.get("type", "PathPrefix")]

    def values(name: str, lower: bool) -> dict[str, dict[str, str]]:
        return {(m["name"].lower() if lower else m["name"]):
                {"regex" if m.get("type") == "RegularExpression" else "exact": m["value"]}
                for m in spec.get(name, [])}
    return {"uri": {kind: path.get("value", "/")}, "ignoreUriCase": False,
            "method": {"exact": spec["method"]} if "method" in spec else None, "authority": None, "port": port,
            "headers": values("headers", True), "withoutHeaders": {}, "queryParams": values("queryParams", False)}


def gateway_headers(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """A header modifier filter as set/add/remove."""
    if not spec:
        return None
    return {"set": {h["name"]: h["value"] for h in spec.get("set", [])},
            "add": {h["name"]: h["value"] for h in spec.get("add", [])}, "remove": list(spec.get("remove", []))}


def gateway_rewrite(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """URLRewrite: hostname, and a full-path or prefix replacement."""
    if not spec:
        return None
    path = spec.get("path") or {}
    full = path.get("type") == "ReplaceFullPath"
    uri = path.get("replaceFullPath") if full else path.get("replacePrefixMatch")
    return {"uri": uri, "replace": "full" if full else "prefix", "authority": spec.get("hostname")}


def gateway_retry(spec: dict[str, Any] | None, backend_timeout: float | None) -> dict[str, Any] | None:
    """retry (and timeouts.backendRequest as the per-try timeout) with Istio's defaults."""
    if spec is None and backend_timeout is None:
        return None
    spec = spec or {}
    return {"attempts": spec.get("attempts", 2), "perTryTimeout": backend_timeout, "retryOn": DEFAULT_RETRY_ON,
            "retriableStatusCodes": spec.get("codes", [503]), "backoff": seconds(spec.get("backoff"))}


# --- DestinationRule ---------------------------------------------------------------------------------------


def destination_rule(obj: ConfigObject) -> dict[str, Any]:
    """A DestinationRule with every policy filled in (a subset's fields replace the rule's)."""
    top = obj.spec.get("trafficPolicy", {})
    subsets = {s["name"]: {"labels": dict(s.get("labels", {})),
                           "trafficPolicy": traffic_policy({**top, **s.get("trafficPolicy", {})})}
               for s in obj.spec.get("subsets", [])}
    return {"service": service_key(obj.spec["host"], obj.namespace), "source": source(obj), "shadowed": [],
            "trafficPolicy": traffic_policy(top), "subsets": subsets}


def traffic_policy(spec: dict[str, Any]) -> dict[str, Any]:
    """loadBalancer, connectionPool and outlierDetection with Istio's defaults."""
    simple = (spec.get("loadBalancer") or {}).get("simple", "UNSPECIFIED")
    tcp, http = (spec.get("connectionPool") or {}).get("tcp", {}), (spec.get("connectionPool") or {}).get("http", {})
    pool = {**DEFAULT_POOL, **{k: v for k, v in {**tcp, **http}.items()}}
    for name in ("connectTimeout", "idleTimeout"):
        if isinstance(pool[name], str):
            pool[name] = parse_duration(pool[name])
    outlier = spec.get("outlierDetection")
    if outlier is not None:
        outlier = {**DEFAULT_OUTLIER, **outlier}
        for name in ("interval", "baseEjectionTime"):
            if isinstance(outlier[name], str):
                outlier[name] = parse_duration(outlier[name])
    return {"loadBalancer": LOAD_BALANCER_NAMES.get(simple, simple), "connectionPool": pool,
            "outlierDetection": outlier}
