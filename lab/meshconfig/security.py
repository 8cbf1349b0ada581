"""The specs of Istio's security kinds, PeerAuthentication and AuthorizationPolicy, checked field by field.

Follows Istio's API reference (security.istio.io/v1). Every field Istio defines for these
kinds is either checked here or rejected by name with the reason; nothing is ignored. What
a check returns is the spec as written, as canonical plain data (JSON-compatible, null
fields dropped, `portLevelMtls` ports as string keys): the store keeps it and
`meshlab get -o yaml` shows it.

Some AuthorizationPolicy attributes need an L7 proxy (`L7_SOURCE_FIELDS`,
`L7_OPERATION_FIELDS`, conditions outside `L4_CONDITION_KEYS`). They are valid here; the
waypoint enforces them, and a ztunnel that meets them fails closed (see
`agents/ztunnel/policy.py`).
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from yaml.nodes import MappingNode, SequenceNode
from yaml.nodes import Node as YamlNode

from lab.yamlsource import LABEL_KEY, LABEL_VALUE, YamlWalker, describe, is_scalar, join

ROOT_NAMESPACE = "istio-system"  # Istio's root namespace: policies here apply to the whole mesh
MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")
ACTIONS = ("ALLOW", "DENY", "AUDIT", "CUSTOM")
UNSUPPORTED_ACTIONS = {"AUDIT": "meshlab has no audit log sink", "CUSTOM": "meshlab has no external authorizers"}

# The fields each mapping accepts: {field: required}.
PEER_AUTHENTICATION_FIELDS = {"selector": False, "mtls": False, "portLevelMtls": False}
AUTHORIZATION_POLICY_FIELDS = {"selector": False, "targetRef": False, "targetRefs": False, "action": False,
                               "rules": False}
SELECTOR_FIELDS = {"matchLabels": False}
MTLS_FIELDS = {"mode": False}
TARGET_REF_FIELDS = {"group": False, "kind": True, "name": True, "namespace": False}
RULE_FIELDS = {"from": False, "to": False, "when": False}
CONDITION_FIELDS = {"key": True, "values": False, "notValues": False}

# Source and operation fields: {field: what their values are}.
SOURCE_VALUES = {"principals": "principal", "notPrincipals": "principal", "requestPrincipals": "text",
                 "notRequestPrincipals": "text", "namespaces": "text", "notNamespaces": "text", "ipBlocks": "ip",
                 "notIpBlocks": "ip", "remoteIpBlocks": "ip", "notRemoteIpBlocks": "ip"}
OPERATION_VALUES = {"hosts": "text", "notHosts": "text", "ports": "port", "notPorts": "port", "methods": "text",
                    "notMethods": "text", "paths": "text", "notPaths": "text"}
SOURCE_FIELDS = dict.fromkeys(SOURCE_VALUES, False)
OPERATION_FIELDS = dict.fromkeys(OPERATION_VALUES, False)
CLAUSES = {"source": (SOURCE_FIELDS, SOURCE_VALUES), "operation": (OPERATION_FIELDS, OPERATION_VALUES)}

# What only an L7 proxy can check (Istio's ztunnel treats the same set as HTTP attributes).
L7_SOURCE_FIELDS = frozenset({"requestPrincipals", "notRequestPrincipals", "remoteIpBlocks", "notRemoteIpBlocks"})
L7_OPERATION_FIELDS = frozenset({"hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"})
L4_CONDITION_KEYS = {"source.ip": "ip", "source.namespace": "text", "source.principal": "principal",
                     "destination.ip": "ip", "destination.port": "port"}
L7_CONDITION_KEYS = {"remote.ip": "ip", "request.auth.principal": "text", "request.auth.audiences": "text",
                     "request.auth.presenter": "text", "connection.sni": "text"}
L7_CONDITION_PATTERN = re.compile(r"request\.headers\[[^\[\]]+\]\Z|request\.auth\.claims(\[[^\[\]]+\])+\Z")
CONDITION_KEYS = (*L4_CONDITION_KEYS, *L7_CONDITION_KEYS, "request.headers[<name>]", "request.auth.claims[<name>]")

# Fields Istio has that meshlab refuses, with the reason: {field: (the mapping it belongs to, message)}.
UNSUPPORTED_FIELDS = {
    "provider": (AUTHORIZATION_POLICY_FIELDS, ("field 'provider' is not supported: it serves action CUSTOM, "
                                               "and meshlab has no external authorizers")),
    "serviceAccounts": (SOURCE_FIELDS, ("field 'serviceAccounts' is not supported yet; use principals "
                                        "(like cluster.local/ns/<namespace>/sa/<service account>)")),
    "notServiceAccounts": (SOURCE_FIELDS, "field 'notServiceAccounts' is not supported yet; use notPrincipals"),
}


def value_problem(value: str, kind: str) -> str | None:
    """What is wrong with one value of a source, operation or condition list (None if it is fine)."""
    if not value:
        return "empty value"
    if kind == "ip":
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f"invalid IP address or CIDR block '{value}'"
        return None
    if kind == "port":
        if not (value.isascii() and value.isdigit() and 1 <= int(value) <= 65535):
            return f"invalid port '{value}': expected a number 1-65535 (written as a string, like \"8080\")"
        return None
    if kind == "principal" and value.startswith("spiffe://"):
        return f"write principals without 'spiffe://' (like '{value.removeprefix('spiffe://')}')"
    stars = value.count("*")
    if stars and value != "*" and (stars > 1 or "*" in value[1:-1]):
        return f"invalid value '{value}': '*' may only be the whole value, a prefix or a suffix"
    return None


def condition_kind(key: str) -> str | None:
    """What the values of condition `key` are ("ip", "port", "principal", "text"); None for an unknown key."""
    if key in L4_CONDITION_KEYS:
        return L4_CONDITION_KEYS[key]
    if key in L7_CONDITION_KEYS:
        return L7_CONDITION_KEYS[key]
    return "text" if L7_CONDITION_PATTERN.match(key) else None


def l7_attributes(rule: Mapping[str, Any]) -> list[str]:
    """The attributes of a canonical rule that only an L7 proxy can check; empty for an L4 rule."""
    found = set()
    for item in rule.get("from", []):
        found |= {name for name, values in item.get("source", {}).items() if values and name in L7_SOURCE_FIELDS}
    for item in rule.get("to", []):
        found |= {name for name, values in item.get("operation", {}).items() if values and name in L7_OPERATION_FIELDS}
    found |= {c["key"] for c in rule.get("when", []) if c["key"] not in L4_CONDITION_KEYS}
    return sorted(found)


class SecurityWalker(YamlWalker):
    """Checks the specs of the security kinds; `lab.meshconfig.parse` adds the object around them."""

    def unknown(self, name: str, schema: dict[str, bool]) -> str:
        """Name the reason for Istio fields meshlab refuses; other unknown fields get a suggestion."""
        owner, message = UNSUPPORTED_FIELDS.get(name, (None, ""))
        return message if owner is schema else super().unknown(name, schema)

    def peer_authentication(self, node: YamlNode | None, path: str, namespace: str) -> dict[str, Any]:
        """A PeerAuthentication spec: selector?, mtls.mode?, portLevelMtls? (which needs a selector)."""
        f = self.fields(node, path, PEER_AUTHENTICATION_FIELDS)
        spec: dict[str, Any] = {}
        if "selector" in f:
            spec["selector"] = self.selector(f["selector"], join(path, "selector"))
        if "mtls" in f:
            spec["mtls"] = self.mtls(f["mtls"], join(path, "mtls"))
        selected = bool(spec.get("selector", {}).get("matchLabels"))
        if "portLevelMtls" in f:
            spec["portLevelMtls"] = self.port_level_mtls(f["portLevelMtls"], join(path, "portLevelMtls"))
            if not selected:
                self.report(f["portLevelMtls"], join(path, "portLevelMtls"),
                            "portLevelMtls needs a selector with matchLabels: Istio applies port-level mTLS only "
                            "to selected workloads, never to a whole namespace or mesh")
        if selected and namespace == ROOT_NAMESPACE:
            self.report(f["selector"], join(path, "selector"),
                        f"a PeerAuthentication in the root namespace '{ROOT_NAMESPACE}' applies to the whole mesh "
                        "and cannot have a selector (Istio ignores it there); put it in the workload's namespace")
        return spec

    def authorization_policy(self, node: YamlNode | None, path: str) -> dict[str, Any]:
        """An AuthorizationPolicy spec: selector? or targetRefs?, action?, rules?."""
        f = self.fields(node, path, AUTHORIZATION_POLICY_FIELDS)
        spec: dict[str, Any] = {}
        if "selector" in f:
            spec["selector"] = self.selector(f["selector"], join(path, "selector"))
        if "targetRef" in f:
            spec["targetRef"] = self.target_ref(f["targetRef"], join(path, "targetRef"))
        if "targetRefs" in f:
            refs = self.items(f, "targetRefs", path, "target reference") or []
            spec["targetRefs"] = [self.target_ref(n, p) for p, n in refs]
        if "targetRef" in f and "targetRefs" in f:
            self.report(f["targetRef"], join(path, "targetRef"), "targetRef and targetRefs cannot both be set; "
                                                                 "use targetRefs")
        if "selector" in f and ("targetRef" in f or "targetRefs" in f):
            self.report(f["selector"], join(path, "selector"), "selector and targetRefs cannot both be set: a policy "
                                                               "selects workloads or attaches to a target, not both")
        action = self.choice(f.get("action"), join(path, "action"), ACTIONS, "action")
        if action in UNSUPPORTED_ACTIONS:
            self.report(f["action"], join(path, "action"), f"action {action} is not supported "
                                                           f"({UNSUPPORTED_ACTIONS[action]}); use ALLOW or DENY")
        if action is not None:
            spec["action"] = action
        entries = self.items(f, "rules", path, "rule")
        if entries is not None:
            spec["rules"] = [self.rule(p, n) for p, n in entries]
        return spec

    # --- parts ------------------------------------------------------------------------------------------

    def selector(self, node: YamlNode, path: str) -> dict[str, Any]:
        """A workload selector: `matchLabels`, label names to values."""
        f = self.fields(node, path, SELECTOR_FIELDS)
        if "matchLabels" not in f:
            return {}
        labels = self.text_map(f["matchLabels"], join(path, "matchLabels"), "label name", LABEL_KEY, numbers=False)
        for name, value in labels.items():
            if value and not LABEL_VALUE.match(value):
                self.report(f["matchLabels"], join(path, f"matchLabels.{name}"), f"invalid label value '{value}'")
        return {"matchLabels": labels}

    def mtls(self, node: YamlNode, path: str) -> dict[str, str]:
        """A mutual TLS setting: `mode` (UNSET when absent)."""
        f = self.fields(node, path, MTLS_FIELDS)
        mode = self.choice(f.get("mode"), join(path, "mode"), MTLS_MODES, "mTLS mode")
        return {} if mode is None else {"mode": mode}

    def port_level_mtls(self, node: YamlNode, path: str) -> dict[str, dict[str, str]]:
        """Port numbers (the workload's ports) to mutual TLS settings."""
        if not isinstance(node, MappingNode):
            self.report(node, path, f"expected a mapping of ports to mtls settings, got {describe(node)}")
            return {}
        ports: dict[str, dict[str, str]] = {}
        seen: dict[int, int] = {}
        for key, value in node.value:
            digits = is_scalar(key, "int") or is_scalar(key, "str")
            port = int(key.value) if digits and key.value.isascii() and key.value.isdigit() else None
            if port is None or not 1 <= port <= 65535:
                self.report(key, path, f"expected a port number 1-65535 as key, got {describe(key)}")
                continue
            self.unique(seen, port, f"port {port}", key, join(path, str(port)))
            ports[str(port)] = self.mtls(value, join(path, str(port)))
        return ports

    def target_ref(self, node: YamlNode, path: str) -> dict[str, str]:
        """A reference to what the policy attaches to (kept for waypoints; ztunnel ignores such policies)."""
        f = self.fields(node, path, TARGET_REF_FIELDS)
        ref = {name: self.string(f.get(name), join(path, name)) for name in TARGET_REF_FIELDS}
        return {name: value for name, value in ref.items() if value is not None}

    def rule(self, path: str, node: YamlNode) -> dict[str, Any]:
        """One rule: from[].source, to[].operation and when[] conditions, all of which must match."""
        f = self.fields(node, path, RULE_FIELDS)
        rule: dict[str, Any] = {}
        if "from" in f:
            entries = self.items(f, "from", path, "source") or []
            rule["from"] = [self.clause(p, n, "source") for p, n in entries]
        if "to" in f:
            entries = self.items(f, "to", path, "operation") or []
            rule["to"] = [self.clause(p, n, "operation") for p, n in entries]
        if "when" in f:
            rule["when"] = [self.condition(p, n) for p, n in self.items(f, "when", path, "condition") or []]
        return rule

    def clause(self, path: str, node: YamlNode, wrapper: str) -> dict[str, Any]:
        """One `from` or `to` item: {source: {...}} or {operation: {...}} with lists of values."""
        inner = self.fields(node, path, {wrapper: True}).get(wrapper)
        if inner is None:
            return {}
        schema, kinds = CLAUSES[wrapper]
        path = join(path, wrapper)
        known = len(self.problems)
        fields = self.fields(inner, path, schema)
        values = {name: self.values(value, join(path, name), kinds[name]) for name, value in fields.items()}
        if isinstance(inner, MappingNode) and not any(values.values()) and len(self.problems) == known:
            self.report(inner, path, f"{wrapper} is empty; set at least one of: "
                                     f"{', '.join(kinds)}")
        return {wrapper: values}

    def condition(self, path: str, node: YamlNode) -> dict[str, Any]:
        """One `when` condition: key, values?, notValues? (at least one of them)."""
        f = self.fields(node, path, CONDITION_FIELDS)
        key = self.string(f.get("key"), join(path, "key"))
        kind = condition_kind(key) if key is not None else None
        if key is not None and kind is None:
            self.report(f["key"], join(path, "key"), unknown_condition(key))
        condition: dict[str, Any] = {} if key is None else {"key": key}
        for name in ("values", "notValues"):
            if name in f:
                condition[name] = self.values(f[name], join(path, name), kind or "text")
        if key is not None and not (condition.get("values") or condition.get("notValues")):
            self.report(node, path, f"condition '{key}' needs values or notValues")
        return condition

    def values(self, node: YamlNode, path: str, kind: str) -> list[str]:
        """A list of string values of one kind (see `value_problem`)."""
        if not isinstance(node, SequenceNode):
            self.report(node, path, f"expected a list of strings, got {describe(node)}")
            return []
        result = []
        for i, item in enumerate(node.value):
            value = self.string(item, f"{path}[{i}]")
            if value is None:
                continue
            problem = value_problem(value, kind)
            if problem:
                self.report(item, f"{path}[{i}]", problem)
            result.append(value)
        return result


def unknown_condition(key: str) -> str:
    """The message for a condition key Istio does not define (or meshlab does not support)."""
    if key.startswith("experimental."):
        return f"condition key '{key}' is not supported (experimental Envoy filter attributes)"
    close = difflib.get_close_matches(key, CONDITION_KEYS, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"expected one of: {', '.join(CONDITION_KEYS)}"
    return f"unknown condition key '{key}'; {hint}"
