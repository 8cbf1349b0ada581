"""The topology loader: every malformed or inconsistent file gives a TopologyError naming the field and line."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from lab.errors import TopologyError
from lab.topology.loader import Problem, load_topology, parse_topology
from lab.topology.model import Topology

REPO = Path(__file__).resolve().parents[2]
TOPOLOGIES = REPO / "topologies"
MARK = "# <--"  # marks the line a case's problem is expected on

BASE = """\
name: lab
nodes:
  - name: node-1
  - name: node-2
namespaces:
  - name: demo
services:
  - name: web
    namespace: demo
    ports:
      - port: 8080
    workloads:
      - name: web-v1
        node: node-1
        run: {demo: echo}
"""


def variant(old: str, new: str) -> str:
    """BASE with `old` (which must occur exactly once) replaced by `new`."""
    assert BASE.count(old) == 1, old
    return BASE.replace(old, new)


def marked_line(text: str | bytes) -> int | None:
    """The 1-based line holding MARK, if any."""
    lines = text.splitlines() if isinstance(text, str) else []
    return next((i + 1 for i, line in enumerate(lines) if MARK in line), None)


def problems_of(text: str | bytes, source: str = "case.yaml") -> list[Problem]:
    """The problems parse_topology reports (it must raise TopologyError and nothing else)."""
    with pytest.raises(TopologyError) as info:
        parse_topology(text, source)
    problems = info.value.problems
    assert problems and all(isinstance(p, Problem) for p in problems)
    assert [p.line or 0 for p in problems] == sorted(p.line or 0 for p in problems)
    assert str(info.value) == "\n".join(str(p) for p in problems)
    return problems


CLIENT = """\
workloads:
  - name: client
    namespace: demo
    node: node-2
    run: {demo: sleep}
"""

# (id, text, expected path, expected line (None: the MARK line, or no line for file-level cases), message)
CASES = [
    # --- not YAML at all ---------------------------------------------------------------------------
    ("yaml-unclosed-flow", "name: lab\nnodes: [node-1\nnamespaces: []\n", "", 3,
     "invalid YAML: expected ',' or ']', but got ':' (while parsing a flow sequence)"),
    ("yaml-mapping-in-scalar", "name: lab: x\n", "", 1, "invalid YAML: mapping values are not allowed here"),
    ("yaml-bad-indent", variant("    namespace: demo", "   namespace: demo  # <--"), "", None,
     "invalid YAML: expected <block end>, but found '<block mapping start>' (while parsing a block collection)"),
    ("tab-indentation", "name: lab\nnodes:\n\t- name: node-1\n", "", 3,
     "tab character in indentation; YAML needs spaces"),
    ("two-documents", "name: a\n---\nname: b\n", "", 2,
     "invalid YAML: expected a single document in the stream, but found another document"),
    ("empty-file", "", "", 0, "the file is empty; expected a mapping with name, nodes and namespaces"),
    ("only-comments", "# a topology\n# with nothing in it\n\n", "", 0,
     "the file is empty; expected a mapping with name, nodes and namespaces"),
    ("binary-garbage", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "", 3,
     "the file contains binary data (a NUL byte); a topology is UTF-8 YAML text"),
    ("nul-in-text", "name: lab\nnodes: \x00\n", "", 2,
     "the file contains binary data (a NUL byte); a topology is UTF-8 YAML text"),
    ("invalid-utf8", b"name: lab\nnodes:\n  - name: n\xe9ud\n", "", 3,
     "the file is not valid UTF-8 (byte 0xe9); a topology is UTF-8 YAML text"),
    ("control-character", "name: lab\nnodes: \x07\n", "", 2,
     "unexpected control character #x0007 (is this a text file?)"),
    ("top-level-list", "- name: lab\n- nodes: []\n", "", 1,
     "the top level must be a mapping with name, nodes and namespaces, got a list"),
    ("top-level-scalar", "just some words\n", "", 1,
     "the top level must be a mapping with name, nodes and namespaces, got a string 'just some words'"),
    # --- wrong types ---------------------------------------------------------------------------------
    ("port-string", variant("- port: 8080", "- port: '8080'  # <--"), "services[0].ports[0].port", None,
     "expected an integer, got a string '8080'"),
    ("port-bool", variant("- port: 8080", "- port: true  # <--"), "services[0].ports[0].port", None,
     "expected an integer, got a boolean (true)"),
    ("port-float", variant("- port: 8080", "- port: 80.5  # <--"), "services[0].ports[0].port", None,
     "expected an integer, got a number (80.5)"),
    ("port-zero", variant("- port: 8080", "- port: 0  # <--"), "services[0].ports[0].port", None,
     "port 0 is out of range 1-65535"),
    ("port-too-big", variant("- port: 8080", "- port: 70000  # <--"), "services[0].ports[0].port", None,
     "port 70000 is out of range 1-65535"),
    ("port-negative", variant("- port: 8080", "- port: -1  # <--"), "services[0].ports[0].port", None,
     "port -1 is out of range 1-65535"),
    ("target-port-zero", variant("- port: 8080", "- port: 8080\n        targetPort: 0  # <--"),
     "services[0].ports[0].targetPort", None, "port 0 is out of range 1-65535"),
    ("name-number", variant("name: lab", "name: 123  # <--"), "name", None,
     "expected a string, got an integer (123); quote it"),
    ("version-number", variant("node: node-1", "node: node-1\n        version: 2  # <--"),
     "services[0].workloads[0].version", None, "expected a string, got an integer (2); quote it"),
    ("nodes-not-list", variant("nodes:\n  - name: node-1\n  - name: node-2", "nodes: node-1  # <--"), "nodes", None,
     "expected a list of nodes, got a string 'node-1'"),
    ("node-not-mapping", variant("  - name: node-2", "  - node-2  # <--"), "nodes[1]", None,
     "expected a mapping, got a string 'node-2'"),
    ("non-string-key", variant("name: lab", "name: lab\n1: one  # <--"), "", None,
     "keys must be strings, got an integer (1)"),
    ("merge-key", variant("name: lab", "name: lab\n<<: {provider: local}  # <--"), "", None,
     "merge keys ('<<') are not supported"),
    # --- unknown fields ------------------------------------------------------------------------------
    ("unknown-top-field", variant("name: lab", "name: lab\nnode: node-1  # <--"), "node", None,
     "unknown field 'node'; did you mean 'nodes'?"),
    ("unknown-top-field-no-match", variant("name: lab", "name: lab\nzzz: 1  # <--"), "zzz", None,
     "unknown field 'zzz'; expected one of: name, provider, trustDomain, addressBlock, nodes, namespaces, "
     "services, workloads, config"),
    ("unknown-node-field", variant("  - name: node-2", "  - name: node-2\n    provder: docker  # <--"),
     "nodes[1].provder", None, "unknown field 'provder'; did you mean 'provider'?"),
    ("unknown-namespace-field", variant("  - name: demo", "  - name: demo\n    mod: ambient  # <--"),
     "namespaces[0].mod", None, "unknown field 'mod'; did you mean 'mode'?"),
    ("unknown-service-field", variant("    namespace: demo", "    namespace: demo\n    port: 80  # <--"),
     "services[0].port", None, "unknown field 'port'; did you mean 'ports'?"),
    ("unknown-port-field", variant("- port: 8080", "- port: 8080\n        target_port: 80  # <--"),
     "services[0].ports[0].target_port", None, "unknown field 'target_port'; did you mean 'targetPort'?"),
    ("unknown-workload-field", variant("node: node-1", "node: node-1\n        serviceAcount: web  # <--"),
     "services[0].workloads[0].serviceAcount", None, "unknown field 'serviceAcount'; did you mean 'serviceAccount'?"),
    ("unknown-run-field", variant("run: {demo: echo}", "run: {demo: echo, argz: []}  # <--"),
     "services[0].workloads[0].run.argz", None, "unknown field 'argz'; did you mean 'args'?"),
    # --- missing fields ------------------------------------------------------------------------------
    ("missing-name", BASE.replace("name: lab\n", "", 1), "", 1, "missing required field 'name'"),
    ("missing-namespaces", variant("namespaces:\n  - name: demo\n", ""), "", 1, "missing required field 'namespaces'"),
    ("missing-workload-node", variant("      - name: web-v1\n        node: node-1", "      - name: web-v1  # <--"),
     "services[0].workloads[0]", None, "missing required field 'node'"),
    ("missing-run", variant("        run: {demo: echo}\n", "").replace("- name: web-v1", "- name: web-v1  # <--"),
     "services[0].workloads[0]", None, "missing required field 'run'"),
    ("missing-service-namespace", variant("    namespace: demo\n", "").replace("- name: web\n", "- name: web  # <--\n"),
     "services[0]", None, "missing required field 'namespace'"),
    ("null-required-field", variant("node: node-1", "node:  # <--"), "services[0].workloads[0]", None,
     "required field 'node' has no value"),
    ("no-nodes", variant("nodes:\n  - name: node-1\n  - name: node-2", "nodes: []  # <--"), "nodes", None,
     "at least one node is required"),
    ("no-ports", variant("    ports:\n      - port: 8080", "    ports: []  # <--"), "services[0].ports", None,
     "at least one port is required"),
    ("no-workloads", variant("    workloads:\n      - name: web-v1\n        node: node-1\n        run: {demo: echo}",
                             "    workloads: []  # <--"),
     "services[0].workloads", None, "at least one workload is required"),
    # --- references ----------------------------------------------------------------------------------
    ("unknown-node", variant("node: node-1", "node: node-9  # <--"), "services[0].workloads[0].node", None,
     "unknown node 'node-9'"),
    ("unknown-service-namespace", variant("    namespace: demo", "    namespace: prod  # <--"),
     "services[0].namespace", None, "unknown namespace 'prod'"),
    ("unknown-client-namespace", BASE + CLIENT.replace("namespace: demo", "namespace: other  # <--"),
     "workloads[0].namespace", None, "unknown namespace 'other'"),
    ("unknown-client-node", BASE + CLIENT.replace("node: node-2", "node: node-3  # <--"),
     "workloads[0].node", None, "unknown node 'node-3'"),
    # --- duplicates ----------------------------------------------------------------------------------
    ("duplicate-node", variant("  - name: node-2", "  - name: node-1  # <--"), "nodes[1].name", None,
     "duplicate node 'node-1' (first at line 3)"),
    ("duplicate-namespace", variant("  - name: demo", "  - name: demo\n  - name: demo  # <--"), "namespaces[1].name",
     None, "duplicate namespace 'demo' (first at line 6)"),
    ("duplicate-service", BASE + """\
  - name: web  # <--
    namespace: demo
    ports: [{port: 80}]
    workloads: [{name: web-v2, node: node-2, run: {demo: echo}}]
""", "services[1].name", None, "duplicate service 'web' in namespace 'demo' (first at line 8)"),
    ("duplicate-workload-lab-wide", BASE + CLIENT.replace("name: client", "name: web-v1  # <--"),
     "workloads[0].name", None, "duplicate workload 'web-v1' (first at line 13)"),
    ("duplicate-port", variant("- port: 8080", "- port: 8080\n      - {port: 8080, name: admin}  # <--"),
     "services[0].ports[1].port", None, "duplicate port 8080 (first at line 11)"),
    ("duplicate-port-name",
     variant("- port: 8080", "- {port: 8080, name: web}\n      - {port: 9090, name: web}  # <--"),
     "services[0].ports[1].name", None, "duplicate port name 'web' (first at line 11)"),
    ("duplicate-key-top", variant("name: lab", "name: lab\nname: other  # <--"), "name", None,
     "duplicate key 'name' (first at line 1)"),
    ("duplicate-key-workload", variant("node: node-1", "node: node-1\n        node: node-2  # <--"),
     "services[0].workloads[0].node", None, "duplicate key 'node' (first at line 14)"),
    ("duplicate-key-free-form", variant("  - name: node-2", "  - name: node-2\n    ssh: {host: a, host: b}  # <--"),
     "nodes[1].ssh.host", None, "duplicate key 'host' (first at line 5)"),
    # --- enumerations and formats --------------------------------------------------------------------
    ("bad-mode", variant("  - name: demo", "  - name: demo\n    mode: mesh  # <--"), "namespaces[0].mode", None,
     "unknown mode 'mesh'; expected one of: none, ambient, sidecar"),
    ("waypoint-not-bool", variant("  - name: demo", "  - name: demo\n    waypoint: 'yes'  # <--"),
     "namespaces[0].waypoint", None, "expected true or false, got a string 'yes'"),
    ("bad-provider", variant("name: lab", "name: lab\nprovider: aws  # <--"), "provider", None,
     "unknown provider 'aws'; expected one of: local, docker, ssh"),
    ("bad-node-provider", variant("  - name: node-2", "  - name: node-2\n    provider: vagrant  # <--"),
     "nodes[1].provider", None, "unknown provider 'vagrant'; expected one of: local, docker, ssh"),
    ("bad-trust-domain", variant("name: lab", "name: lab\ntrustDomain: Cluster_Local  # <--"), "trustDomain", None,
     "invalid trust domain 'Cluster_Local': must be a DNS name like cluster.local"),
    ("trust-domain-empty-label", variant("name: lab", "name: lab\ntrustDomain: cluster..local  # <--"), "trustDomain",
     None, "invalid trust domain 'cluster..local': must be a DNS name like cluster.local"),
    ("bad-node-name", variant("  - name: node-2", "  - name: Node_2  # <--"), "nodes[1].name", None,
     "invalid node name 'Node_2': use lowercase letters, digits and '-', starting and ending with a letter or digit, "
     "at most 63 characters"),
    ("service-name-too-long", variant("  - name: web\n", "  - name: " + "w" * 64 + "  # <--\n"),
     "services[0].name", None,
     f"invalid service name '{'w' * 64}': use lowercase letters, digits and '-', starting and ending with a letter or "
     "digit, at most 63 characters"),
    ("workload-name-dot", variant("- name: web-v1", "- name: web.v1  # <--"), "services[0].workloads[0].name", None,
     "invalid workload name 'web.v1': use lowercase letters, digits and '-', starting and ending with a letter or "
     "digit, at most 63 characters"),
    ("lab-name-trailing-dash", variant("name: lab", "name: lab-  # <--"), "name", None,
     "invalid lab name 'lab-': use lowercase letters, digits and '-', starting and ending with a letter or digit, "
     "at most 63 characters"),
    ("bad-protocol", variant("- port: 8080", "- {port: 8080, protocol: grpc}  # <--"), "services[0].ports[0].protocol",
     None, "unknown protocol 'grpc'; expected one of: http, tcp"),
    ("address-block-not-loopback", variant("name: lab", "name: lab\naddressBlock: 10.1.0.0/16  # <--"), "addressBlock",
     None, "invalid address block '10.1.0.0/16': expected a /16 inside 127.0.0.0/8, like 127.101.0.0/16"),
    ("address-block-not-16", variant("name: lab", "name: lab\naddressBlock: 127.101.0.0/24  # <--"), "addressBlock",
     None, "invalid address block '127.101.0.0/24': expected a /16 inside 127.0.0.0/8, like 127.101.0.0/16"),
    ("address-block-docker", variant("name: lab", "name: lab\nprovider: docker\naddressBlock: 127.101.0.0/16  # <--"),
     "addressBlock", None, "addressBlock is only for the local provider (this lab's provider is 'docker')"),
    # --- run -----------------------------------------------------------------------------------------
    ("run-demo-and-command", variant("run: {demo: echo}", "run: {demo: echo, command: 'sleep 1'}  # <--"),
     "services[0].workloads[0].run", None, "run has both 'demo' and 'command'; choose one"),
    ("run-neither", variant("run: {demo: echo}", "run: {env: {A: b}}  # <--"), "services[0].workloads[0].run", None,
     "run needs 'demo' (a built-in app) or 'command'"),
    ("run-not-mapping", variant("run: {demo: echo}", "run: echo  # <--"), "services[0].workloads[0].run", None,
     "expected a mapping, got a string 'echo'"),
    ("unknown-demo", variant("run: {demo: echo}", "run: {demo: nginx}  # <--"), "services[0].workloads[0].run.demo",
     None, "unknown demo app 'nginx'; expected one of: productpage, details, reviews, ratings, echo, loadgen, sleep"),
    ("command-empty-string", variant("run: {demo: echo}", "run: {command: '  '}  # <--"),
     "services[0].workloads[0].run.command", None, "command is empty"),
    ("command-empty-list", variant("run: {demo: echo}", "run: {command: []}  # <--"),
     "services[0].workloads[0].run.command", None, "command is empty"),
    ("command-list-of-lists", variant("run: {demo: echo}", "run: {command: [sh, [x]]}  # <--"),
     "services[0].workloads[0].run.command[1]", None, "expected a string, got a list"),
    ("args-without-demo", variant("run: {demo: echo}", "run: {command: [sleep, '9'], args: ['1']}  # <--"),
     "services[0].workloads[0].run.args", None, "args are only for demo apps; put arguments in 'command'"),
    ("env-not-mapping", variant("run: {demo: echo}", "run: {demo: echo, env: [A=b]}  # <--"),
     "services[0].workloads[0].run.env", None, "expected a mapping, got a list"),
    ("env-value-list", variant("run: {demo: echo}", "run: {demo: echo, env: {A: [1]}}  # <--"),
     "services[0].workloads[0].run.env.A", None, "expected a string, got a list"),
    ("env-value-bool", variant("run: {demo: echo}", "run: {demo: echo, env: {DEBUG: yes}}  # <--"),
     "services[0].workloads[0].run.env.DEBUG", None, "expected a string, got a boolean (yes); quote it"),
    ("env-bad-name", variant("run: {demo: echo}", "run: {demo: echo, env: {MY-VAR: x}}  # <--"),
     "services[0].workloads[0].run.env.MY-VAR", None, "invalid environment variable name 'MY-VAR'"),
    # --- labels, settings, config --------------------------------------------------------------------
    ("label-app-reserved", variant("node: node-1", "node: node-1\n        labels: {app: other}  # <--"),
     "services[0].workloads[0].labels", None, "label 'app' is set by the lab; remove it"),
    ("label-value-number", variant("node: node-1", "node: node-1\n        labels: {tier: 3}  # <--"),
     "services[0].workloads[0].labels.tier", None, "expected a string, got an integer (3); quote it"),
    ("docker-not-mapping", variant("  - name: node-2", "  - name: node-2\n    docker: alpine  # <--"),
     "nodes[1].docker", None, "expected a mapping of docker settings, got a string 'alpine'"),
    ("recursive-alias", variant("  - name: node-2", "  - name: node-2\n    docker: &d {self: *d}  # <--"),
     "nodes[1].docker.self", None, "recursive alias is not supported"),
    ("config-not-mapping", BASE + "config:\n  - just text  # <--\n", "config[0]", None,
     "expected a mesh config document (a mapping), got a string 'just text'"),
    ("config-without-kind", BASE + "config:\n  - apiVersion: security.istio.io/v1  # <--\n    spec: {}\n",
     "config[0].kind", None, "a config document needs a string 'kind'"),
]


@pytest.mark.parametrize(("text", "path", "line", "message"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_topology_is_reported_with_path_line_and_message(text, path, line, message):
    expected_line = (line or None) if line is not None else marked_line(text)
    assert line is not None or expected_line is not None, "case has no line and no marker"
    found = [(p.path, p.line, p.message) for p in problems_of(text)]
    assert (path, expected_line, message) in found


def test_there_are_enough_cases():
    assert len(CASES) >= 35
    assert len({c[0] for c in CASES}) == len(CASES)


def test_many_problems_are_reported_at_once():
    text = variant("node: node-1", "node: node-9").replace("- port: 8080", "- port: '80'")
    text = text.replace("name: lab", "name: Lab")
    problems = problems_of(text + "extra: 1\n")
    assert len(problems) >= 4
    assert [p.line for p in problems] == [1, 11, 14, 16]


def test_problem_reads_path_message_and_file_line():
    problem = Problem("/x/topologies/bookinfo.yaml", 41, "services[2].workloads[0].node", "unknown node 'node-9'")
    assert str(problem) == "services[2].workloads[0].node: unknown node 'node-9' (bookinfo.yaml:41)"
    assert str(Problem("x/empty.yaml", None, "", "the file is empty")) == "the file is empty (empty.yaml)"


def test_error_in_shipped_file_names_its_basename_and_line(tmp_path):
    text = (TOPOLOGIES / "bookinfo.yaml").read_text()
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip() == "node: node-3")
    lines[index] = lines[index].replace("node-3", "node-9")
    target = tmp_path / "bookinfo.yaml"
    target.write_text("\n".join(lines) + "\n")
    with pytest.raises(TopologyError) as info:
        load_topology(target)
    assert str(info.value) == f"services[2].workloads[1].node: unknown node 'node-9' (bookinfo.yaml:{index + 1})"


def test_unreadable_files_are_reported_by_name(tmp_path):
    cases = {tmp_path / "missing.yaml": "no such file", tmp_path: "it is a directory"}
    if Path("/dev/null").exists():
        cases[Path("/dev/null")] = "it is not a regular file"
    for path, reason in cases.items():
        with pytest.raises(TopologyError) as info:
            load_topology(path)
        [problem] = info.value.problems
        assert problem.message == f"cannot read topology file {path}: {reason}"


def test_unreadable_file_permission(tmp_path, monkeypatch):
    """A file the user may not read (faked: root reads anything) names the file and the reason."""
    secret = tmp_path / "secret.yaml"
    secret.write_text(BASE)

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(TopologyError) as info:
        load_topology(secret)
    assert str(info.value) == f"cannot read topology file {secret}: permission denied (secret.yaml)"


def test_valid_base_and_defaults():
    topology = parse_topology(BASE + CLIENT, "base.yaml")
    assert (topology.name, topology.provider, topology.trust_domain) == ("lab", "local", "cluster.local")
    assert topology.address_block is None and topology.config == () and topology.source == "base.yaml"
    [port] = topology.services[0].ports
    assert (port.name, port.protocol, port.workload_port) == ("http", "http", 8080)
    web, client = topology.workloads
    assert (web.namespace, web.service, web.app, web.version) == ("demo", "web", "web", "v1")
    assert web.service_account == "default" and web.run.command is None and web.run.env == {}
    assert web.labels == {"app": "web", "version": "v1"}
    assert (client.service, client.app, client.namespace, client.run.demo) == (None, "client", "demo", "sleep")


def test_full_schema_is_read():
    text = """\
name: full
provider: local
trustDomain: example.org
addressBlock: 127.150.0.0/16
nodes:
  - name: n1
  - name: n2
    provider: docker
    docker: {image: python:3.12-slim, cpus: 1.5}
  - name: n3
    provider: ssh
    ssh: {host: 10.0.0.3, user: lab, port: 22}
namespaces:
  - {name: app, mode: ambient, waypoint: true}
  - {name: side, mode: sidecar}
services:
  - name: api
    namespace: app
    ports:
      - {port: 80, targetPort: 8080}
      - {port: 9000, protocol: tcp}
    workloads:
      - name: api-v2
        node: n2
        version: v2
        serviceAccount: api
        labels: {tier: backend}
        run:
          command: python3 -m http.server $MESH_PORT --bind $MESH_BIND_ADDR
          env: {LEVEL: debug, WORKERS: 4, RATIO: 0.5}
      - name: api-argv
        node: n3
        run: {command: [python3, -m, http.server, 8080]}
      - name: api-demo
        node: n1
        run: {demo: echo, args: ["--delay", 1]}
config:
  - apiVersion: security.istio.io/v1
    kind: PeerAuthentication
    metadata: {name: default, namespace: app}
    spec: {mtls: {mode: STRICT}}
"""
    topology = parse_topology(text, "full.yaml")
    assert topology.address_block == "127.150.0.0/16" and topology.trust_domain == "example.org"
    assert topology.node("n1").provider is None and topology.node("n2").provider == "docker"
    assert topology.node("n2").settings == {"docker": {"image": "python:3.12-slim", "cpus": 1.5}}
    assert topology.node("n3").settings["ssh"] == {"host": "10.0.0.3", "user": "lab", "port": 22}
    assert topology.namespace("app").mode == "ambient" and topology.namespace("app").waypoint is True
    api = topology.service("api")
    ports = [(p.name, p.port, p.workload_port, p.protocol) for p in api.ports]
    assert ports == [("http", 80, 8080, "http"), ("tcp-9000", 9000, 9000, "tcp")]
    v2, argv, demo = api.workloads
    assert v2.labels == {"tier": "backend", "app": "api", "version": "v2"}
    assert v2.run.command == "python3 -m http.server $MESH_PORT --bind $MESH_BIND_ADDR"
    assert v2.run.env == {"LEVEL": "debug", "WORKERS": "4", "RATIO": "0.5"}
    assert argv.run.command == ("python3", "-m", "http.server", "8080")
    assert demo.run.args == ("--delay", "1")
    assert v2.identity(topology.trust_domain) == "spiffe://example.org/ns/app/sa/api"
    assert topology.config[0]["spec"] == {"mtls": {"mode": "STRICT"}}


def test_shipped_bookinfo():
    topology = load_topology(TOPOLOGIES / "bookinfo.yaml")
    assert topology.name == "bookinfo" and topology.trust_domain == "cluster.local" and topology.provider == "local"
    assert [n.name for n in topology.nodes] == ["node-1", "node-2", "node-3"]
    assert [(n.name, n.mode, n.waypoint) for n in topology.namespaces] == [("bookinfo", "none", False)]
    assert [s.name for s in topology.services] == ["productpage", "details", "reviews", "ratings"]
    assert all(s.namespace == "bookinfo" and [p.port for p in s.ports] == [9080] for s in topology.services)
    shape = [(w.name, w.node, w.run.demo, w.version, w.service_account) for w in topology.workloads]
    assert shape == [
        ("productpage-v1", "node-1", "productpage", "v1", "bookinfo-productpage"),
        ("details-v1", "node-2", "details", "v1", "bookinfo-details"),
        ("reviews-v1", "node-2", "reviews", "v1", "bookinfo-reviews"),
        ("reviews-v2", "node-3", "reviews", "v2", "bookinfo-reviews"),
        ("reviews-v3", "node-3", "reviews", "v3", "bookinfo-reviews"),
        ("ratings-v1", "node-3", "ratings", "v1", "bookinfo-ratings"),
    ]
    assert topology.clients == ()
    assert topology.source == str(TOPOLOGIES / "bookinfo.yaml")


def test_shipped_echo():
    topology = load_topology(str(TOPOLOGIES / "echo.yaml"))
    assert topology.name == "echo" and len(topology.nodes) == 2
    assert [(n.name, n.mode) for n in topology.namespaces] == [("echo", "none")]
    [echo] = topology.services
    assert (echo.name, [p.port for p in echo.ports]) == ("echo", [8080])
    assert [(w.name, w.node, w.run.demo) for w in echo.workloads] == [("echo-v1", "node-1", "echo")]
    [client] = topology.clients
    assert (client.name, client.node, client.namespace) == ("client", "node-2", "echo")
    assert (client.run.demo, client.service, client.app) == ("sleep", None, "client")


DEBRIS = [b":", b"-", b"[", b"{", b"}", b"\t", b" ", b"\n", b"&a ", b"*a", b"!!binary ", b"'", b'"', b"0x_", b"\x00",
          b"\xff", b"<<: ", b"? ", b"~", b"yes", b"-1", b"70000", b"!!python/object ", b"#", b"|", b"%YAML 1.1\n",
          b"2001-02-30", b"[]", b"{}", b"null", b"1.5", b"!custom ", b"name: x\n", b"run: {}\n", b"- "]


def mangle(data: bytes, rng: random.Random) -> bytes:
    """`data` with a few random lines deleted, duplicated or re-indented, or bytes inserted or deleted."""
    for _ in range(rng.randint(1, 4)):
        lines = data.splitlines(keepends=True) or [b""]
        at = rng.randrange(len(lines))
        action = rng.choice(["drop line", "copy line", "indent", "dedent", "insert", "delete"])
        if action == "drop line":
            del lines[at]
        elif action == "copy line":
            lines.insert(at, lines[at])
        elif action == "indent":
            lines[at] = rng.choice([b"  ", b"    ", b"- "]) + lines[at].lstrip(b" ")
        elif action == "dedent":
            lines[at] = lines[at][2:]
        data = b"".join(lines)
        cut = rng.randrange(len(data) + 1)
        if action == "insert":
            data = data[:cut] + rng.choice(DEBRIS) + data[cut:]
        elif action == "delete":
            data = data[:cut] + data[cut + rng.randint(1, 6):]
    return data


@pytest.mark.parametrize("name", ["bookinfo.yaml", "echo.yaml"])
def test_mangled_shipped_topologies_never_raise_anything_but_topology_error(name):
    """Random damage gives a Topology or a TopologyError, never another exception."""
    original = (TOPOLOGIES / name).read_bytes()
    rng = random.Random(name)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(500):
        try:
            parse_topology(mangle(original, rng), name)
            outcomes["ok"] += 1
        except TopologyError as e:
            assert e.problems and all(isinstance(p, Problem) and str(p) for p in e.problems)
            outcomes["error"] += 1
    assert outcomes["ok"] > 10 and outcomes["error"] > 200


def test_alias_bomb_is_refused_quickly():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 9):
        bomb += f"{'bcdefghi'[i - 1]}: &{'bcdefghi'[i - 1]} [{', '.join(['*' + 'abcdefghi'[i - 1]] * 10)}]\n"
    docker = "".join(f"      {line}\n" for line in bomb.splitlines())
    text = variant("  - name: node-2", "  - name: node-2\n    docker:\n" + docker)
    with pytest.raises(TopologyError, match="too many values"):
        parse_topology(text, "bomb.yaml")


def test_deep_nesting_is_refused():
    with pytest.raises(TopologyError, match="nesting too deep"):
        parse_topology("name: " + "[" * 1500 + "]" * 1500 + "\n", "deep.yaml")
