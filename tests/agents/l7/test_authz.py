"""L7 AuthorizationPolicy decisions (agents.l7.authz), table-driven; policies are Istio YAML normalized by the lab."""

from __future__ import annotations

import pytest

from agents.l7.authz import (
    DENIED_BODY,
    DENIED_STATUS,
    AuthzRequest,
    PolicyError,
    PolicyTarget,
    applies,
    authorize,
    compile_policies,
    normalize_path,
)
from lab.meshconfig import parse_config, to_agent_json

PRODUCTPAGE = "cluster.local/ns/bookinfo/sa/productpage"
RATINGS = "cluster.local/ns/bookinfo/sa/ratings"
FRONTEND = "cluster.local/ns/frontend/sa/web"
WAYPOINT = PolicyTarget("bookinfo", waypoint="waypoint", service="reviews", service_namespace="bookinfo")
SIDECAR = PolicyTarget("bookinfo", labels={"app": "reviews", "version": "v1"})
ATTACH = "targetRefs:\n- kind: Service\n  group: ''\n  name: reviews\n"


def policy(name: str, body: str, namespace: str = "bookinfo", attach: str = ATTACH) -> str:
    spec = attach + body.strip("\n") + "\n"
    indented = "".join(f"  {line}\n" for line in spec.strip("\n").splitlines())
    return (f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n"
            f"  namespace: {namespace}\nspec:\n{indented}")


POLICIES = {
    "allow-nothing": policy("allow-nothing", ""),
    "deny-all": policy("deny-all", "action: DENY\nrules:\n- {}"),
    "get-only": policy("get-only", "rules:\n- to:\n  - operation:\n      methods: [GET, HEAD]"),
    "reviews-paths": policy("reviews-paths", "rules:\n- to:\n  - operation:\n"
                                             "      paths: [/reviews/*, /health, '*.css']"),
    "deny-admin": policy("deny-admin", "action: DENY\nrules:\n- to:\n  - operation:\n      paths: [/admin*]"),
    "deny-not-get": policy("deny-not-get", "action: DENY\nrules:\n- to:\n  - operation:\n      notMethods: [GET]"),
    "productpage-get": policy("productpage-get", f"""
rules:
- from:
  - source:
      principals: ["{PRODUCTPAGE}"]
  to:
  - operation:
      methods: [GET]
      paths: ["/reviews/*"]"""),
    "from-frontend-ns": policy("from-frontend-ns", "rules:\n- from:\n  - source:\n      namespaces: [frontend]"),
    "hosts": policy("hosts", "rules:\n- to:\n  - operation:\n      hosts: [reviews, '*.bookinfo.svc.cluster.local',"
                             " 'reviews:9080']"),
    "not-hosts": policy("not-hosts", "action: DENY\nrules:\n- to:\n  - operation:\n      notHosts: ['reviews*']"),
    "port-9080": policy("port-9080", "rules:\n- to:\n  - operation:\n      ports: ['9080']"),
    "header-jason": policy("header-jason", "rules:\n- when:\n  - key: request.headers[end-user]\n"
                                           "    values: [jason]"),
    "header-not-test": policy("header-not-test", "action: DENY\nrules:\n- when:\n  - key: request.headers[x-env]\n"
                                                 "    notValues: [prod*]"),
    "ip-block": policy("ip-block", "rules:\n- from:\n  - source:\n      ipBlocks: [10.1.0.0/16]"),
    "remote-ip": policy("remote-ip", "rules:\n- from:\n  - source:\n      remoteIpBlocks: [192.0.2.0/24]"),
    "when-principal": policy("when-principal", f"rules:\n- when:\n  - key: source.principal\n"
                                               f"    values: ['{RATINGS}']"),
    "when-namespace": policy("when-namespace", "rules:\n- when:\n  - key: source.namespace\n    values: [front*]"),
    "when-port": policy("when-port", "rules:\n- when:\n  - key: destination.port\n    values: ['9080']"),
    "when-remote-ip": policy("when-remote-ip", "rules:\n- when:\n  - key: remote.ip\n    values: [192.0.2.7]"),
    "selector-policy": policy("selector-policy", "action: DENY\nrules:\n- {}",
                              attach="selector:\n  matchLabels: {app: reviews}\n"),
    "namespace-deny": policy("namespace-deny", "action: DENY\nrules:\n- to:\n  - operation:\n      methods: [DELETE]",
                             attach=""),
    "waypoint-gateway": policy("waypoint-gateway", "action: DENY\nrules:\n- to:\n  - operation:\n"
                                                   "      methods: [PUT]",
                               attach="targetRefs:\n- kind: Gateway\n  group: gateway.networking.k8s.io\n"
                                      "  name: waypoint\n"),
    "other-service": policy("other-service", "action: DENY\nrules:\n- {}",
                            attach="targetRefs:\n- kind: Service\n  group: ''\n  name: ratings\n"),
    "mesh-waypoints": policy("mesh-waypoints", "action: DENY\nrules:\n- to:\n  - operation:\n      paths: [/debug]",
                             namespace="istio-system",
                             attach="targetRefs:\n- kind: GatewayClass\n  group: gateway.networking.k8s.io\n"
                                    "  name: istio-waypoint\n"),
}


def policies(*names: str) -> list[dict]:
    if not names:
        return []
    return to_agent_json(parse_config("---\n".join(POLICIES[n] for n in names)))["authorizationPolicies"]


def request(method: str = "GET", path: str = "/reviews/1", host: str = "reviews:9080", headers: tuple = (),
            principal: str | None = PRODUCTPAGE, ip: str = "10.1.2.3", remote: str | None = None,
            port: int = 9080) -> AuthzRequest:
    return AuthzRequest(method, path, host, headers, principal, ip, remote, "10.2.0.1", port)


CASES = [
    # (names, request, target, allowed)
    ((), request(), WAYPOINT, True),
    (("allow-nothing",), request(), WAYPOINT, False),
    (("deny-all",), request(), WAYPOINT, False),
    (("get-only",), request(), WAYPOINT, True),
    (("get-only",), request("HEAD"), WAYPOINT, True),
    (("get-only",), request("POST"), WAYPOINT, False),
    (("reviews-paths",), request(path="/reviews/7"), WAYPOINT, True),
    (("reviews-paths",), request(path="/reviews"), WAYPOINT, False),
    (("reviews-paths",), request(path="/health"), WAYPOINT, True),
    (("reviews-paths",), request(path="/static/site.css"), WAYPOINT, True),
    (("reviews-paths",), request(path="/healthz"), WAYPOINT, False),
    (("get-only", "deny-admin"), request(path="/admin/users"), WAYPOINT, False),
    (("get-only", "deny-admin"), request(path="/administrator"), WAYPOINT, False),
    (("get-only", "deny-admin"), request(path="/reviews/admin"), WAYPOINT, True),
    (("deny-not-get",), request("POST"), WAYPOINT, False),
    (("deny-not-get",), request("GET"), WAYPOINT, True),
    (("productpage-get",), request(), WAYPOINT, True),
    (("productpage-get",), request(principal=RATINGS), WAYPOINT, False),
    (("productpage-get",), request(principal=None), WAYPOINT, False),
    (("productpage-get",), request("POST"), WAYPOINT, False),
    (("from-frontend-ns",), request(principal=FRONTEND), WAYPOINT, True),
    (("from-frontend-ns",), request(principal=PRODUCTPAGE), WAYPOINT, False),
    (("hosts",), request(host="reviews"), WAYPOINT, True),
    (("hosts",), request(host="REVIEWS:9080"), WAYPOINT, True),
    (("hosts",), request(host="reviews.bookinfo.svc.cluster.local:9080"), WAYPOINT, True),
    (("hosts",), request(host="ratings:9080"), WAYPOINT, False),
    (("not-hosts", "get-only"), request(host="ratings"), WAYPOINT, False),
    (("not-hosts", "get-only"), request(host="reviews.bookinfo"), WAYPOINT, True),
    (("port-9080",), request(port=9080), WAYPOINT, True),
    (("port-9080",), request(port=9081), WAYPOINT, False),
    (("header-jason",), request(headers=(("End-User", "jason"),)), WAYPOINT, True),
    (("header-jason",), request(headers=(("end-user", "alice"),)), WAYPOINT, False),
    (("header-jason",), request(), WAYPOINT, False),
    (("header-not-test",), request(headers=(("x-env", "test"),)), WAYPOINT, False),
    (("header-not-test",), request(headers=(("x-env", "production"),)), WAYPOINT, True),
    (("header-not-test",), request(), WAYPOINT, False),  # an absent header is "not prod*", as in Envoy
    (("ip-block",), request(ip="10.1.200.1"), WAYPOINT, True),
    (("ip-block",), request(ip="10.2.0.1"), WAYPOINT, False),
    (("remote-ip",), request(ip="10.1.2.3", remote="192.0.2.9"), WAYPOINT, True),
    (("remote-ip",), request(ip="192.0.2.9"), WAYPOINT, True),
    (("remote-ip",), request(ip="10.1.2.3"), WAYPOINT, False),
    (("when-principal",), request(principal="spiffe://" + RATINGS), WAYPOINT, True),
    (("when-principal",), request(), WAYPOINT, False),
    (("when-namespace",), request(principal=FRONTEND), WAYPOINT, True),
    (("when-namespace",), request(principal=None), WAYPOINT, False),
    (("when-port",), request(port=9080), WAYPOINT, True),
    (("when-remote-ip",), request(remote="192.0.2.7"), WAYPOINT, True),
    (("when-remote-ip",), request(), WAYPOINT, False),
    (("selector-policy",), request(), WAYPOINT, True),  # selector policies are not a waypoint's
    (("selector-policy",), request(), SIDECAR, False),  # ...but a sidecar's
    (("get-only",), request("POST"), SIDECAR, True),  # attached policies are not a sidecar's
    (("namespace-deny",), request("DELETE"), SIDECAR, False),
    (("namespace-deny",), request("DELETE"), WAYPOINT, True),
    (("waypoint-gateway",), request("PUT"), WAYPOINT, False),
    (("waypoint-gateway",), request("PUT"), PolicyTarget("bookinfo", waypoint="other", service="reviews",
                                                         service_namespace="bookinfo"), True),
    (("other-service",), request(), WAYPOINT, True),
    (("mesh-waypoints",), request(path="/debug"), WAYPOINT, False),
    (("mesh-waypoints", "get-only"), request(path="/reviews/1"), WAYPOINT, True),
]


@pytest.mark.parametrize("names, req, target, allowed", CASES, ids=[f"{i}-{'+'.join(c[0]) or 'none'}"
                                                                    for i, c in enumerate(CASES)])
def test_l7_authorization(names, req, target, allowed):
    decision = authorize(compile_policies(policies(*names)), req, target)
    assert decision.allowed is allowed, decision.reason


def test_deny_wins_and_the_decision_says_why():
    decision = authorize(policies("get-only", "deny-admin"), request(path="/admin"), WAYPOINT)
    assert decision.policy == "bookinfo/deny-admin" and decision.reason == (
        "denied by DENY policy bookinfo/deny-admin (rule 0)")
    allowed = authorize(policies("get-only"), request(), WAYPOINT)
    assert allowed.reason == "allowed by ALLOW policy bookinfo/get-only (rule 0)"
    nothing = authorize(policies("allow-nothing"), request(), WAYPOINT)
    assert nothing.reason == "no rule of the ALLOW policies matched (bookinfo/allow-nothing)"
    assert (DENIED_STATUS, DENIED_BODY) == (403, "RBAC: access denied")


def test_custom_and_audit_policies_are_skipped():
    [deny] = policies("deny-all")
    assert authorize([{**deny, "action": "CUSTOM"}, {**deny, "action": "AUDIT"}], request(), WAYPOINT).allowed


def test_what_l7_cannot_enforce_is_refused_when_the_config_arrives():
    jwt = parse_config(policy("jwt", "rules:\n- from:\n  - source:\n      requestPrincipals: ['*']"))
    with pytest.raises(PolicyError, match=r"AuthorizationPolicy bookinfo/jwt rule 0: requestPrincipals is not "
                                          r"supported \(it needs JWT request authentication"):
        compile_policies(to_agent_json(jwt)["authorizationPolicies"])
    claims = parse_config(policy("claims", "rules:\n- when:\n  - key: request.auth.claims[iss]\n    values: [x]"))
    with pytest.raises(PolicyError, match="condition key 'request.auth.claims\\[iss\\]' is not supported at L7"):
        compile_policies(to_agent_json(claims)["authorizationPolicies"])
    sni = parse_config(policy("sni", "rules:\n- when:\n  - key: connection.sni\n    values: [x]"))
    with pytest.raises(PolicyError, match="connection.sni"):
        compile_policies(to_agent_json(sni)["authorizationPolicies"])


def test_applies():
    [gateway] = policies("waypoint-gateway")
    assert applies(gateway, WAYPOINT) and not applies(gateway, SIDECAR)


@pytest.mark.parametrize("path, normalized", [
    ("/a/b", "/a/b"), ("/a/./b", "/a/b"), ("/a/../admin", "/admin"), ("/../../etc", "/etc"), ("/a/b/..", "/a/"),
    ("/a/.", "/a/"), ("", "/"), ("/reviews/1.json", "/reviews/1.json"),
])
def test_normalize_path(path, normalized):
    assert normalize_path(path) == normalized


def test_normalization_closes_the_dot_dot_bypass():
    deny = policies("get-only", "deny-admin")
    assert not authorize(deny, request(path=normalize_path("/reviews/../admin/x")), WAYPOINT).allowed
