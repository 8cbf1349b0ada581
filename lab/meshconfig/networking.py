"""The specs of Istio's networking kinds, VirtualService and DestinationRule, checked field by field.

Follows Istio's API reference (networking.istio.io/v1; v1beta1 and v1alpha3 are the same
schema). Every field Istio defines is either checked here or refused by name with the
reason (`UNSUPPORTED`); nothing is ignored. A check returns the spec as written, as
canonical plain data; `lab/meshconfig/routetables.py` turns it into the agents' route
tables. Hosts name services of the lab: a short name (`reviews`, in the object's
namespace) or the FQDN `reviews.bookinfo.svc.cluster.local`. Durations are Go-style
strings (`500ms`, `0.5s`, `1m`), as Istio accepts them.
"""

from __future__ import annotations

import re
from typing import Any

from yaml.nodes import MappingNode
from yaml.nodes import Node as YamlNode

from lab.meshconfig.security import SecurityWalker
from lab.yamlsource import DNS_LABEL, LABEL_KEY, describe, is_scalar, join

# The fields each mapping accepts: {field: required}.
VIRTUAL_SERVICE = {"hosts": True, "gateways": False, "http": True}
HTTP_ROUTE = {"name": False, "match": False, "route": False, "directResponse": False, "rewrite": False,
              "timeout": False, "retries": False, "fault": False, "headers": False}
MATCH = {"name": False, "uri": False, "method": False, "authority": False, "headers": False, "port": False,
         "queryParams": False, "ignoreUriCase": False, "withoutHeaders": False}
STRING_MATCH = {"exact": False, "prefix": False, "regex": False}
ROUTE_DESTINATION = {"destination": True, "weight": False}
DESTINATION = {"host": True, "subset": False, "port": False}
PORT_SELECTOR = {"number": True}
DIRECT_RESPONSE = {"status": True, "body": False}
BODY = {"string": True}
REWRITE = {"uri": False, "authority": False}
RETRIES = {"attempts": False, "perTryTimeout": False, "retryOn": False, "backoff": False}
FAULT = {"delay": False, "abort": False}
DELAY = {"fixedDelay": True, "percentage": False, "percent": False}
ABORT = {"httpStatus": True, "percentage": False}
PERCENT = {"value": True}
HEADERS = {"request": False, "response": False}
HEADER_OPERATIONS = {"set": False, "add": False, "remove": False}
DESTINATION_RULE = {"host": True, "trafficPolicy": False, "subsets": False}
SUBSET = {"name": True, "labels": False, "trafficPolicy": False}
TRAFFIC_POLICY = {"loadBalancer": False, "connectionPool": False, "outlierDetection": False}
LOAD_BALANCER = {"simple": True}
CONNECTION_POOL = {"tcp": False, "http": False}
TCP_SETTINGS = {"maxConnections": False, "connectTimeout": False}
HTTP_SETTINGS = {"http1MaxPendingRequests": False, "http2MaxRequests": False, "maxRequestsPerConnection": False,
                 "maxRetries": False, "idleTimeout": False}
OUTLIER_DETECTION = {"consecutive5xxErrors": False, "consecutiveGatewayErrors": False, "interval": False,
                     "baseEjectionTime": False, "maxEjectionPercent": False, "minHealthPercent": False}

LOAD_BALANCERS = ("UNSPECIFIED", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN", "RANDOM", "PASSTHROUGH")
RETRY_ON = ("5xx", "gateway-error", "reset", "connect-failure", "refused-stream", "retriable-4xx",
            "retriable-status-codes", "unavailable", "cancelled")
UINT32 = 2**32 - 1

_MIRROR = "meshlab's proxies send each request to one destination (no mirroring)"
_EVERYWHERE = "meshlab config is visible in every namespace"
# Istio fields meshlab refuses: {field: [(the mapping it belongs to, why)]}; reported as "field 'x' is not
# supported: <why>".
UNSUPPORTED: dict[str, list[tuple[dict[str, bool], str]]] = {
    "tls": [(VIRTUAL_SERVICE, "meshlab routes HTTP only (use http)"),
            (TRAFFIC_POLICY, "traffic between meshlab proxies is always Istio mutual TLS")],
    "tcp": [(VIRTUAL_SERVICE, "meshlab routes HTTP only (use http)")],
    "exportTo": [(VIRTUAL_SERVICE, _EVERYWHERE), (DESTINATION_RULE, _EVERYWHERE)],
    "workloadSelector": [(DESTINATION_RULE, "a rule applies to every client of the host")],
    "redirect": [(HTTP_ROUTE, "use route or directResponse")],
    "delegate": [(HTTP_ROUTE, "delegation serves gateways, and meshlab has none")],
    "mirror": [(HTTP_ROUTE, _MIRROR)], "mirrors": [(HTTP_ROUTE, _MIRROR)],
    "mirrorPercentage": [(HTTP_ROUTE, _MIRROR)], "mirrorPercent": [(HTTP_ROUTE, _MIRROR)],
    "mirror_percent": [(HTTP_ROUTE, _MIRROR)],
    "corsPolicy": [(HTTP_ROUTE, "meshlab's proxies do not answer CORS preflights")],
    "scheme": [(MATCH, "meshlab's proxies see plain HTTP")],
    "sourceLabels": [(MATCH, "route by headers, or control access with an AuthorizationPolicy")],
    "sourceNamespace": [(MATCH, "route by headers, or control access with an AuthorizationPolicy")],
    "gateways": [(MATCH, "meshlab has no gateways")],
    "statPrefix": [(MATCH, "meshlab's metrics have no per-route prefixes")],
    "headers": [(ROUTE_DESTINATION, "set headers on the route, not per destination")],
    "uriRegexRewrite": [(REWRITE, "use uri")],
    "retryRemoteLocalities": [(RETRIES, "meshlab has one locality")],
    "retryIgnorePreviousHosts": [(RETRIES, "retries may go to any endpoint")],
    "exponentialDelay": [(DELAY, "use fixedDelay")],
    "grpcStatus": [(ABORT, "use httpStatus")],
    "http2Error": [(ABORT, "use httpStatus")],
    "bytes": [(BODY, "use string")],
    "portLevelSettings": [(TRAFFIC_POLICY, "one policy applies to all ports")],
    "tunnel": [(TRAFFIC_POLICY, "meshlab tunnels with HBONE only")],
    "proxyProtocol": [(TRAFFIC_POLICY, "meshlab's proxies do not send PROXY protocol headers")],
    "retryBudget": [(TRAFFIC_POLICY, "use connectionPool.http.maxRetries")],
    "consistentHash": [(LOAD_BALANCER, "use simple")],
    "localityLbSetting": [(LOAD_BALANCER, "meshlab has one locality")],
    "warmupDurationSecs": [(LOAD_BALANCER, "endpoints take full load at once")],
    "warmup": [(LOAD_BALANCER, "endpoints take full load at once")],
    "tcpKeepalive": [(TCP_SETTINGS, "the operating system's keepalive settings apply")],
    "maxConnectionDuration": [(TCP_SETTINGS, "connections live until idle")],
    "idleTimeout": [(TCP_SETTINGS, "use http.idleTimeout")],
    "h2UpgradePolicy": [(HTTP_SETTINGS, "meshlab's proxies speak HTTP/1.1 to applications")],
    "useClientProtocol": [(HTTP_SETTINGS, "meshlab's proxies speak HTTP/1.1 to applications")],
    "maxConcurrentStreams": [(HTTP_SETTINGS, "meshlab's proxies speak HTTP/1.1 to applications")],
    "consecutiveErrors": [(OUTLIER_DETECTION, "it is deprecated in Istio; use consecutive5xxErrors")],
    "splitExternalLocalOriginErrors": [(OUTLIER_DETECTION, "connection errors always count as 5xx")],
    "consecutiveLocalOriginFailures": [(OUTLIER_DETECTION, "connection errors always count as 5xx")],
}

GO_DURATION = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h)")
UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
FQDN = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc(\.[a-z0-9.-]+)?\Z")
HEADER_NAME = re.compile(r"[-!#$%&'*+.^_`|~0-9a-z]+\Z")  # as Istio matches them: lower case
HEADER_NAME_ANY_CASE = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+\Z")
_GO_DURATIONS = re.compile(f"(?:{GO_DURATION.pattern})+")


def parse_duration(text: str) -> float:
    """Seconds in a validated duration string (`1h30m`, `0.5s`, `250ms`)."""
    return sum(float(m.group(1)) * UNIT_SECONDS[m.group(2)]
               for m in re.finditer(r"((?:\d+(?:\.\d*)?|\.\d+))(ns|us|µs|ms|s|m|h)", text))


def service_key(host: str, namespace: str) -> str | None:
    """`name.namespace` for a short service name or an FQDN `name.ns.svc[.domain]`; None for anything else."""
    if DNS_LABEL.match(host):
        return f"{host}.{namespace}"
    m = FQDN.match(host)
    return f"{m.group(1)}.{m.group(3)}" if m else None


def without_nulls(value: Any) -> Any:
    """Plain data with null fields dropped (the canonical form of a spec)."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


class NetworkingWalker(SecurityWalker):
    """Checks VirtualService and DestinationRule specs; `lab.meshconfig.parse` adds the object around them."""

    def unknown(self, name: str, schema: dict[str, bool]) -> str:
        """Name the reason for Istio networking fields meshlab refuses."""
        for owner, message in UNSUPPORTED.get(name, ()):
            if owner is schema:
                return f"field '{name}' is not supported: {message}"
        return super().unknown(name, schema)

    def canonical(self, node: YamlNode | None, path: str, known: int) -> dict[str, Any]:
        """The spec as plain data, once it checked out (nothing new since `known` problems)."""
        if node is None or len(self.problems) != known:
            return {}
        return without_nulls(self.plain(node, path)) or {}

    # --- VirtualService ---------------------------------------------------------------------------------

    def virtual_service(self, node: YamlNode | None, path: str, namespace: str) -> dict[str, Any]:
        """A VirtualService spec: hosts (services of the lab), gateways (only `mesh`), http routes."""
        known = len(self.problems)
        f = self.fields(node, path, VIRTUAL_SERVICE)
        for item_path, item in self.items(f, "hosts", path, "host", required=True) or []:
            self.host(item, item_path, namespace)
        for item_path, item in self.items(f, "gateways", path, "gateway") or []:
            if self.string(item, item_path) not in (None, "mesh"):
                self.report(item, item_path, "only the 'mesh' gateway is supported (meshlab has no gateways)")
        routes = self.items(f, "http", path, "HTTP route", required=True) or []
        for i, (item_path, item) in enumerate(routes):
            self.http_route(item, item_path, namespace, last=i == len(routes) - 1)
        return self.canonical(node, path, known)

    def host(self, node: YamlNode, path: str, namespace: str) -> str | None:
        """A service host: `name` (in `namespace`) or `name.ns.svc.cluster.local`; its service key."""
        host = self.string(node, path)
        if host is None:
            return None
        key = service_key(host, namespace)
        if key is None:
            hint = ""
            if re.fullmatch(r"[a-z0-9-]+\.[a-z0-9-]+", host):
                name, ns = host.split(".")
                hint = f" (Istio reads '{host}' as an external host; write '{name}.{ns}.svc.cluster.local')"
            self.report(node, path, f"host '{host}' is not a service of the lab: use a short name like 'reviews' or "
                                    f"an FQDN like 'reviews.{namespace}.svc.cluster.local'{hint}")
        return key

    def http_route(self, node: YamlNode, path: str, namespace: str, last: bool) -> None:
        """One http[] route: matches, and a route or a directResponse, with what to do on the way."""
        f = self.fields(node, path, HTTP_ROUTE)
        self.string(f.get("name"), join(path, "name"))
        matches = self.items(f, "match", path, "match")
        for item_path, item in matches or []:
            self.match(item, item_path)
        if not matches and not last and isinstance(node, MappingNode):
            self.report(node, path, "only the last HTTP route may have no match (this one hides the ones after it)")
        if ("route" in f) == ("directResponse" in f) and isinstance(node, MappingNode):
            self.report(node, path, "set exactly one of route and directResponse")
        destinations = self.items(f, "route", path, "route destination", required=True) or []
        weights = [self.route_destination(n, p, namespace) for p, n in destinations]
        if len(weights) > 1 and sum(w or 0 for w in weights) <= 0:
            self.report(f["route"], join(path, "route"), "give the destinations weights (they are split by weight; "
                                                         "Istio's examples make them add up to 100)")
        if "directResponse" in f:
            d = self.fields(f["directResponse"], join(path, "directResponse"), DIRECT_RESPONSE)
            self.integer(d.get("status"), join(path, "directResponse.status"), 200, 599)
            if "body" in d:
                b = self.fields(d["body"], join(path, "directResponse.body"), BODY)
                self.string(b.get("string"), join(path, "directResponse.body.string"))
        if "rewrite" in f:
            r = self.fields(f["rewrite"], join(path, "rewrite"), REWRITE)
            uri = self.string(r.get("uri"), join(path, "rewrite.uri"))
            if uri is not None and not uri.startswith("/"):
                self.report(r["uri"], join(path, "rewrite.uri"), f"rewrite uri '{uri}' must start with '/'")
            self.string(r.get("authority"), join(path, "rewrite.authority"))
        self.duration(f.get("timeout"), join(path, "timeout"), allow_zero=True)
        if "retries" in f:
            self.retries(f["retries"], join(path, "retries"))
        if "fault" in f:
            self.fault(f["fault"], join(path, "fault"))
        if "headers" in f:
            h = self.fields(f["headers"], join(path, "headers"), HEADERS)
            for side in ("request", "response"):
                if side in h:
                    self.header_operations(h[side], join(path, f"headers.{side}"))

    def match(self, node: YamlNode, path: str) -> None:
        """One HTTPMatchRequest: all of its fields must hold."""
        f = self.fields(node, path, MATCH)
        self.string(f.get("name"), join(path, "name"))
        for name in ("uri", "method", "authority"):
            if name in f:
                self.string_match(f[name], join(path, name), presence=False)
        for name in ("headers", "withoutHeaders", "queryParams"):
            for key, key_node, value in self.pairs(f[name], join(path, name)) if name in f else []:
                if name != "queryParams" and not HEADER_NAME.match(key):
                    self.report(key_node, join(path, f"{name}.{key}"),
                                f"header name '{key}' must be lower case (Istio matches headers by lower-case name)")
                self.string_match(value, join(path, f"{name}.{key}"), presence=name != "queryParams",
                                  prefix=name != "queryParams")
        self.port(f.get("port"), join(path, "port"))
        self.boolean(f.get("ignoreUriCase"), join(path, "ignoreUriCase"))
        if isinstance(node, MappingNode) and not node.value:
            self.report(node, path, "match is empty; leave the match out to match every request")

    def string_match(self, node: YamlNode, path: str, presence: bool, prefix: bool = True) -> None:
        """A StringMatch: exactly one of exact, prefix, regex (`{}` checks presence where allowed)."""
        f = self.fields(node, path, STRING_MATCH)
        if not isinstance(node, MappingNode):
            return
        if len(f) > 1 or (not f and not presence):
            self.report(node, path, "set exactly one of exact, prefix and regex")
        if "prefix" in f and not prefix:
            self.report(f["prefix"], join(path, "prefix"), "prefix matching of query parameters is not supported "
                                                            "by Istio; use exact or regex")
        for kind, value_node in f.items():
            value = self.string(value_node, join(path, kind))
            if kind == "regex" and value is not None:
                self.regex(value, value_node, join(path, kind))

    def regex(self, value: str, node: YamlNode, path: str) -> None:
        """A regular expression (matched against whole values)."""
        try:
            re.compile(value)
        except re.error as e:
            self.report(node, path, f"invalid regex '{value}': {e}")

    def route_destination(self, node: YamlNode, path: str, namespace: str) -> int | None:
        """One route[] entry: destination host (a service), subset?, port?; its weight."""
        f = self.fields(node, path, ROUTE_DESTINATION)
        if "destination" in f:
            d = self.fields(f["destination"], join(path, "destination"), DESTINATION)
            if "host" in d:
                self.host(d["host"], join(path, "destination.host"), namespace)
            subset = self.string(d.get("subset"), join(path, "destination.subset"))
            if subset is not None and not DNS_LABEL.match(subset):
                self.report(d["subset"], join(path, "destination.subset"), f"invalid subset name '{subset}'")
            if "port" in d:
                p = self.fields(d["port"], join(path, "destination.port"), PORT_SELECTOR)
                self.port(p.get("number"), join(path, "destination.port.number"))
        return self.integer(f.get("weight"), join(path, "weight"), 0, 100)

    def retries(self, node: YamlNode, path: str) -> None:
        """HTTPRetry: attempts, perTryTimeout, retryOn (conditions and status codes), backoff."""
        f = self.fields(node, path, RETRIES)
        self.integer(f.get("attempts"), join(path, "attempts"), 0, UINT32)
        self.duration(f.get("perTryTimeout"), join(path, "perTryTimeout"))
        self.duration(f.get("backoff"), join(path, "backoff"))
        retry_on = self.string(f.get("retryOn"), join(path, "retryOn"))
        for token in (t.strip() for t in retry_on.split(",")) if retry_on is not None else ():
            code = int(token) if token.isdigit() else None
            if token not in RETRY_ON and not (code is not None and 100 <= code <= 599):
                self.report(f["retryOn"], join(path, "retryOn"),
                            f"unknown retry condition '{token}'; expected status codes or: {', '.join(RETRY_ON)}")

    def fault(self, node: YamlNode, path: str) -> None:
        """HTTPFaultInjection: delay (fixedDelay) and/or abort (httpStatus), each for a percentage."""
        f = self.fields(node, path, FAULT)
        if isinstance(node, MappingNode) and not node.value:
            self.report(node, path, "fault is empty; set delay or abort")
        if "delay" in f:
            d = self.fields(f["delay"], join(path, "delay"), DELAY)
            self.duration(d.get("fixedDelay"), join(path, "delay.fixedDelay"))
            self.percentage(d, join(path, "delay"))
        if "abort" in f:
            a = self.fields(f["abort"], join(path, "abort"), ABORT)
            self.integer(a.get("httpStatus"), join(path, "abort.httpStatus"), 200, 599)
            self.percentage(a, join(path, "abort"))

    def percentage(self, fields: dict[str, YamlNode], path: str) -> None:
        """`percentage.value` (0-100), or the deprecated integer `percent`."""
        if "percentage" in fields:
            p = self.fields(fields["percentage"], join(path, "percentage"), PERCENT)
            self.number(p.get("value"), join(path, "percentage.value"), 0, 100)
        self.integer(fields.get("percent"), join(path, "percent"), 0, 100)
        if "percentage" in fields and "percent" in fields:
            self.report(fields["percent"], join(path, "percent"), "percent is deprecated; set only percentage")

    def header_operations(self, node: YamlNode, path: str) -> None:
        """Header changes: set and add (name: value), remove (names)."""
        f = self.fields(node, path, HEADER_OPERATIONS)
        for name in ("set", "add"):
            if name in f:
                self.text_map(f[name], join(path, name), "header name", HEADER_NAME_ANY_CASE, numbers=False)
        self.text_list(f.get("remove"), join(path, "remove"))

    # --- DestinationRule --------------------------------------------------------------------------------

    def destination_rule(self, node: YamlNode | None, path: str, namespace: str) -> dict[str, Any]:
        """A DestinationRule spec: host, trafficPolicy, subsets (by labels, each with its own policy)."""
        known = len(self.problems)
        f = self.fields(node, path, DESTINATION_RULE)
        if "host" in f:
            self.host(f["host"], join(path, "host"), namespace)
        if "trafficPolicy" in f:
            self.traffic_policy(f["trafficPolicy"], join(path, "trafficPolicy"))
        seen: dict[str, int] = {}
        for item_path, item in self.items(f, "subsets", path, "subset") or []:
            s = self.fields(item, item_path, SUBSET)
            name = self.name(s.get("name"), join(item_path, "name"), "subset name")
            if name is not None:
                self.unique(seen, name, f"subset '{name}'", s["name"], join(item_path, "name"))
            labels = self.text_map(s.get("labels"), join(item_path, "labels"), "label name", LABEL_KEY,
                                   numbers=False)
            if isinstance(item, MappingNode) and not labels:
                self.report(item, item_path, "a subset needs labels to select its endpoints")
            if "trafficPolicy" in s:
                self.traffic_policy(s["trafficPolicy"], join(item_path, "trafficPolicy"))
        return self.canonical(node, path, known)

    def traffic_policy(self, node: YamlNode, path: str) -> None:
        """loadBalancer (simple), connectionPool (tcp, http), outlierDetection."""
        f = self.fields(node, path, TRAFFIC_POLICY)
        if "loadBalancer" in f:
            lb = self.fields(f["loadBalancer"], join(path, "loadBalancer"), LOAD_BALANCER)
            self.choice(lb.get("simple"), join(path, "loadBalancer.simple"), LOAD_BALANCERS, "load balancer")
        if "connectionPool" in f:
            pool = self.fields(f["connectionPool"], join(path, "connectionPool"), CONNECTION_POOL)
            tcp = self.fields(pool.get("tcp"), join(path, "connectionPool.tcp"), TCP_SETTINGS)
            self.integer(tcp.get("maxConnections"), join(path, "connectionPool.tcp.maxConnections"), 1, UINT32)
            self.duration(tcp.get("connectTimeout"), join(path, "connectionPool.tcp.connectTimeout"))
            http = self.fields(pool.get("http"), join(path, "connectionPool.http"), HTTP_SETTINGS)
            for name, low in (("http1MaxPendingRequests", 1), ("http2MaxRequests", 1),
                              ("maxRequestsPerConnection", 0), ("maxRetries", 0)):
                self.integer(http.get(name), join(path, f"connectionPool.http.{name}"), low, UINT32)
            self.duration(http.get("idleTimeout"), join(path, "connectionPool.http.idleTimeout"))
        if "outlierDetection" in f:
            o = self.fields(f["outlierDetection"], join(path, "outlierDetection"), OUTLIER_DETECTION)
            sub = join(path, "outlierDetection")
            self.integer(o.get("consecutive5xxErrors"), join(sub, "consecutive5xxErrors"), 0, UINT32)
            self.integer(o.get("consecutiveGatewayErrors"), join(sub, "consecutiveGatewayErrors"), 0, UINT32)
            self.duration(o.get("interval"), join(sub, "interval"))
            self.duration(o.get("baseEjectionTime"), join(sub, "baseEjectionTime"))
            self.integer(o.get("maxEjectionPercent"), join(sub, "maxEjectionPercent"), 0, 100)
            self.integer(o.get("minHealthPercent"), join(sub, "minHealthPercent"), 0, 100)

    # --- values -----------------------------------------------------------------------------------------

    def header_name(self, node: YamlNode | None, path: str) -> str | None:
        """An HTTP header name (a token)."""
        value = self.string(node, path)
        if value is not None and not HEADER_NAME_ANY_CASE.match(value):
            self.report(node, path, f"invalid header name '{value}'")
        return value

    def integer(self, node: YamlNode | None, path: str, low: int, high: int) -> int | None:
        """An integer (not a boolean, not quoted) in low..high."""
        if node is None:
            return None
        value = int(node.value) if is_scalar(node, "int") and node.value.lstrip("+-").isdigit() else None
        if value is None:
            self.report(node, path, f"expected an integer, got {describe(node)}")
        elif not low <= value <= high:
            self.report(node, path, f"{value} is out of range {low}-{high}")
            return None
        return value

    def number(self, node: YamlNode | None, path: str, low: float, high: float) -> float | None:
        """A number (integer or decimal) in low..high."""
        if node is None:
            return None
        if not (is_scalar(node, "int") or is_scalar(node, "float")):
            self.report(node, path, f"expected a number, got {describe(node)}")
            return None
        value = float(self.constructor.construct_object(node))
        if not low <= value <= high:
            self.report(node, path, f"{node.value} is out of range {low:g}-{high:g}")
            return None
        return value

    def duration(self, node: YamlNode | None, path: str, allow_zero: bool = False,
                 pattern: re.Pattern[str] | None = None, example: str = "'500ms', '2s' or '1m'") -> float | None:
        """A duration string; its seconds."""
        if node is None:
            return None
        text = node.value if is_scalar(node, "str") else None
        if text is None or not (pattern or _GO_DURATIONS).fullmatch(text):
            self.report(node, path, f"expected a duration like {example}, got {describe(node)}")
            return None
        seconds = parse_duration(text)
        if seconds <= 0 and not allow_zero:
            self.report(node, path, f"duration '{text}' must be more than zero")
        elif 0 < seconds < 0.001:
            self.report(node, path, f"duration '{text}' must be at least 1ms")
        return seconds

