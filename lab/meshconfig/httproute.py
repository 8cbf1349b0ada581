"""The spec of Gateway API HTTPRoute (gateway.networking.k8s.io/v1) for the mesh, checked field by field.

meshlab has no Gateways: an HTTPRoute attaches to a Service (GAMMA, parentRefs with
`group: ""` and `kind: Service`, in the route's namespace) and routes the requests sent to
that service. Supported: matches (path Exact/PathPrefix/RegularExpression, headers,
queryParams, method), backendRefs to Services of the same namespace with weights, the
RequestHeaderModifier, ResponseHeaderModifier and URLRewrite filters, timeouts (request,
backendRequest) and retry (attempts, codes, backoff; in the standard channel since
Gateway API v1.7, experimental before). Everything else is refused by name. Durations use
the Gateway API format (GEP-2257: `1h`, `500ms`, `1m30s`).
"""

from __future__ import annotations

import re
from typing import Any

from yaml.nodes import MappingNode
from yaml.nodes import Node as YamlNode

from lab.meshconfig.networking import NetworkingWalker
from lab.yamlsource import DNS_LABEL, join

HTTP_ROUTE_SPEC = {"parentRefs": True, "rules": False}
PARENT_REF = {"group": False, "kind": False, "namespace": False, "name": True, "port": False}
RULE = {"name": False, "matches": False, "filters": False, "backendRefs": False, "timeouts": False, "retry": False}
ROUTE_MATCH = {"path": False, "headers": False, "queryParams": False, "method": False}
PATH_MATCH = {"type": False, "value": False}
VALUE_MATCH = {"type": False, "name": True, "value": True}
FILTER = {"type": True, "requestHeaderModifier": False, "responseHeaderModifier": False, "urlRewrite": False}
HEADER_MODIFIER = {"set": False, "add": False, "remove": False}
HEADER_VALUE = {"name": True, "value": True}
URL_REWRITE = {"hostname": False, "path": False}
PATH_MODIFIER = {"type": True, "replaceFullPath": False, "replacePrefixMatch": False}
BACKEND_REF = {"group": False, "kind": False, "name": True, "namespace": False, "port": True, "weight": False}
TIMEOUTS = {"request": False, "backendRequest": False}
RETRY = {"attempts": False, "codes": False, "backoff": False}

PATH_TYPES = ("Exact", "PathPrefix", "RegularExpression")
VALUE_TYPES = ("Exact", "RegularExpression")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
FILTER_FIELDS = {"RequestHeaderModifier": "requestHeaderModifier", "ResponseHeaderModifier": "responseHeaderModifier",
                 "URLRewrite": "urlRewrite"}
UNSUPPORTED_FILTERS = {"RequestRedirect": "redirects are not supported", "RequestMirror": "mirroring is not "
                       "supported", "ExtensionRef": "meshlab has no filter extensions", "CORS": "CORS is not supported"}
GATEWAY_DURATION = re.compile(r"(?:[0-9]{1,5}(?:h|m|s|ms)){1,4}")

UNSUPPORTED: dict[str, list[tuple[dict[str, bool], str]]] = {
    "hostnames": [(HTTP_ROUTE_SPEC, "a route attached to a Service routes the requests sent to that service, "
                                    "whatever their host")],
    "sectionName": [(PARENT_REF, "use port")],
    "sessionPersistence": [(RULE, "meshlab's proxies keep no sessions")],
    "filters": [(BACKEND_REF, "put filters on the rule")],
    "requestRedirect": [(FILTER, "redirects are not supported")],
    "requestMirror": [(FILTER, "mirroring is not supported")],
    "extensionRef": [(FILTER, "meshlab has no filter extensions")],
    "cors": [(FILTER, "CORS is not supported")],
}


class GatewayWalker(NetworkingWalker):
    """Checks HTTPRoute specs (Gateway API for the mesh)."""

    def unknown(self, name: str, schema: dict[str, bool]) -> str:
        """Name the reason for Gateway API fields meshlab refuses."""
        for owner, message in UNSUPPORTED.get(name, ()):
            if owner is schema:
                return f"field '{name}' is not supported: {message}"
        return super().unknown(name, schema)

    def http_route_spec(self, node: YamlNode | None, path: str, namespace: str) -> dict[str, Any]:
        """An HTTPRoute spec: parentRefs (Services) and rules."""
        known = len(self.problems)
        f = self.fields(node, path, HTTP_ROUTE_SPEC)
        for item_path, item in self.items(f, "parentRefs", path, "parent reference", required=True) or []:
            self.parent_ref(item, item_path, namespace)
        for item_path, item in self.items(f, "rules", path, "rule") or []:
            self.route_rule(item, item_path, namespace)
        return self.canonical(node, path, known)

    def parent_ref(self, node: YamlNode, path: str, namespace: str) -> None:
        """A parent: a Service (`group: ""`, `kind: Service`) of the route's namespace, maybe one port of it."""
        f = self.fields(node, path, PARENT_REF)
        kind = self.string(f.get("kind"), join(path, "kind"))
        group = self.string(f.get("group"), join(path, "group"))
        if isinstance(node, MappingNode) and (kind != "Service" or group != ""):
            at = f.get("kind") or node
            self.report(at, path, f"parentRefs must name a Service (group: \"\", kind: Service), not "
                                  f"{kind or 'Gateway'}: meshlab has no Gateways; attach the route to the service "
                                  "it routes (Gateway API for the mesh)")
        self.name(f.get("name"), join(path, "name"), "service name")
        other = self.string(f.get("namespace"), join(path, "namespace"))
        if other is not None and other != namespace:
            self.report(f["namespace"], join(path, "namespace"), "a parent Service in another namespace (a consumer "
                                                                 "route) is not supported; put the route in the "
                                                                 "service's namespace")
        self.port(f.get("port"), join(path, "port"))

    def route_rule(self, node: YamlNode, path: str, namespace: str) -> None:
        """One rule: matches (OR'ed), filters, weighted backendRefs, timeouts, retry."""
        f = self.fields(node, path, RULE)
        self.string(f.get("name"), join(path, "name"))
        prefix_match = False
        for item_path, item in self.items(f, "matches", path, "match") or []:
            prefix_match |= self.route_match(item, item_path)
        seen: dict[str, int] = {}
        for item_path, item in self.items(f, "filters", path, "filter") or []:
            self.filter(item, item_path, seen, prefix_match or "matches" not in f)
        for item_path, item in self.items(f, "backendRefs", path, "backend reference") or []:
            self.backend_ref(item, item_path, namespace)
        if "timeouts" in f:
            t = self.fields(f["timeouts"], join(path, "timeouts"), TIMEOUTS)
            request = self.duration(t.get("request"), join(path, "timeouts.request"), True, GATEWAY_DURATION,
                                    "'10s' or '500ms'")
            backend = self.duration(t.get("backendRequest"), join(path, "timeouts.backendRequest"), False,
                                    GATEWAY_DURATION, "'10s' or '500ms'")
            if request and backend and backend > request:
                self.report(t["backendRequest"], join(path, "timeouts.backendRequest"),
                            "backendRequest must not be longer than request")
        if "retry" in f:
            r = self.fields(f["retry"], join(path, "retry"), RETRY)
            self.integer(r.get("attempts"), join(path, "retry.attempts"), 0, 2**31 - 1)
            for code_path, code in self.items(r, "codes", join(path, "retry"), "status code") or []:
                self.integer(code, code_path, 400, 599)
            self.duration(r.get("backoff"), join(path, "retry.backoff"), False, GATEWAY_DURATION, "'100ms' or '1s'")

    def route_match(self, node: YamlNode, path: str) -> bool:
        """One match: path, headers, queryParams, method (all must hold); whether it is a PathPrefix match."""
        f = self.fields(node, path, ROUTE_MATCH)
        kind = "PathPrefix"
        if "path" in f:
            p = self.fields(f["path"], join(path, "path"), PATH_MATCH)
            kind = self.choice(p.get("type"), join(path, "path.type"), PATH_TYPES, "path match type") or kind
            value = self.string(p.get("value"), join(path, "path.value"))
            if value is not None and kind == "RegularExpression":
                self.regex(value, p["value"], join(path, "path.value"))
            elif value is not None and not value.startswith("/"):
                self.report(p["value"], join(path, "path.value"), f"path '{value}' must start with '/'")
        for name in ("headers", "queryParams"):
            for item_path, item in self.items(f, name, path, "match") or []:
                m = self.fields(item, item_path, VALUE_MATCH)
                kind_of = self.choice(m.get("type"), join(item_path, "type"), VALUE_TYPES, "match type")
                if name == "headers":
                    self.header_name(m.get("name"), join(item_path, "name"))
                else:
                    self.string(m.get("name"), join(item_path, "name"))
                value = self.string(m.get("value"), join(item_path, "value"))
                if value is not None and kind_of == "RegularExpression":
                    self.regex(value, m["value"], join(item_path, "value"))
        self.choice(f.get("method"), join(path, "method"), METHODS, "method")
        return kind == "PathPrefix"

    def filter(self, node: YamlNode, path: str, seen: dict[str, int], prefix_match: bool) -> None:
        """One filter: its type, and the settings of that type (each type once per rule)."""
        f = self.fields(node, path, FILTER)
        kind = self.string(f.get("type"), join(path, "type"))
        if kind is None:
            return
        if kind in UNSUPPORTED_FILTERS:
            self.report(f["type"], join(path, "type"), f"filter {kind} is not supported ({UNSUPPORTED_FILTERS[kind]})")
            return
        if kind not in FILTER_FIELDS:
            self.report(f["type"], join(path, "type"), f"unknown filter type '{kind}'; expected one of: "
                                                       f"{', '.join(FILTER_FIELDS)}")
            return
        self.unique(seen, kind, f"filter {kind}", f["type"], join(path, "type"))
        field = FILTER_FIELDS[kind]
        for other in set(FILTER_FIELDS.values()) - {field}:
            if other in f:
                self.report(f[other], join(path, other), f"{other} does not go with type {kind}")
        if field not in f:
            self.report(node, path, f"filter {kind} needs its settings in '{field}'")
            return
        if kind == "URLRewrite":
            self.url_rewrite(f[field], join(path, field), prefix_match)
        else:
            self.header_modifier(f[field], join(path, field))

    def header_modifier(self, node: YamlNode, path: str) -> None:
        """set and add ([{name, value}]) and remove ([names])."""
        f = self.fields(node, path, HEADER_MODIFIER)
        for name in ("set", "add"):
            for item_path, item in self.items(f, name, path, "header") or []:
                h = self.fields(item, item_path, HEADER_VALUE)
                self.header_name(h.get("name"), join(item_path, "name"))
                self.string(h.get("value"), join(item_path, "value"))
        self.text_list(f.get("remove"), join(path, "remove"))

    def url_rewrite(self, node: YamlNode, path: str, prefix_match: bool) -> None:
        """hostname, and path (ReplaceFullPath, or ReplacePrefixMatch after a PathPrefix match)."""
        f = self.fields(node, path, URL_REWRITE)
        self.string(f.get("hostname"), join(path, "hostname"))
        if "path" not in f:
            return
        p = self.fields(f["path"], join(path, "path"), PATH_MODIFIER)
        kind = self.choice(p.get("type"), join(path, "path.type"), ("ReplaceFullPath", "ReplacePrefixMatch"),
                           "path modifier type")
        wanted = {"ReplaceFullPath": "replaceFullPath", "ReplacePrefixMatch": "replacePrefixMatch"}.get(kind or "")
        if wanted and wanted not in p:
            self.report(f["path"], join(path, "path"), f"type {kind} needs {wanted}")
        if kind == "ReplacePrefixMatch" and not prefix_match:
            self.report(p["type"], join(path, "path.type"), "ReplacePrefixMatch needs a PathPrefix match")
        for name in ("replaceFullPath", "replacePrefixMatch"):
            value = self.string(p.get(name), join(path, f"path.{name}"))
            if value is not None and name != wanted:
                self.report(p[name], join(path, f"path.{name}"), f"{name} does not go with type {kind}")
            elif value is not None and not value.startswith("/"):
                self.report(p[name], join(path, f"path.{name}"), f"path '{value}' must start with '/'")

    def backend_ref(self, node: YamlNode, path: str, namespace: str) -> None:
        """A backend: a Service of the route's namespace, its port, and a weight (default 1)."""
        f = self.fields(node, path, BACKEND_REF)
        kind = self.string(f.get("kind"), join(path, "kind"))
        group = self.string(f.get("group"), join(path, "group"))
        if (kind or "Service") != "Service" or (group or "") != "":
            self.report(f.get("kind") or f["group"], path, f"backendRefs must be Services, not {kind}")
        self.name(f.get("name"), join(path, "name"), "service name", DNS_LABEL)
        other = self.string(f.get("namespace"), join(path, "namespace"))
        if other is not None and other != namespace:
            self.report(f["namespace"], join(path, "namespace"), "a backend in another namespace needs a "
                                                                 "ReferenceGrant, which meshlab does not support")
        self.port(f.get("port"), join(path, "port"))
        self.integer(f.get("weight"), join(path, "weight"), 0, 1_000_000)
