"""L7 AuthorizationPolicy evaluation for waypoints and sidecars (Istio's semantics), pure.

Theory of operation
-------------------
The snapshot carries the normalized AuthorizationPolicies (`lab/meshconfig/snapshot.py`,
the same list the ztunnel reads). An L7 proxy first calls `compile_policies(policies)`
when its config arrives: that refuses, with a `PolicyError` naming the policy and rule,
what this engine cannot check (requestPrincipals, which need JWT authentication, and
`when` keys on request.auth.*, connection.sni or anything unknown), so the agent NACKs the
config instead of guessing. Then per request it calls `authorize(policies, request, target)`:

* which policies apply depends on the proxy (`PolicyTarget`): a waypoint enforces policies
  attached with targetRefs to its Gateway (by name), to a Service it serves, or to the
  `istio-waypoint` GatewayClass from the root namespace; a sidecar enforces the policies
  that select its workload (mesh-wide, namespace-wide, or by selector), as ztunnel does;
* Istio's order: CUSTOM and AUDIT policies are skipped; a DENY policy with a matching rule
  denies; with no ALLOW policy the request is allowed; else an ALLOW policy with a matching
  rule allows, and anything else is denied — HTTP 403 with the body "RBAC: access denied".

Matching extends the ztunnel's (`agents.ztunnel.policy`, whose helpers are reused): values
are exact, `prefix*`, `*suffix` or `*`; principals and namespaces come from the mTLS peer
only. At L7 also: `hosts` against the authority (no case; a host written without a port
matches any port), `methods`, `paths` against the path without its query (call
`normalize_path` first, as Istio normalizes before matching), `remoteIpBlocks` against the
original client address, and `when` on request.headers[...] (repeated fields joined with
","), source.ip/namespace/principal, destination.ip/port and remote.ip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.ztunnel.policy import Decision, field_matches, ip_matches, namespace_of, ref, selects, text_matches

DENIED_STATUS = 403
DENIED_BODY = "RBAC: access denied"
ROOT_NAMESPACE = "istio-system"
WAYPOINT_CLASS = "istio-waypoint"
UNSUPPORTED_SOURCE_FIELDS = ("requestPrincipals", "notRequestPrincipals")
SUPPORTED_WHEN = ("source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port",
                  "remote.ip", "request.headers[<name>]")
Policy = Mapping[str, Any]


class PolicyError(ValueError):
    """An AuthorizationPolicy this L7 engine cannot enforce (the agent NACKs the config)."""


@dataclass(frozen=True)
class PolicyTarget:
    """The proxy enforcing: a waypoint (its Gateway name, the service it serves) or a sidecar (its workload)."""

    namespace: str  # of the waypoint, or of the sidecar's workload
    waypoint: str | None = None  # the waypoint's Gateway name; None for a sidecar
    service: str | None = None  # waypoint: the destination service's name (in `service_namespace`)
    service_namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)  # sidecar: its workload's labels


@dataclass(frozen=True)
class AuthzRequest:
    """What L7 authorization looks at for one request."""

    method: str
    path: str  # without the query, normalized
    host: str  # the authority
    headers: Sequence[tuple[str, str]] = ()
    source_principal: str | None = None  # mTLS peer, e.g. "cluster.local/ns/a/sa/b"; None for plaintext
    source_ip: str = ""
    remote_ip: str | None = None  # the original client (remoteIpBlocks, remote.ip); default: source_ip
    dest_ip: str | None = None
    dest_port: int = 0

    @property
    def principal(self) -> str | None:
        """The peer principal without `spiffe://`."""
        return self.source_principal.removeprefix("spiffe://") if self.source_principal else None

    @property
    def namespace(self) -> str | None:
        """The source namespace, as the mTLS principal proves it."""
        return namespace_of(self.principal) if self.principal else None


def compile_policies(policies: Sequence[Policy]) -> list[Policy]:
    """Check that every policy can be enforced at L7; the same list, or a PolicyError saying what is not."""
    for policy in policies:
        for i, rule in enumerate(policy.get("rules") or ()):
            where = f"AuthorizationPolicy {ref(policy)} rule {i}"
            for source in rule.get("from") or ():
                for name in UNSUPPORTED_SOURCE_FIELDS:
                    if source.get(name):
                        raise PolicyError(f"{where}: {name} is not supported (it needs JWT request authentication, "
                                          "which meshlab does not have); use principals")
            for condition in rule.get("when") or ():
                key = condition.get("key", "")
                if not (key in SUPPORTED_WHEN or (key.startswith("request.headers[") and key.endswith("]"))):
                    raise PolicyError(f"{where}: condition key '{key}' is not supported at L7; supported: "
                                      + ", ".join(SUPPORTED_WHEN))
    return list(policies)


def applies(policy: Policy, target: PolicyTarget) -> bool:
    """Whether the proxy `target` enforces `policy`."""
    refs = policy.get("targetRefs") or ()
    if target.waypoint is None:
        return not refs and selects(policy, target.namespace, target.labels)
    namespace = policy.get("namespace")
    for target_ref in refs:
        kind, name = target_ref.get("kind"), target_ref.get("name")
        if kind == "Gateway" and namespace == target.namespace and name == target.waypoint:
            return True
        if kind == "Service" and namespace == target.service_namespace and name == target.service:
            return True
        if kind == "GatewayClass" and namespace == ROOT_NAMESPACE and name == WAYPOINT_CLASS:
            return True
    return False


def authorize(policies: Sequence[Policy], request: AuthzRequest, target: PolicyTarget) -> Decision:
    """Istio's verdict on one request at the proxy `target` (denied: answer 403 "RBAC: access denied")."""
    applying = [p for p in policies if applies(p, target)]
    for policy in applying:
        if policy.get("action") == "DENY":
            index = matching_rule(policy, request)
            if index is not None:
                return Decision(False, ref(policy), f"denied by DENY policy {ref(policy)} (rule {index})")
    allowing = [p for p in applying if p.get("action", "ALLOW") == "ALLOW"]
    if not allowing:
        return Decision(True, None, "no ALLOW policy applies")
    for policy in allowing:
        index = matching_rule(policy, request)
        if index is not None:
            return Decision(True, ref(policy), f"allowed by ALLOW policy {ref(policy)} (rule {index})")
    return Decision(False, None, "no rule of the ALLOW policies matched (" + ", ".join(ref(p) for p in allowing) + ")")


def matching_rule(policy: Policy, request: AuthzRequest) -> int | None:
    """The index of the first rule of `policy` that matches, or None."""
    return next((i for i, rule in enumerate(policy.get("rules") or ()) if rule_matches(rule, request)), None)


def rule_matches(rule: Mapping[str, Any], request: AuthzRequest) -> bool:
    """Every part of a rule matches (absent parts match anything; list items are OR'ed)."""
    sources, operations = rule.get("from") or (), rule.get("to") or ()
    return ((not sources or any(source_matches(s, request) for s in sources))
            and (not operations or any(operation_matches(o, request) for o in operations))
            and all(condition_matches(c, request) for c in rule.get("when") or ()))


def source_matches(source: Mapping[str, Sequence[str]], request: AuthzRequest) -> bool:
    """A from[].source against the peer."""
    return (field_matches(source, "principals", request.principal, text_matches)
            and field_matches(source, "namespaces", request.namespace, text_matches)
            and field_matches(source, "ipBlocks", request.source_ip, ip_matches)
            and field_matches(source, "remoteIpBlocks", request.remote_ip or request.source_ip, ip_matches))


def operation_matches(operation: Mapping[str, Sequence[Any]], request: AuthzRequest) -> bool:
    """A to[].operation against the request."""
    return (field_matches(operation, "hosts", request.host, host_matches)
            and field_matches(operation, "ports", request.dest_port, lambda want, port: int(want) == port)
            and field_matches(operation, "methods", request.method, text_matches)
            and field_matches(operation, "paths", request.path, text_matches))


def host_matches(pattern: str, authority: str) -> bool:
    """Istio host matching: no case; a pattern without a port matches the host on any port."""
    pattern, authority = pattern.lower(), authority.lower()
    if ":" not in pattern.rsplit("]", 1)[-1]:
        host, sep, port = authority.rpartition(":")
        if sep and port.isdigit() and "]" not in port:
            authority = host
    return text_matches(pattern, authority)


def condition_matches(condition: Mapping[str, Any], request: AuthzRequest) -> bool:
    """A `when` condition: any of values matches, none of notValues does (an absent value matches no value)."""
    key = condition.get("key", "")
    value: Any
    matcher: Any = text_matches
    if key.startswith("request.headers["):
        wanted = key[len("request.headers["):-1].lower()
        found = [v for n, v in request.headers if n.lower() == wanted]
        value = ",".join(found) if found else None
    elif key in ("source.ip", "remote.ip", "destination.ip"):
        value = {"source.ip": request.source_ip, "remote.ip": request.remote_ip or request.source_ip,
                 "destination.ip": request.dest_ip}[key]
        matcher = ip_matches
    elif key == "destination.port":
        value, matcher = request.dest_port, (lambda want, port: int(want) == port)
    elif key == "source.principal":
        value = request.principal
    elif key == "source.namespace":
        value = request.namespace
    else:
        raise PolicyError(f"condition key '{key}' is not supported at L7 (compile_policies refuses it)")
    values, not_values = condition.get("values") or (), condition.get("notValues") or ()
    if values and (value is None or not any(matcher(v, value) for v in values)):
        return False
    return not (not_values and value is not None and any(matcher(v, value) for v in not_values))


def normalize_path(path: str) -> str:
    """The path with dot segments removed (RFC 3986 §5.2.4), as Istio's default BASE normalization does."""
    if "." not in path:
        return path or "/"
    out: list[str] = []
    segments = path.split("/")
    for segment in segments[1:] if path.startswith("/") else segments:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if segments[-1] in (".", ".."):
        out.append("")
    return "/" + "/".join(out)
