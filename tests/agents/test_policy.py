"""The ztunnel's L4 policy decisions, table-driven; policies are written as Istio YAML and normalized by the lab."""

from __future__ import annotations

import pytest

from agents.ztunnel.policy import ConnInfo, Decision, authorize, mtls_mode, namespace_of
from lab.meshconfig import parse_config, to_agent_json

PRODUCTPAGE = "cluster.local/ns/bookinfo/sa/productpage"
RATINGS = "cluster.local/ns/bookinfo/sa/ratings"
FRONTEND = "cluster.local/ns/frontend/sa/web"
UNTRUSTED = "cluster.local/ns/untrusted/sa/default"


def policy(name: str, spec: str, namespace: str = "bookinfo", kind: str = "AuthorizationPolicy") -> str:
    indented = "".join(f"  {line}\n" for line in spec.strip("\n").splitlines()) or "  {}\n"
    return (f"apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata:\n  name: {name}\n"
            f"  namespace: {namespace}\nspec:\n{indented}")


AUTHZ = {
    "allow-nothing": policy("allow-nothing", ""),
    "no-spec": "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: no-spec\n"
               "  namespace: bookinfo\n",
    "deny-all": policy("deny-all", "action: DENY\nrules:\n- {}"),
    "allow-all": policy("allow-all", "action: ALLOW\nrules:\n- {}"),
    "reviews-from-productpage": policy("reviews-from-productpage", f"""
selector:
  matchLabels: {{app: reviews}}
rules:
- from:
  - source:
      principals: ["{PRODUCTPAGE}"]"""),
    "from-frontend": policy("from-frontend", "rules:\n- from:\n  - source:\n      namespaces: [frontend]"),
    "bookinfo-prefix-to-9080": policy("bookinfo-prefix-to-9080", """
rules:
- from:
  - source:
      principals: ["cluster.local/ns/bookinfo/*"]
  to:
  - operation:
      ports: ["9080"]"""),
    "any-productpage": policy("any-productpage", "rules:\n- from:\n  - source:\n"
                                                 "      principals: ['*/sa/productpage']"),
    "any-mtls": policy("any-mtls", "rules:\n- from:\n  - source:\n      principals: ['*']"),
    "deny-10-8": policy("deny-10-8", "action: DENY\nrules:\n- from:\n  - source:\n      ipBlocks: [10.0.0.0/8]"),
    "deny-outsiders": policy("deny-outsiders", "action: DENY\nrules:\n- from:\n  - source:\n"
                                               "      notNamespaces: [bookinfo]"),
    "deny-plaintext": policy("deny-plaintext", "action: DENY\nrules:\n- from:\n  - source:\n"
                                               "      notPrincipals: ['*']"),
    "deny-not-9080": policy("deny-not-9080", "action: DENY\nrules:\n- to:\n  - operation:\n      notPorts: ['9080']"),
    "l7-get-only": policy("l7-get-only", f"""
rules:
- from:
  - source:
      principals: ["{PRODUCTPAGE}"]
  to:
  - operation:
      methods: [GET]"""),
    "l7-deny-admin": policy("l7-deny-admin", "action: DENY\nrules:\n- to:\n  - operation:\n      paths: [/admin*]"),
    "l7-ratings-jwt": policy("l7-ratings-jwt", """
selector:
  matchLabels: {app: ratings}
rules:
- from:
  - source:
      requestPrincipals: ['*']"""),
    "waypoint-allow-nothing": policy("waypoint-allow-nothing", """
targetRefs:
- kind: Service
  group: ""
  name: reviews"""),
    "mesh-deny-untrusted": policy("mesh-deny-untrusted", "action: DENY\nrules:\n- from:\n  - source:\n"
                                                         "      namespaces: [untrusted]", "istio-system"),
    "frontend-allow-nothing": policy("frontend-allow-nothing", "", "frontend"),
    "when-pod-network": policy("when-pod-network", "rules:\n- when:\n  - key: source.ip\n"
                                                   "    values: [127.101.0.0/16, '::1']"),
    "when-not-health-port": policy("when-not-health-port", "rules:\n- when:\n  - key: destination.port\n"
                                                           "    notValues: ['15021']\n  - key: source.principal\n"
                                                           f"    values: ['{PRODUCTPAGE}']"),
    "two-rules": policy("two-rules", f"rules:\n- from:\n  - source:\n      principals: ['{RATINGS}']\n"
                                     "- from:\n  - source:\n      ipBlocks: [127.101.1.5]"),
    "when-destination-ip": policy("when-destination-ip", "rules:\n- when:\n  - key: destination.ip\n"
                                                         "    values: [127.101.2.0/24]"),
}


def authz(*names: str) -> list[dict]:
    if not names:
        return []
    objects = parse_config("---\n".join(AUTHZ[name] for name in names))
    return to_agent_json(objects)["authorizationPolicies"]


def conn(principal: str | None = PRODUCTPAGE, ip: str = "127.101.1.10", labels: dict | None = None,
         port: int = 9080, namespace: str = "bookinfo", source_namespace: str | None = None,
         dest_ip: str | None = None) -> ConnInfo:
    return ConnInfo(source_principal=principal, source_namespace=source_namespace, source_ip=ip,
                    dest_namespace=namespace, dest_labels=labels or {"app": "reviews", "version": "v1"},
                    dest_port=port, dest_ip=dest_ip)


NO_ALLOW = "no ALLOW policy applies to the workload"
FAIL_CLOSED = ("has L7 rules ({}) that ztunnel cannot enforce: all connections to the workload are denied "
               "(fail closed); serve the workload with a waypoint or keep the rules L4")

# (id, policies, connection, allowed, deciding policy, reason)
AUTHORIZE = [
    ("no-policies", [], conn(), True, None, NO_ALLOW),
    ("allow-nothing", ["allow-nothing"], conn(), False, None,
     "no rule of the ALLOW policies matched (bookinfo/allow-nothing)"),
    ("allow-policy-without-spec", ["no-spec"], conn(), False, None,
     "no rule of the ALLOW policies matched (bookinfo/no-spec)"),
    ("deny-all", ["deny-all"], conn(), False, "bookinfo/deny-all", "denied by DENY policy bookinfo/deny-all (rule 0)"),
    ("allow-all", ["allow-all"], conn(), True, "bookinfo/allow-all",
     "allowed by ALLOW policy bookinfo/allow-all (rule 0)"),
    ("deny-beats-allow", ["allow-all", "deny-all"], conn(), False, "bookinfo/deny-all", None),
    ("allow-policies-are-ored", ["allow-nothing", "allow-all"], conn(), True, "bookinfo/allow-all", None),
    ("principal-matches", ["reviews-from-productpage"], conn(), True, "bookinfo/reviews-from-productpage", None),
    ("principal-differs", ["reviews-from-productpage"], conn(RATINGS), False, None, None),
    ("principal-needs-mtls", ["reviews-from-productpage"], conn(None), False, None, None),
    ("spiffe-prefix-ignored", ["reviews-from-productpage"], conn("spiffe://" + PRODUCTPAGE), True,
     "bookinfo/reviews-from-productpage", None),
    ("selector-does-not-select", ["reviews-from-productpage"], conn(RATINGS, labels={"app": "ratings"}), True,
     None, NO_ALLOW),
    ("namespace-from-principal", ["from-frontend"], conn(FRONTEND), True, "bookinfo/from-frontend", None),
    ("namespace-differs", ["from-frontend"], conn(PRODUCTPAGE), False, None, None),
    ("namespace-needs-mtls", ["from-frontend"], conn(None, source_namespace="frontend"), False, None, None),
    ("prefix-and-port", ["bookinfo-prefix-to-9080"], conn(RATINGS), True, "bookinfo/bookinfo-prefix-to-9080", None),
    ("prefix-other-namespace", ["bookinfo-prefix-to-9080"], conn(FRONTEND), False, None, None),
    ("prefix-other-port", ["bookinfo-prefix-to-9080"], conn(RATINGS, port=9090), False, None, None),
    ("suffix", ["any-productpage"], conn("cluster.local/ns/shop/sa/productpage"), True,
     "bookinfo/any-productpage", None),
    ("suffix-differs", ["any-productpage"], conn(RATINGS), False, None, None),
    ("presence-mtls", ["any-mtls"], conn(UNTRUSTED), True, "bookinfo/any-mtls", None),
    ("presence-plaintext", ["any-mtls"], conn(None), False, None, None),
    ("ip-block-denied", ["deny-10-8"], conn(ip="10.1.2.3"), False, "bookinfo/deny-10-8", None),
    ("ip-block-outside", ["deny-10-8"], conn(ip="127.0.0.1"), True, None, NO_ALLOW),
    ("ip-block-other-family", ["deny-10-8"], conn(ip="::1"), True, None, NO_ALLOW),
    ("not-namespaces-denies-outsider", ["deny-outsiders"], conn(FRONTEND), False, "bookinfo/deny-outsiders", None),
    ("not-namespaces-spares-insider", ["deny-outsiders"], conn(PRODUCTPAGE), True, None, NO_ALLOW),
    ("not-namespaces-denies-plaintext", ["deny-outsiders"], conn(None), False, "bookinfo/deny-outsiders", None),
    ("not-principals-presence-plaintext", ["deny-plaintext"], conn(None), False, "bookinfo/deny-plaintext", None),
    ("not-principals-presence-mtls", ["deny-plaintext"], conn(), True, None, NO_ALLOW),
    ("not-ports-other-port", ["deny-not-9080"], conn(port=8080), False, "bookinfo/deny-not-9080", None),
    ("not-ports-same-port", ["deny-not-9080"], conn(port=9080), True, None, NO_ALLOW),
    ("l7-allow-fails-closed", ["l7-get-only"], conn(), False, "bookinfo/l7-get-only",
     "policy bookinfo/l7-get-only " + FAIL_CLOSED.format("methods")),
    ("l7-fails-closed-over-allow-all", ["allow-all", "l7-get-only"], conn(), False, "bookinfo/l7-get-only", None),
    ("l7-deny-fails-closed", ["l7-deny-admin"], conn(), False, "bookinfo/l7-deny-admin",
     "policy bookinfo/l7-deny-admin " + FAIL_CLOSED.format("paths")),
    ("l7-other-workload-unaffected", ["l7-ratings-jwt"], conn(), True, None, NO_ALLOW),
    ("l7-selected-workload", ["l7-ratings-jwt"], conn(labels={"app": "ratings"}), False, "bookinfo/l7-ratings-jwt",
     "policy bookinfo/l7-ratings-jwt " + FAIL_CLOSED.format("requestPrincipals")),
    ("attached-policy-is-for-waypoints", ["waypoint-allow-nothing"], conn(), True, None, NO_ALLOW),
    ("mesh-wide-deny", ["mesh-deny-untrusted"], conn(UNTRUSTED), False, "istio-system/mesh-deny-untrusted", None),
    ("mesh-wide-deny-spares-others", ["mesh-deny-untrusted"], conn(), True, None, NO_ALLOW),
    ("other-namespace-policy", ["frontend-allow-nothing"], conn(), True, None, NO_ALLOW),
    ("other-namespace-policy-applies-there", ["frontend-allow-nothing"], conn(namespace="frontend"), False, None,
     None),
    ("when-source-ip-in", ["when-pod-network"], conn(None, ip="127.101.3.4"), True, "bookinfo/when-pod-network",
     None),
    ("when-source-ip-v6", ["when-pod-network"], conn(None, ip="::1"), True, "bookinfo/when-pod-network", None),
    ("when-source-ip-out", ["when-pod-network"], conn(ip="127.102.0.1"), False, None, None),
    ("when-all-conditions", ["when-not-health-port"], conn(port=9080), True, "bookinfo/when-not-health-port",
     None),
    ("when-not-values", ["when-not-health-port"], conn(port=15021), False, None, None),
    ("when-principal-differs", ["when-not-health-port"], conn(RATINGS), False, None, None),
    ("second-rule-matches", ["two-rules"], conn(None, ip="127.101.1.5"), True, "bookinfo/two-rules",
     "allowed by ALLOW policy bookinfo/two-rules (rule 1)"),
    ("when-destination-ip", ["when-destination-ip"], conn(dest_ip="127.101.2.10"), True,
     "bookinfo/when-destination-ip", None),
    ("when-destination-ip-unknown", ["when-destination-ip"], conn(), False, None, None),
]


@pytest.mark.parametrize("names, connection, allowed, decided_by, reason", [row[1:] for row in AUTHORIZE],
                         ids=[row[0] for row in AUTHORIZE])
def test_authorize(names, connection, allowed, decided_by, reason):
    decision = authorize(authz(*names), connection)
    assert isinstance(decision, Decision)
    assert (decision.allowed, decision.policy) == (allowed, decided_by)
    if reason is not None:
        assert decision.reason == reason


# --- PeerAuthentication --------------------------------------------------------------------------------------

PEER = {
    "mesh-strict": policy("default", "mtls:\n  mode: STRICT", "istio-system", "PeerAuthentication"),
    "mesh-unset": policy("default", "mtls: {}", "istio-system", "PeerAuthentication"),
    "ns-permissive": policy("default", "mtls:\n  mode: PERMISSIVE", kind="PeerAuthentication"),
    "ns-strict": policy("ns-strict", "mtls:\n  mode: STRICT", kind="PeerAuthentication"),
    "ns-unset": policy("ns-unset", "", kind="PeerAuthentication"),
    "ns-disable": policy("ns-disable", "mtls:\n  mode: DISABLE", kind="PeerAuthentication"),
    "frontend-strict": policy("default", "mtls:\n  mode: STRICT", "frontend", "PeerAuthentication"),
    "reviews-permissive-9080-disable": policy("reviews", """
selector:
  matchLabels: {app: reviews}
mtls:
  mode: PERMISSIVE
portLevelMtls:
  9080:
    mode: DISABLE""", kind="PeerAuthentication"),
    "reviews-unset-9080-permissive": policy("reviews-ports", """
selector:
  matchLabels: {app: reviews}
portLevelMtls:
  9080:
    mode: PERMISSIVE
  9443:
    mode: UNSET""", kind="PeerAuthentication"),
    "reviews-strict": policy("reviews-strict", "selector:\n  matchLabels: {app: reviews}\nmtls:\n  mode: STRICT",
                             kind="PeerAuthentication"),
}


def peers(*names: str) -> list[dict]:
    if not names:
        return []
    return to_agent_json(parse_config("---\n".join(PEER[name] for name in names)))["peerAuthentications"]


REVIEWS = {"app": "reviews", "version": "v1"}
RATINGS_LABELS = {"app": "ratings", "version": "v1"}

# (id, policies, namespace, labels, port, mode)
MTLS = [
    ("default-permissive", [], "bookinfo", REVIEWS, 9080, "PERMISSIVE"),
    ("mesh-strict", ["mesh-strict"], "bookinfo", REVIEWS, 9080, "STRICT"),
    ("mesh-unset-is-permissive", ["mesh-unset"], "bookinfo", REVIEWS, 9080, "PERMISSIVE"),
    ("namespace-over-mesh", ["mesh-strict", "ns-permissive"], "bookinfo", REVIEWS, 9080, "PERMISSIVE"),
    ("namespace-unset-inherits-mesh", ["mesh-strict", "ns-unset"], "bookinfo", REVIEWS, 9080, "STRICT"),
    ("namespace-disable", ["mesh-strict", "ns-disable"], "bookinfo", REVIEWS, 9080, "DISABLE"),
    ("other-namespace-policy", ["frontend-strict"], "bookinfo", REVIEWS, 9080, "PERMISSIVE"),
    ("oldest-namespace-policy-wins", ["ns-strict", "ns-permissive"], "bookinfo", REVIEWS, 9080, "STRICT"),
    ("workload-over-namespace", ["ns-strict", "reviews-permissive-9080-disable"], "bookinfo", REVIEWS, 8080,
     "PERMISSIVE"),
    ("port-level-over-workload", ["ns-strict", "reviews-permissive-9080-disable"], "bookinfo", REVIEWS, 9080,
     "DISABLE"),
    ("workload-selector-misses", ["ns-strict", "reviews-permissive-9080-disable"], "bookinfo", RATINGS_LABELS, 9080,
     "STRICT"),
    ("workload-unset-inherits", ["mesh-strict", "reviews-unset-9080-permissive"], "bookinfo", REVIEWS, 8080,
     "STRICT"),
    ("port-level-over-inherited", ["mesh-strict", "reviews-unset-9080-permissive"], "bookinfo", REVIEWS, 9080,
     "PERMISSIVE"),
    ("port-level-unset-inherits", ["mesh-strict", "reviews-unset-9080-permissive"], "bookinfo", REVIEWS, 9443,
     "STRICT"),
    ("workload-strict-over-permissive-namespace", ["ns-permissive", "reviews-strict"], "bookinfo", REVIEWS, 9080,
     "STRICT"),
    ("workload-policy-other-namespace", ["reviews-strict"], "frontend", REVIEWS, 9080, "PERMISSIVE"),
]


@pytest.mark.parametrize("names, namespace, labels, port, mode", [row[1:] for row in MTLS],
                         ids=[row[0] for row in MTLS])
def test_mtls_mode(names, namespace, labels, port, mode):
    assert mtls_mode(peers(*names), namespace, labels, port) == mode


@pytest.mark.parametrize("principal, namespace", [
    (PRODUCTPAGE, "bookinfo"), ("spiffe://example.org/ns/shop/sa/web", "shop"), ("cluster.local/sa/x", None),
    ("cluster.local/ns/", None)])
def test_namespace_of_principal(principal, namespace):
    assert namespace_of(principal) == namespace
