"""Mesh config: Istio security YAML parsed, validated (file and line in every error), stored and normalized."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from lab.errors import ConfigError, LabError
from lab.meshconfig import (
    ConfigNotFound,
    ConfigObject,
    ConfigStore,
    load_config,
    objects_to_yaml,
    parse_config,
    resolve_kind,
    to_agent_json,
)

# --- the shapes of Istio's security tasks, written for the lab ---------------------------------------------

ALLOW_NOTHING = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: bookinfo
spec:
  {}
"""

DENY_ALL = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-all
  namespace: bookinfo
spec:
  action: DENY
  rules:
  - {}
"""

ALLOW_FROM_NAMESPACE = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-from-frontend
  namespace: bookinfo
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        namespaces: ["frontend"]
"""

ALLOW_PRINCIPALS_TO_PORT = """\
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: reviews-viewer
  namespace: bookinfo
  labels:
    team: books
spec:
  selector:
    matchLabels:
      app: reviews
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/bookinfo/sa/productpage
        - cluster.local/ns/bookinfo/sa/ratings
    to:
    - operation:
        ports: ["9080"]
"""

STRICT_NAMESPACE = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: bookinfo
spec:
  mtls:
    mode: STRICT
"""

WORKLOAD_PERMISSIVE_PORT_DISABLE = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: reviews
  namespace: bookinfo
spec:
  selector:
    matchLabels:
      app: reviews
  mtls:
    mode: PERMISSIVE
  portLevelMtls:
    9080:
      mode: DISABLE
"""

MESH_STRICT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
"""

L7_GET_ONLY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: get-only
  namespace: bookinfo
spec:
  selector:
    matchLabels:
      app: details
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/bookinfo/sa/productpage"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/details/*"]
    when:
    - key: request.headers[x-user]
      values: ["alice"]
    - key: source.ip
      notValues: ["10.0.0.0/8"]
"""

EXAMPLES = {"allow-nothing": ALLOW_NOTHING, "deny-all": DENY_ALL, "allow-from-namespace": ALLOW_FROM_NAMESPACE,
            "allow-principals-to-port": ALLOW_PRINCIPALS_TO_PORT, "strict-namespace": STRICT_NAMESPACE,
            "workload-permissive-port-disable": WORKLOAD_PERMISSIVE_PORT_DISABLE, "mesh-strict": MESH_STRICT,
            "l7-get-only": L7_GET_ONLY}


@pytest.mark.parametrize("text", EXAMPLES.values(), ids=EXAMPLES.keys())
def test_istio_examples_parse_and_round_trip(text):
    [obj] = parse_config(text, "example.yaml")
    assert obj.kind in ("PeerAuthentication", "AuthorizationPolicy")
    assert parse_config(obj.to_yaml()) == [obj]


def test_objects_keep_what_was_written():
    [obj] = parse_config(ALLOW_PRINCIPALS_TO_PORT)
    assert (obj.api_version, obj.kind, obj.ref, obj.labels) == (
        "security.istio.io/v1beta1", "AuthorizationPolicy", "bookinfo/reviews-viewer", {"team": "books"})
    assert obj.spec == {
        "selector": {"matchLabels": {"app": "reviews"}}, "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/bookinfo/sa/productpage",
                                                       "cluster.local/ns/bookinfo/sa/ratings"]}}],
                   "to": [{"operation": {"ports": ["9080"]}}]}]}
    [pa] = parse_config(WORKLOAD_PERMISSIVE_PORT_DISABLE)
    assert pa.spec["portLevelMtls"] == {"9080": {"mode": "DISABLE"}}  # ports are string keys, as in JSON


def test_multi_document_file_in_order_with_default_namespace():
    text = "# security for bookinfo\n---\n" + STRICT_NAMESPACE + "---\n---\n" + ALLOW_NOTHING.replace(
        "  namespace: bookinfo\n", "")
    objects = parse_config(text)
    assert [o.ref for o in objects] == ["bookinfo/default", "default/allow-nothing"]
    assert [o.ref for o in parse_config(text, default_namespace="shop")][1] == "shop/allow-nothing"
    assert parse_config(objects_to_yaml(objects)) == objects


# --- errors: every problem, by file, line and field --------------------------------------------------------

HEAD = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: p
  namespace: bookinfo
spec:
"""  # an AuthorizationPolicy whose spec starts on line 7
PA_HEAD = HEAD.replace("AuthorizationPolicy", "PeerAuthentication")
RULE = "  rules:\n  - from:\n    - source:\n"  # lines 7-9; the source's fields start on line 10
TO = "  rules:\n  - to:\n    - operation:\n"


def spec(body: str, head: str = HEAD) -> str:
    return head + textwrap.indent(textwrap.dedent(body), "  ")


ERRORS = [
    ("misspelt-source-field", HEAD + RULE + "        principalz: [x]\n",
     ["spec.rules[0].from[0].source.principalz: unknown field 'principalz'; did you mean 'principals'? "
      "(policy.yaml:10)"]),
    ("spiffe-prefix", HEAD + RULE + "        principals: [spiffe://cluster.local/ns/a/sa/b]\n",
     ["spec.rules[0].from[0].source.principals[0]: write principals without 'spiffe://' "
      "(like 'cluster.local/ns/a/sa/b') (policy.yaml:10)"]),
    ("bad-cidr", HEAD + RULE + "        ipBlocks: [10.0.0.0/8, 10.0.0.0/33]\n",
     ["spec.rules[0].from[0].source.ipBlocks[1]: invalid IP address or CIDR block '10.0.0.0/33' (policy.yaml:10)"]),
    ("bad-ip", HEAD + RULE + "        notIpBlocks:\n        - 300.1.1.1\n",
     ["spec.rules[0].from[0].source.notIpBlocks[0]: invalid IP address or CIDR block '300.1.1.1' "
      "(policy.yaml:11)"]),
    ("wildcard-in-the-middle", HEAD + RULE + "        namespaces: [\"foo*bar\"]\n",
     ["spec.rules[0].from[0].source.namespaces[0]: invalid value 'foo*bar': '*' may only be the whole value, "
      "a prefix or a suffix (policy.yaml:10)"]),
    ("service-accounts", HEAD + RULE + "        serviceAccounts: [productpage]\n",
     ["spec.rules[0].from[0].source.serviceAccounts: field 'serviceAccounts' is not supported yet; use principals "
      "(like cluster.local/ns/<namespace>/sa/<service account>) (policy.yaml:10)"]),
    ("empty-source", HEAD + "  rules:\n  - from:\n    - source: {}\n",
     ["spec.rules[0].from[0].source: source is empty; set at least one of: principals, notPrincipals, "
      "requestPrincipals, notRequestPrincipals, namespaces, notNamespaces, ipBlocks, notIpBlocks, remoteIpBlocks, "
      "notRemoteIpBlocks (policy.yaml:9)"]),
    ("from-without-source", HEAD + "  rules:\n  - from:\n    - {}\n",
     ["spec.rules[0].from[0]: missing required field 'source' (policy.yaml:9)"]),
    ("port-as-integer", HEAD + TO + "        ports: [9080]\n",
     ["spec.rules[0].to[0].operation.ports[0]: expected a string, got an integer (9080); quote it (policy.yaml:10)"]),
    ("port-out-of-range", HEAD + TO + "        notPorts: [\"70000\"]\n",
     ["spec.rules[0].to[0].operation.notPorts[0]: invalid port '70000': expected a number 1-65535 "
      "(written as a string, like \"8080\") (policy.yaml:10)"]),
    ("port-by-name", HEAD + TO + "        ports: [http]\n",
     ["spec.rules[0].to[0].operation.ports[0]: invalid port 'http': expected a number 1-65535 "
      "(written as a string, like \"8080\") (policy.yaml:10)"]),
    ("misspelt-operation-field", HEAD + TO + "        method: [GET]\n",
     ["spec.rules[0].to[0].operation.method: unknown field 'method'; did you mean 'methods'? (policy.yaml:10)"]),
    ("values-not-a-list", HEAD + TO + "        paths: /admin\n",
     ["spec.rules[0].to[0].operation.paths: expected a list of strings, got a string '/admin' (policy.yaml:10)"]),
    ("action-custom", spec("action: CUSTOM\n"),
     ["spec.action: action CUSTOM is not supported (meshlab has no external authorizers); use ALLOW or DENY "
      "(policy.yaml:7)"]),
    ("action-audit", spec("action: AUDIT\nrules: [{}]\n"),
     ["spec.action: action AUDIT is not supported (meshlab has no audit log sink); use ALLOW or DENY "
      "(policy.yaml:7)"]),
    ("action-lowercase", spec("action: deny\n"),
     ["spec.action: unknown action 'deny'; expected one of: ALLOW, DENY, AUDIT, CUSTOM (policy.yaml:7)"]),
    ("provider", spec("action: CUSTOM\nprovider:\n  name: ext-authz\n"),
     ["spec.action: action CUSTOM is not supported (meshlab has no external authorizers); use ALLOW or DENY "
      "(policy.yaml:7)",
      "spec.provider: field 'provider' is not supported: it serves action CUSTOM, and meshlab has no external "
      "authorizers (policy.yaml:8)"]),
    ("selector-and-target-refs", spec("selector:\n  matchLabels: {app: reviews}\ntargetRefs:\n"
                                      "- {kind: Service, group: '', name: reviews}\n"),
     ["spec.selector: selector and targetRefs cannot both be set: a policy selects workloads or attaches to a "
      "target, not both (policy.yaml:8)"]),
    ("target-ref-without-name", spec("targetRefs:\n- kind: Gateway\n"),
     ["spec.targetRefs[0]: missing required field 'name' (policy.yaml:8)"]),
    ("label-value-number", spec("selector:\n  matchLabels:\n    version: 1\n"),
     ["spec.selector.matchLabels.version: expected a string, got an integer (1); quote it (policy.yaml:9)"]),
    ("rules-not-a-list", spec("rules:\n  from: []\n"),
     ["spec.rules: expected a list of rules, got a mapping (policy.yaml:8)"]),
    ("condition-without-values", spec("rules:\n- when:\n  - key: source.ip\n"),
     ["spec.rules[0].when[0]: condition 'source.ip' needs values or notValues (policy.yaml:9)"]),
    ("condition-key-misspelt", spec("rules:\n- when:\n  - key: source.principals\n    values: [a]\n"),
     ["spec.rules[0].when[0].key: unknown condition key 'source.principals'; did you mean 'source.principal'? "
      "(policy.yaml:9)"]),
    ("condition-experimental", spec("rules:\n- when:\n  - key: experimental.envoy.filters.x[y]\n"
                                    "    values: [a]\n"),
     ["spec.rules[0].when[0].key: condition key 'experimental.envoy.filters.x[y]' is not supported "
      "(experimental Envoy filter attributes) (policy.yaml:9)"]),
    ("condition-bad-port", spec("rules:\n- when:\n  - key: destination.port\n    notValues: [\"0\"]\n"),
     ["spec.rules[0].when[0].notValues[0]: invalid port '0': expected a number 1-65535 "
      "(written as a string, like \"8080\") (policy.yaml:10)"]),
    ("spec-field-misplaced", spec("when:\n- key: source.ip\n  values: [10.0.0.1]\n"),
     ["spec.when: unknown field 'when'; expected one of: selector, targetRef, targetRefs, action, rules "
      "(policy.yaml:7)"]),
    ("duplicate-key", spec("action: DENY\naction: ALLOW\n"),
     ["spec.action: duplicate key 'action' (first at line 7) (policy.yaml:8)"]),
    ("port-level-without-selector", spec("portLevelMtls:\n  8080:\n    mode: DISABLE\n", PA_HEAD),
     ["spec.portLevelMtls: portLevelMtls needs a selector with matchLabels: Istio applies port-level mTLS only to "
      "selected workloads, never to a whole namespace or mesh (policy.yaml:8)"]),
    ("mtls-mode-lowercase", spec("mtls:\n  mode: strict\n", PA_HEAD),
     ["spec.mtls.mode: unknown mTLS mode 'strict'; expected one of: UNSET, DISABLE, PERMISSIVE, STRICT "
      "(policy.yaml:8)"]),
    ("port-level-by-name", spec("selector:\n  matchLabels: {app: a}\nportLevelMtls:\n  http:\n"
                                "    mode: DISABLE\n", PA_HEAD),
     ["spec.portLevelMtls: expected a port number 1-65535 as key, got a string 'http' (policy.yaml:10)"]),
    ("port-level-twice", spec("selector:\n  matchLabels: {app: a}\nportLevelMtls:\n  8080: {mode: DISABLE}\n"
                              "  '8080': {mode: STRICT}\n", PA_HEAD),
     ["spec.portLevelMtls.8080: duplicate port 8080 (first at line 10) (policy.yaml:11)"]),
    ("mesh-policy-with-selector",
     spec("selector:\n  matchLabels: {app: a}\n", PA_HEAD.replace("bookinfo", "istio-system")),
     ["spec.selector: a PeerAuthentication in the root namespace 'istio-system' applies to the whole mesh and "
      "cannot have a selector (Istio ignores it there); put it in the workload's namespace (policy.yaml:8)"]),
    ("peer-authentication-misplaced-field", spec("mtls:\n  mode: STRICT\naction: DENY\n", PA_HEAD),
     ["spec.action: unknown field 'action'; expected one of: selector, mtls, portLevelMtls (policy.yaml:9)"]),
    # the object around the spec
    ("virtual-service", HEAD.replace("security.istio.io/v1", "networking.istio.io/v1")
     .replace("AuthorizationPolicy", "VirtualService") + "  hosts: [reviews]\n",
     ["spec: missing required field 'http' (policy.yaml:7)"]),
    ("http-route", HEAD.replace("security.istio.io/v1", "gateway.networking.k8s.io/v1")
     .replace("AuthorizationPolicy", "HTTPRoute") + "  parentRefs: []\n",
     ["spec.parentRefs: at least one parent reference is required (policy.yaml:7)"]),
    ("kind-misspelt", HEAD.replace("kind: AuthorizationPolicy", "kind: AuthorisationPolicy") + "  {}\n",
     ["kind: unknown kind 'AuthorisationPolicy'; did you mean 'AuthorizationPolicy'? (policy.yaml:2)"]),
    ("kind-unknown", HEAD.replace("kind: AuthorizationPolicy", "kind: Gateway") + "  {}\n",
     ["kind: unknown kind 'Gateway'; meshlab accepts PeerAuthentication, AuthorizationPolicy, VirtualService, "
      "DestinationRule, HTTPRoute (policy.yaml:2)"]),
    ("api-version-alpha", HEAD.replace("security.istio.io/v1", "security.istio.io/v1alpha1") + "  {}\n",
     ["apiVersion: apiVersion 'security.istio.io/v1alpha1' does not serve AuthorizationPolicy; use "
      "security.istio.io/v1 or security.istio.io/v1beta1 (policy.yaml:1)"]),
    ("name-missing", HEAD.replace("  name: p\n", "") + "  {}\n",
     ["metadata: missing required field 'name' (policy.yaml:4)"]),
    ("name-invalid", HEAD.replace("name: p", "name: Allow_All") + "  {}\n",
     ["metadata.name: invalid name 'Allow_All': use lowercase letters, digits, '-' and '.', starting and ending "
      "with a letter or digit, at most 253 characters (policy.yaml:4)"]),
    ("namespace-invalid", HEAD.replace("namespace: bookinfo", "namespace: book.info") + "  {}\n",
     ["metadata.namespace: invalid namespace 'book.info': use lowercase letters, digits and '-', starting and "
      "ending with a letter or digit, at most 63 characters (policy.yaml:5)"]),
    ("server-set-fields", HEAD.replace("  name: p\n", "  name: p\n  resourceVersion: \"42\"\n")
     + "  {}\nstatus: {}\n",
     ["metadata.resourceVersion: field 'resourceVersion' is set by the Kubernetes API server and means nothing "
      "here; remove it (policy.yaml:5)",
      "status: field 'status' is set by the Kubernetes API server and means nothing here; remove it "
      "(policy.yaml:9)"]),
    ("same-object-twice", HEAD + "  {}\n---\n" + HEAD + "  action: DENY\n",
     ["metadata.name: duplicate AuthorizationPolicy bookinfo/p (first at line 4) (policy.yaml:12)"]),
    ("not-an-object", "- apiVersion: security.istio.io/v1\n",
     ["expected an object (a mapping with apiVersion, kind, metadata and spec), got a list (policy.yaml:1)"]),
    ("empty-file", "# nothing yet\n",
     ["the file has no objects; expected Istio config such as a PeerAuthentication (policy.yaml)"]),
    ("yaml-syntax", HEAD + "  rules: [\n",
     ["invalid YAML: expected the node content, but found '<stream end>' (while parsing a flow node) "
      "(policy.yaml:8)"]),
    ("binary", b"apiVersion: v1\nkind: \0",
     ["the file contains binary data (a NUL byte); mesh config is UTF-8 YAML text (policy.yaml:2)"]),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_errors_name_file_line_and_field(text, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "/somewhere/policy.yaml")
    assert [str(p) for p in info.value.problems] == expected
    assert isinstance(info.value, LabError) and info.value.exit_code == 2


def test_every_problem_of_every_document_is_reported_in_line_order():
    text = (STRICT_NAMESPACE.replace("STRICT", "strict") + "---\n"
            + HEAD + RULE + "        principalz: [x]\n        ipBlocks: [nope]\n")
    with pytest.raises(ConfigError) as info:
        parse_config(text, "policy.yaml")
    assert [(p.line, p.path) for p in info.value.problems] == [
        (8, "spec.mtls.mode"), (19, "spec.rules[0].from[0].source.principalz"),
        (20, "spec.rules[0].from[0].source.ipBlocks[0]")]


def test_load_config_names_an_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read mesh config file .*missing.yaml: no such file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="it is a directory"):
        load_config(tmp_path)
    (tmp_path / "ok.yaml").write_text(STRICT_NAMESPACE)
    assert [o.ref for o in load_config(tmp_path / "ok.yaml")] == ["bookinfo/default"]


# --- the agents' normalized form ---------------------------------------------------------------------------


def test_agent_json_of_policies():
    objects = parse_config("---\n".join([MESH_STRICT, WORKLOAD_PERMISSIVE_PORT_DISABLE, ALLOW_NOTHING,
                                         ALLOW_PRINCIPALS_TO_PORT, L7_GET_ONLY]))
    snapshot = to_agent_json(objects)
    assert snapshot["peerAuthentications"] == [
        {"name": "default", "namespace": "istio-system", "scope": "mesh", "selector": None, "mode": "STRICT",
         "portLevelMtls": {}},
        {"name": "reviews", "namespace": "bookinfo", "scope": "workload", "selector": {"app": "reviews"},
         "mode": "PERMISSIVE", "portLevelMtls": {"9080": "DISABLE"}}]
    nothing, viewer, get_only = snapshot["authorizationPolicies"]
    assert nothing == {"name": "allow-nothing", "namespace": "bookinfo", "scope": "namespace", "selector": None,
                       "targetRefs": [], "action": "ALLOW", "rules": []}
    assert viewer["scope"] == "workload" and viewer["rules"] == [
        {"from": [{"principals": ["cluster.local/ns/bookinfo/sa/productpage",
                                  "cluster.local/ns/bookinfo/sa/ratings"]}],
         "to": [{"ports": [9080]}], "when": [], "l7": False, "l7Attributes": []}]
    assert get_only["rules"][0]["l7"] is True
    assert get_only["rules"][0]["l7Attributes"] == ["methods", "paths", "request.headers[x-user]"]
    assert json.loads(json.dumps(snapshot)) == snapshot  # plain JSON


def test_agent_json_marks_attached_policies_and_deny_all():
    attached = spec("targetRefs:\n- kind: Service\n  group: ''\n  name: reviews\nrules:\n- to:\n  - operation:\n"
                    "      methods: [GET]\n")
    [policy] = to_agent_json(parse_config(attached))["authorizationPolicies"]
    assert policy["scope"] == "targetRefs" and policy["targetRefs"] == [{"group": "", "kind": "Service",
                                                                         "name": "reviews"}]
    [deny_all] = to_agent_json(parse_config(DENY_ALL))["authorizationPolicies"]
    assert deny_all["action"] == "DENY" and deny_all["rules"] == [
        {"from": [], "to": [], "when": [], "l7": False, "l7Attributes": []}]


# --- the store ---------------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> ConfigStore:
    return ConfigStore(tmp_path / "lab" / "meshconfig.json")


def test_apply_creates_configures_and_leaves_unchanged(store):
    first = parse_config(STRICT_NAMESPACE + "---\n" + ALLOW_NOTHING)
    assert store.apply(first) == [("PeerAuthentication", "bookinfo/default", "created"),
                                  ("AuthorizationPolicy", "bookinfo/allow-nothing", "created")]
    assert store.version == 1
    assert store.apply(first) == [("PeerAuthentication", "bookinfo/default", "unchanged"),
                                  ("AuthorizationPolicy", "bookinfo/allow-nothing", "unchanged")]
    assert store.version == 1  # nothing changed, no new version
    permissive = parse_config(STRICT_NAMESPACE.replace("STRICT", "PERMISSIVE"))
    assert store.apply(permissive) == [("PeerAuthentication", "bookinfo/default", "configured")]
    assert store.version == 2
    assert [o.ref for o in store.objects()] == ["bookinfo/default", "bookinfo/allow-nothing"]  # keeps its place
    reopened = ConfigStore(store.path)
    assert reopened.version == 2 and reopened.objects() == store.objects()


def test_a_bad_document_applies_nothing(store):
    store.apply(parse_config(ALLOW_NOTHING))
    before = store.path.read_bytes()
    with pytest.raises(ConfigError):
        store.apply(parse_config(STRICT_NAMESPACE + "---\n" + DENY_ALL.replace("DENY", "deny")))
    assert store.version == 1 and store.path.read_bytes() == before
    assert [o.name for o in store.get()] == ["allow-nothing"]


def test_the_store_refuses_a_batch_it_cannot_take_whole(store):
    [pa] = parse_config(STRICT_NAMESPACE)
    with pytest.raises(LabError, match="PeerAuthentication bookinfo/default is given twice in one apply"):
        store.apply([pa, pa])
    gateway = ConfigObject("gateway.networking.k8s.io/v1", "Gateway", "waypoint", "bookinfo")
    with pytest.raises(LabError, match="cannot apply Gateway"):
        store.apply([pa, gateway])
    assert store.version == 0 and store.get() == [] and not store.path.exists()


@pytest.mark.parametrize("kind", ["PeerAuthentication", "peerauthentication", "peerauthentications", "pa", "PA",
                                  "peerauthentications.security.istio.io"])
def test_get_peer_authentications_by_any_kind_name(store, kind):
    store.apply(parse_config(STRICT_NAMESPACE + "---\n" + ALLOW_NOTHING))
    assert [o.kind for o in store.get(kind)] == ["PeerAuthentication"]


@pytest.mark.parametrize("kind", ["AuthorizationPolicy", "authorizationpolicy", "authorizationpolicies", "ap",
                                  "AuthorizationPolicies"])
def test_get_authorization_policies_by_any_kind_name(store, kind):
    store.apply(parse_config(STRICT_NAMESPACE + "---\n" + ALLOW_NOTHING))
    assert [o.kind for o in store.get(kind)] == ["AuthorizationPolicy"]


def test_get_filters_by_name_and_namespace(store):
    store.apply(parse_config("---\n".join([MESH_STRICT, STRICT_NAMESPACE, ALLOW_NOTHING, DENY_ALL])))
    assert [o.ref for o in store.get()] == ["bookinfo/allow-nothing", "bookinfo/deny-all", "bookinfo/default",
                                            "istio-system/default"]
    assert [o.ref for o in store.get("pa", name="default")] == ["bookinfo/default", "istio-system/default"]
    assert [o.ref for o in store.get("pa", namespace="istio-system")] == ["istio-system/default"]
    assert store.get("ap", name="nope") == []


def test_kind_names_that_are_not_accepted():
    with pytest.raises(LabError, match=r"unknown kind 'gateway'; expected one of: PeerAuthentication, "
                                       r"AuthorizationPolicy, VirtualService, DestinationRule, HTTPRoute "
                                       r"\(or pa, ap, vs, dr\)"):
        resolve_kind("gateway")
    assert [resolve_kind(k) for k in ("vs", "dr", "httproutes", "HTTPRoute.gateway.networking.k8s.io")] == [
        "VirtualService", "DestinationRule", "HTTPRoute", "HTTPRoute"]


def test_delete_one_and_missing_ones(store):
    store.apply(parse_config(STRICT_NAMESPACE + "---\n" + ALLOW_NOTHING))
    assert store.delete("ap", "allow-nothing", "bookinfo") == [
        ("AuthorizationPolicy", "bookinfo/allow-nothing", "deleted")]
    assert store.version == 2 and [o.kind for o in ConfigStore(store.path).get()] == ["PeerAuthentication"]
    with pytest.raises(ConfigNotFound) as info:
        store.delete("authorizationpolicy", "allow-nothing", "bookinfo")
    assert str(info.value) == "AuthorizationPolicy 'allow-nothing' not found in namespace 'bookinfo'"
    assert info.value.exit_code == 3
    assert store.delete("ap", "allow-nothing", "bookinfo", missing_ok=True) == []
    assert store.version == 2


def test_delete_objects_is_all_or_nothing(store):
    store.apply(parse_config(STRICT_NAMESPACE + "---\n" + ALLOW_NOTHING))
    file = parse_config(STRICT_NAMESPACE + "---\n" + DENY_ALL)
    with pytest.raises(ConfigNotFound, match="AuthorizationPolicy 'deny-all' not found in namespace 'bookinfo'"):
        store.delete_objects(file)
    assert len(store.get()) == 2 and store.version == 1
    assert store.delete_objects(file, missing_ok=True) == [("PeerAuthentication", "bookinfo/default", "deleted")]
    assert [o.name for o in store.get()] == ["allow-nothing"] and store.version == 2


def test_a_corrupt_store_file_is_a_lab_error(tmp_path):
    path = tmp_path / "meshconfig.json"
    path.write_text("{not json")
    with pytest.raises(LabError, match="cannot read the mesh config store"):
        ConfigStore(path)


def test_get_yaml_reads_back_as_applied(store):
    store.apply(parse_config("---\n".join(EXAMPLES.values())))
    text = objects_to_yaml(store.get())
    assert sorted(parse_config(text), key=lambda o: o.key) == sorted(store.objects(), key=lambda o: o.key)
