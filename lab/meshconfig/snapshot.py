"""The mesh config as the agents receive it in their config snapshots: plain, normalized JSON.

`to_agent_json(objects)` returns the security policies below, plus the networking config
for the L7 proxies: `"routeTables"` and `"destinationRules"`, both keyed by service
(`name.namespace`), made by `lab/meshconfig/routetables.py` in the shapes that
`agents/l7/routing.py` and `agents/l7/cluster.py` document::

    {"peerAuthentications": [
        {"name": "default", "namespace": "bookinfo",
         "scope": "namespace",               # "mesh" (root namespace istio-system), "namespace" or "workload"
         "selector": {"app": "reviews"},     # matchLabels, or null (no selector, or an empty one)
         "mode": "STRICT",                   # UNSET (also when mtls is absent), DISABLE, PERMISSIVE or STRICT
         "portLevelMtls": {"9080": "DISABLE"}}],   # workload port (a string: JSON keys are) -> mode
     "authorizationPolicies": [
        {"name": "allow-reviews", "namespace": "bookinfo",
         "scope": "workload",                # "mesh", "namespace", "workload", or "targetRefs" (attached to a
                                             # waypoint or gateway: ztunnel does not enforce it)
         "selector": {"app": "reviews"},     # or null
         "targetRefs": [],                   # {group?, kind, name, namespace?} each, as written
         "action": "ALLOW",                  # ALLOW (the default) or DENY
         "rules": [                          # [] matches nothing: an ALLOW policy with no rules allows nothing
            {"from": [{"principals": ["cluster.local/ns/bookinfo/sa/productpage"]}],  # one per from[].source
             "to": [{"ports": [9080]}],      # one per to[].operation; ports are integers
             "when": [{"key": "source.ip", "values": ["10.0.0.0/8"], "notValues": []}],
             "l7": false,                    # true: the rule needs an L7 proxy (ztunnel fails closed)
             "l7Attributes": []}]}]}         # which attributes made it L7, e.g. ["methods", "paths"]

Sources and operations carry only the fields that have values, each a list of strings
(`ports`/`notPorts` integers); an absent `from`/`to`/`when` is an empty list, which matches
everything. Objects keep the order given: the control plane passes them oldest first, so
"the oldest policy wins" (Istio's tie-break by creation time) is "the first one wins".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lab.meshconfig.parse import ConfigObject
from lab.meshconfig.routetables import route_tables
from lab.meshconfig.security import ROOT_NAMESPACE, l7_attributes


def to_agent_json(objects: Iterable[ConfigObject]) -> dict[str, Any]:
    """The objects in the agents' normalized form (see the module docstring)."""
    objects = list(objects)
    peer_authentications, authorization_policies = [], []
    for obj in objects:
        if obj.kind == "PeerAuthentication":
            peer_authentications.append(peer_authentication_json(obj))
        elif obj.kind == "AuthorizationPolicy":
            authorization_policies.append(authorization_policy_json(obj))
    return {"peerAuthentications": peer_authentications, "authorizationPolicies": authorization_policies,
            **route_tables(objects)}


def peer_authentication_json(obj: ConfigObject) -> dict[str, Any]:
    """One PeerAuthentication, normalized."""
    selector = obj.spec.get("selector", {}).get("matchLabels") or None
    ports = obj.spec.get("portLevelMtls", {})
    return {"name": obj.name, "namespace": obj.namespace, "scope": scope(obj.namespace, selector, []),
            "selector": selector, "mode": obj.spec.get("mtls", {}).get("mode", "UNSET"),
            "portLevelMtls": {port: mtls.get("mode", "UNSET") for port, mtls in ports.items()}}


def authorization_policy_json(obj: ConfigObject) -> dict[str, Any]:
    """One AuthorizationPolicy, normalized."""
    spec = obj.spec
    selector = spec.get("selector", {}).get("matchLabels") or None
    refs = [*([spec["targetRef"]] if "targetRef" in spec else []), *spec.get("targetRefs", [])]
    return {"name": obj.name, "namespace": obj.namespace, "scope": scope(obj.namespace, selector, refs),
            "selector": selector, "targetRefs": refs, "action": spec.get("action", "ALLOW"),
            "rules": [rule_json(rule) for rule in spec.get("rules", [])]}


def scope(namespace: str, selector: dict[str, str] | None, target_refs: list[dict[str, str]]) -> str:
    """Where a policy applies: attached to targets, mesh-wide, namespace-wide, or to selected workloads."""
    if target_refs:
        return "targetRefs"
    if namespace == ROOT_NAMESPACE:
        return "mesh"
    return "workload" if selector else "namespace"


def rule_json(rule: dict[str, Any]) -> dict[str, Any]:
    """One rule, with its sources and operations flattened and its L7 attributes named."""
    attributes = l7_attributes(rule)
    return {"from": [present(item.get("source", {})) for item in rule.get("from", [])],
            "to": [operation_json(item.get("operation", {})) for item in rule.get("to", [])],
            "when": [{"key": c["key"], "values": c.get("values", []), "notValues": c.get("notValues", [])}
                     for c in rule.get("when", [])],
            "l7": bool(attributes), "l7Attributes": attributes}


def operation_json(operation: dict[str, list[str]]) -> dict[str, list[Any]]:
    """One operation, with its ports as integers."""
    fields: dict[str, list[Any]] = present(operation)
    for name in ("ports", "notPorts"):
        if name in fields:
            fields[name] = [int(port) for port in fields[name]]
    return fields


def present(fields: dict[str, list[str]]) -> dict[str, list[Any]]:
    """The fields that have values (an empty list means the field is not set)."""
    return {name: list(values) for name, values in fields.items() if values}
