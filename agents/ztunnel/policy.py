"""L4 security decisions of the ztunnel: the mTLS mode a workload port wants, and whether a connection may pass.

Theory of operation. The control plane puts the normalized PeerAuthentications and
AuthorizationPolicies in the ztunnel's config snapshot (shape: `lab/meshconfig/snapshot.py`),
oldest first. For each inbound connection the ztunnel calls `mtls_mode` (may plaintext come
in?) and `authorize` with what it knows of the connection (`ConnInfo`). Both are pure
functions of their arguments: no sockets, no clock, no state.

mTLS mode (Istio's precedence): a workload-selector policy in the workload's namespace
over the namespace-wide policy over the mesh-wide one (root namespace istio-system);
UNSET inherits from the level above; with none set, PERMISSIVE. A port-level mode of the
workload policy overrides its workload mode for that port. Several policies at one level:
the oldest (first) wins, as in istiod. DISABLE is returned as is; Istio's ambient docs say
ztunnel cannot turn mTLS off, so the ztunnel treats it like PERMISSIVE (plaintext accepted).

Authorization (Istio's order): policies with `targetRefs` belong to waypoints and are
skipped; of the rest, those that select the destination workload apply. Then:
  1. L7 fail-closed: an applying policy with a rule that needs an L7 proxy (`"l7": true`:
     requestPrincipals, hosts, methods, paths, remoteIpBlocks, `when` on request.* and other
     non-L4 keys) denies every connection to the workload, whatever its action. This is
     what Istio documents for ambient mode ("Use Layer 4 security policy",
     https://istio.io/latest/docs/ambient/usage/l4-policy/, the warning on L7 policies
     without waypoints): a policy that needs more than L4 processing, with no waypoint in
     front of the destination, makes ztunnel drop all of that traffic as a defence.
     (istiod's conversion is finer-grained: it leaves out only such rules of an ALLOW policy
     and enforces a DENY rule without its L7 parts. The lab follows the documented, simpler
     and stricter behaviour; neither is ever more permissive than the policy asked.)
  2. any DENY policy with a matching rule denies;
  3. no ALLOW policy applies: allow;
  4. an ALLOW policy with a matching rule allows; otherwise deny. An ALLOW policy with no
     rules ("allow-nothing", `spec: {}`) therefore denies everything that no other ALLOW
     policy allows; a DENY policy with the rule `{}` ("deny-all") denies everything.

Matching: a rule matches when every one of its from, to and when parts does (an absent part
matches anything); a from/to list matches when any item does; an item matches when each of
its fields does; a field matches when any value does, a not-field when none does. Values
are exact, prefix (`abc*`), suffix (`*abc`) or presence (`*`); IP blocks are addresses or
CIDR blocks. Principals and namespaces (fields and `when` keys) are mTLS-only, as Istio's
advisory ISTIO-SECURITY-2021-004 spells out: the namespace is taken from the authenticated
principal (`cluster.local/ns/<ns>/sa/<sa>`), so a plaintext connection matches none of
them, while `notPrincipals`/`notNamespaces` compare against nothing and do not exclude it.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

STRICT, PERMISSIVE, DISABLE, UNSET = "STRICT", "PERMISSIVE", "DISABLE", "UNSET"

Policy = Mapping[str, Any]  # one entry of the snapshot's "peerAuthentications" or "authorizationPolicies"


@dataclass(frozen=True)
class ConnInfo:
    """What the ztunnel knows of an inbound connection when it decides on it."""

    source_principal: str | None  # e.g. "cluster.local/ns/bookinfo/sa/productpage"; None for plaintext
    source_namespace: str | None  # used only when an mTLS principal names no namespace
    source_ip: str
    dest_namespace: str
    dest_labels: Mapping[str, str] = field(default_factory=dict)
    dest_port: int = 0
    dest_ip: str | None = None  # for `when: destination.ip`; None: such a condition does not match

    @property
    def principal(self) -> str | None:
        """The authenticated principal without `spiffe://`, or None for plaintext."""
        return self.source_principal.removeprefix("spiffe://") if self.source_principal else None

    @property
    def authenticated_namespace(self) -> str | None:
        """The source namespace as mTLS proves it; None for plaintext."""
        principal = self.principal
        if principal is None:
            return None
        return namespace_of(principal) or self.source_namespace


@dataclass(frozen=True)
class Decision:
    """The verdict on a connection: allowed or not, the policy that decided (ns/name), and why."""

    allowed: bool
    policy: str | None
    reason: str


def namespace_of(principal: str) -> str | None:
    """The namespace in a SPIFFE principal `<trust domain>/ns/<ns>/sa/<sa>`, or None."""
    parts = principal.removeprefix("spiffe://").split("/")
    for i, part in enumerate(parts[:-1]):
        if part == "ns" and parts[i + 1]:
            return parts[i + 1]
    return None


def selects(policy: Policy, namespace: str, labels: Mapping[str, str]) -> bool:
    """Whether a (non-attached) policy applies to the workload in `namespace` with `labels`."""
    scope = policy.get("scope")
    if scope == "targetRefs" or (scope != "mesh" and policy.get("namespace") != namespace):
        return False
    return all(labels.get(key) == value for key, value in (policy.get("selector") or {}).items())


# --- mTLS mode -------------------------------------------------------------------------------------------


def mtls_mode(peer_auths: Sequence[Policy], workload_namespace: str, workload_labels: Mapping[str, str],
              port: int) -> str:
    """The effective mTLS mode of a workload port: STRICT, PERMISSIVE or DISABLE."""
    def first(scope: str) -> Policy | None:
        return next((p for p in peer_auths
                     if p.get("scope") == scope and selects(p, workload_namespace, workload_labels)), None)

    workload = first("workload")
    mode = PERMISSIVE
    for level in (first("mesh"), first("namespace"), workload):
        if level is not None and level.get("mode", UNSET) != UNSET:
            mode = level["mode"]
    if workload is not None:
        port_mode = (workload.get("portLevelMtls") or {}).get(str(port), UNSET)
        if port_mode != UNSET:
            mode = port_mode
    return mode


# --- authorization ---------------------------------------------------------------------------------------


def authorize(policies: Sequence[Policy], conn: ConnInfo) -> Decision:
    """Istio's verdict on `conn` under the authorization policies of the snapshot."""
    applying = [p for p in policies if selects(p, conn.dest_namespace, conn.dest_labels)]
    for policy in applying:
        attributes = sorted({a for rule in policy.get("rules", []) if rule.get("l7")
                             for a in rule.get("l7Attributes") or ["L7 attributes"]})
        if attributes:
            return Decision(False, ref(policy),
                            f"policy {ref(policy)} has L7 rules ({', '.join(attributes)}) that ztunnel cannot "
                            "enforce: all connections to the workload are denied (fail closed); "
                            "serve the workload with a waypoint or keep the rules L4")
    for policy in (p for p in applying if p.get("action") == "DENY"):
        index = matching_rule(policy, conn)
        if index is not None:
            return Decision(False, ref(policy), f"denied by DENY policy {ref(policy)} (rule {index})")
    allowing = [p for p in applying if p.get("action", "ALLOW") == "ALLOW"]
    if not allowing:
        return Decision(True, None, "no ALLOW policy applies to the workload")
    for policy in allowing:
        index = matching_rule(policy, conn)
        if index is not None:
            return Decision(True, ref(policy), f"allowed by ALLOW policy {ref(policy)} (rule {index})")
    names = ", ".join(ref(p) for p in allowing)
    return Decision(False, None, f"no rule of the ALLOW policies matched ({names})")


def ref(policy: Policy) -> str:
    """`namespace/name` of a policy."""
    return f"{policy.get('namespace')}/{policy.get('name')}"


def matching_rule(policy: Policy, conn: ConnInfo) -> int | None:
    """The index of the first rule of `policy` that matches `conn`, or None."""
    return next((i for i, rule in enumerate(policy.get("rules", [])) if rule_matches(rule, conn)), None)


def rule_matches(rule: Mapping[str, Any], conn: ConnInfo) -> bool:
    """Whether every part of a rule matches (an empty part matches anything)."""
    sources, operations = rule.get("from") or [], rule.get("to") or []
    return ((not sources or any(source_matches(s, conn) for s in sources))
            and (not operations or any(operation_matches(o, conn) for o in operations))
            and all(condition_matches(c, conn) for c in rule.get("when") or []))


def source_matches(source: Mapping[str, Sequence[str]], conn: ConnInfo) -> bool:
    """Whether a from[].source matches the connection's peer."""
    return (field_matches(source, "principals", conn.principal, text_matches)
            and field_matches(source, "namespaces", conn.authenticated_namespace, text_matches)
            and field_matches(source, "ipBlocks", conn.source_ip, ip_matches))


def operation_matches(operation: Mapping[str, Sequence[Any]], conn: ConnInfo) -> bool:
    """Whether a to[].operation matches the connection's destination (L4 ztunnel: ports only)."""
    return field_matches(operation, "ports", conn.dest_port, lambda want, port: int(want) == port)


def condition_matches(condition: Mapping[str, Any], conn: ConnInfo) -> bool:
    """Whether a `when` condition on an L4 attribute holds (any other key never does)."""
    key = condition.get("key")
    attributes: dict[str, tuple[Any, Any]] = {
        "source.ip": (conn.source_ip, ip_matches),
        "source.namespace": (conn.authenticated_namespace, text_matches),
        "source.principal": (conn.principal, text_matches),
        "destination.ip": (conn.dest_ip, ip_matches),
        "destination.port": (conn.dest_port, lambda want, port: int(want) == port),
    }
    if key not in attributes:
        return False
    value, matcher = attributes[key]
    values, not_values = condition.get("values") or [], condition.get("notValues") or []
    if values and (value is None or not any(matcher(v, value) for v in values)):
        return False
    return not (not_values and value is not None and any(matcher(v, value) for v in not_values))


def field_matches(item: Mapping[str, Sequence[Any]], name: str, value: Any, matcher: Any) -> bool:
    """Field `name` (any value matches) and `not<Name>` (no value matches) of a source or operation."""
    wanted = item.get(name) or []
    refused = item.get("not" + name[0].upper() + name[1:]) or []
    if wanted and (value is None or not any(matcher(w, value) for w in wanted)):
        return False
    return not (refused and value is not None and any(matcher(r, value) for r in refused))


def text_matches(pattern: str, value: str) -> bool:
    """Istio string matching: exact, `prefix*`, `*suffix`, or `*` (present)."""
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return value == pattern


def ip_matches(block: str, address: str) -> bool:
    """Whether `address` is `block` (an address or a CIDR block); malformed input never matches."""
    network = _network(block)
    try:
        return network is not None and ipaddress.ip_address(address) in network
    except ValueError:
        return False


@functools.lru_cache(maxsize=4096)
def _network(block: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """A parsed address block (cached: the same blocks are checked for every connection)."""
    try:
        return ipaddress.ip_network(block, strict=False)
    except ValueError:
        return None
