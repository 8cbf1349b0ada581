"""Labs on ssh nodes, driven through the `meshlab` CLI: bookinfo in ambient mode on two SSH hosts, and
a mixed lab (one docker node, two ssh nodes), every cross-node hop on mTLS.

The SSH hosts are sshd containers of the node image on a network the test makes
(tests/providers/sshd.py). For the mixed lab the test routes between that network and the docker
provider's lab networks (DOCKER-USER rules, removed afterwards), as a real site routes between
its container hosts and its VMs.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from lab.addressing import DOCKER_RANGE
from lab.client import LabClient
from lab.controlplane import reach
from lab.providers import proctags
from tests.lab.ambient_scenarios import PROBE
from tests.providers.sshd import SUDO_LOGIN, SUDO_USER, SshHosts
from tests.support import labelled, meshlab

ROOT = Path(__file__).resolve().parents[2]
BOOKINFO = ROOT / "topologies" / "bookinfo.yaml"

pytestmark = [pytest.mark.ssh, pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def hosts(node_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHosts]:
    made = SshHosts(node_image, tmp_path_factory.mktemp("ssh"))
    try:
        for host in ("ssh-1", "ssh-2"):
            made.start(host, extra=SUDO_USER)  # root, and a login with passwordless sudo
            made.close_agent_ports(host)  # the lab reaches 15020/15021 only through its SOCKS forwards
        yield made
    finally:
        made.close()


def topology(tmp_path: Path, hosts: SshHosts, name: str, providers: dict[str, str], **ssh: str) -> Path:
    """bookinfo under `name`, with the nodes of `providers` (node -> provider); ssh nodes on the test hosts
    (with `ssh` as more settings)."""
    doc = yaml.safe_load(BOOKINFO.read_text())
    doc["name"] = name
    addresses = iter(str(hosts.subnet.network_address + 10 + i) for i in range(len(hosts.containers)))
    doc["nodes"] = [{"name": node, "provider": kind, **(hosts.settings(next(addresses), **ssh) if kind == "ssh" else {})}
                    for node, kind in providers.items()]
    for service in doc["services"]:
        for w in service["workloads"]:
            if w["node"] not in providers:
                w["node"] = list(providers)[-1]
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def lab(hosts: SshHosts) -> Iterator[str]:
    name = f"bookinfo-ssh{uuid.uuid4().hex[:6]}"
    yield name
    meshlab("down", name, check=False)
    meshlab("clean", name, check=False)


def metrics(node: dict) -> list:
    """An agent's samples, fetched as the lab does: through the ssh node's SOCKS forward (`agentsVia`)."""
    routes = {node["address"]: node["agentsVia"]} if node.get("agentsVia") else None
    status, body = reach.get(node["address"], 15020, "/metrics", 5, routes)
    assert status == 200, body
    return [s for fam in text_string_to_metric_families(body.decode()) for s in fam.samples]


def opened(state: dict, **labels: str) -> float:
    return sum(s.value for node in state["nodes"].values() for s in metrics(node)
               if s.name == "istio_tcp_connections_opened_total"
               and all(s.labels.get(k) == v for k, v in labels.items()))


def load(name: str, *args: str) -> dict:
    return json.loads(meshlab("load", "productpage:9080/productpage", *args, "--json", "--lab", name).stdout)


def serve_in_ambient_with_mtls(name: str, topo: Path) -> dict:
    """up, ambient, 40 pages: every version served, every hop (one per call) counted as mutual_tls."""
    meshlab("up", str(topo), timeout=240)
    assert "none -> ambient" in meshlab("mode", "bookinfo", "ambient", "--lab", name).stdout
    state = json.loads(meshlab("status", name, "--json").stdout)
    before = opened(state, reporter="destination", connection_security_policy="mutual_tls")
    result = load(name, "-n", "40", "-c", "2", "--count-body", r"reviews-v\d")
    assert result["codes"] == {"200": 40}, result
    assert set(result["body_matches"]) == {"reviews-v1", "reviews-v2", "reviews-v3"}
    ratings_calls = result["body_matches"]["reviews-v2"] + result["body_matches"]["reviews-v3"]
    tls = opened(state, reporter="destination", connection_security_policy="mutual_tls") - before
    assert tls == 40 + 40 + ratings_calls
    return state


def assert_nothing_left(name: str, hosts: SshHosts) -> None:
    for host in hosts.containers:
        assert hosts.lab_processes(host, name) == [], host
        assert hosts.lab_files(host, name) == [], host
    assert proctags.find_tagged(lab=name) == []


def test_bookinfo_ambient_on_two_ssh_hosts_survives_a_dropped_session(lab: str, hosts: SshHosts,
                                                                      tmp_path: Path) -> None:
    topo = topology(tmp_path, hosts, lab, {"node-1": "ssh", "node-2": "ssh"})
    state = serve_in_ambient_with_mtls(lab, topo)
    status = state["nodes"]["node-1"]
    assert status["connection"]["state"] == "connected" and status["connection"]["reconnects"] == 0
    assert (status["capture"], status["captureCapability"]) == ("explicit", "transparent")
    text = meshlab("status", lab).stdout
    assert "ssh connected" in text and "capture explicit (transparent possible: login is root)" in text
    # The hosts drop the agents' ports from outside: up, status and traffic went through the SOCKS forwards.
    with pytest.raises(OSError):
        socket.create_connection((status["address"], 15021), timeout=2).close()
    assert {n["agentsVia"].split(":")[0] for n in state["nodes"].values()} == {"127.0.0.1"}
    traffic = LabClient(lab).traffic()
    assert traffic["scraped"] == traffic["agents"] == 2, traffic
    assert {(e["source"], e["destination"]) for e in traffic["edges"]} >= {
        ("productpage-v1", "details-v1"), ("productpage-v1", "reviews-v1")}, traffic["edges"]

    # Kill every sshd session on the hosts, on the server's side, while traffic flows. The load runs on
    # host ssh-1 outside SSH (docker exec), so only the data plane carries it.
    results: dict = {}
    folder = f"/root/.meshlab/labs/{lab}/node-1"
    line = (f"cd {folder} && MESH_RESOLVER={state['nodes']['node-1']['address']}:15053 ./agent loadgen "
            "productpage:9080/productpage --qps 10 -t 4s -c 2 --json")

    def run() -> None:
        code, out = hosts.sh("ssh-1", line)
        assert code == 0, out
        results.update(json.loads(out))

    loader = threading.Thread(target=run)
    loader.start()
    time.sleep(1.0)
    for host in hosts.containers:
        code, out = hosts.sh(host, "pkill -f '^sshd: root'")
        assert code == 0, out
    loader.join(60)
    assert results["count"] >= 20 and results["codes"] == {"200": results["count"]}, results

    deadline = time.monotonic() + 30
    while True:
        nodes = json.loads(meshlab("status", lab, "--json").stdout)["nodes"]
        conns = [n["connection"] for n in nodes.values()]
        if all(c["state"] == "connected" and c["reconnects"] >= 1 for c in conns):
            break
        assert time.monotonic() < deadline, conns
        time.sleep(0.5)
    assert "ssh connected (1 reconnects)" in meshlab("status", lab).stdout
    # The agents use the new forward: a config change still reaches every ztunnel.
    assert "ambient -> none" in meshlab("mode", "bookinfo", "none", "--lab", lab).stdout
    proxy = json.loads(meshlab("proxy-status", "--json", "--lab", lab).stdout)
    assert {a["status"] for a in proxy["agents"]} == {"SYNCED"}, proxy

    down = json.loads(meshlab("down", lab, "--json").stdout)
    assert sorted(down["nodes"]) == ["node-1", "node-2"] and down["errors"] == []
    assert_nothing_left(lab, hosts)


@pytest.fixture
def routed(hosts: SshHosts) -> Iterator[None]:
    """Route between the ssh hosts' network and the docker provider's lab networks (both ways)."""
    rules = [["-s", DOCKER_RANGE, "-d", str(hosts.subnet)], ["-s", str(hosts.subnet), "-d", DOCKER_RANGE]]
    tag = ["-m", "comment", "--comment", f"meshlab-test-{hosts.tag}"]
    for rule in rules:
        subprocess.run(["iptables", "-w", "-I", "DOCKER-USER", *rule, *tag, "-j", "ACCEPT"], check=True)
    yield
    for rule in rules:
        subprocess.run(["iptables", "-w", "-D", "DOCKER-USER", *rule, *tag, "-j", "ACCEPT"], check=False)


def test_mixed_lab_one_docker_two_ssh_nodes_serves_bookinfo_on_mtls(lab: str, hosts: SshHosts, routed: None,
                                                                     tmp_path: Path) -> None:
    topo = topology(tmp_path, hosts, lab, {"node-1": "docker", "node-2": "ssh", "node-3": "ssh"})
    state = serve_in_ambient_with_mtls(lab, topo)
    assert {n: v["provider"] for n, v in state["nodes"].items()} == {
        "node-1": "docker", "node-2": "ssh", "node-3": "ssh"}
    # productpage (docker) -> details (ssh) and reviews-v2 (ssh) -> ratings (ssh): both on HBONE with mTLS.
    assert opened(state, reporter="destination", source_workload="productpage-v1",
                  destination_workload="details-v1", connection_security_policy="mutual_tls") >= 40
    assert re.search(r"node-1\s+docker", meshlab("status", lab).stdout)
    meshlab("down", lab)
    assert labelled(lab) == []
    assert_nothing_left(lab, hosts)


NET_ADMIN = 1 << 12  # CAP_NET_ADMIN's bit in /proc/<pid>/status


@pytest.mark.parametrize("login", ["root", SUDO_LOGIN])
def test_transparent_capture_on_two_ssh_hosts(login: str, lab: str, hosts: SshHosts, tmp_path: Path) -> None:
    """Root logs in, or a login with passwordless sudo, whose agents then run as it with CAP_NET_ADMIN."""
    topo = topology(tmp_path, hosts, lab, {"node-1": "ssh", "node-2": "ssh"}, capture="transparent", user=login)
    state = serve_in_ambient_with_mtls(lab, topo)
    assert {n["capture"] for n in state["nodes"].values()} == {"transparent"}
    assert {s["vips"]["node-1"] for s in state["services"].values()} <= {f"10.96.0.{i}" for i in range(256)}
    reason = "login is root" if login == "root" else "passwordless sudo; the agents run as the login with CAP_NET_ADMIN"
    assert f"capture transparent (transparent possible: {reason})" in meshlab("status", lab).stdout

    # productpage's host: a plain socket from its address to the details VIP is taken to the ztunnel (iptables)
    # and carried to details' node over HBONE with mutual TLS.
    w = state["workloads"]["productpage-v1"]
    host = f"ssh-{w['node'].split('-')[1]}"
    vip = state["services"]["details.bookinfo"]["vips"][w["node"]]
    edge = {"source_workload": "productpage-v1", "destination_workload": "details-v1",
            "connection_security_policy": "mutual_tls"}
    before = opened(state, reporter="destination", **edge)
    code, out = hosts.sh(host, shlex.join(["python3", "-c", PROBE, w["address"], vip, "9080", "/details/0"]))
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 and lines[0].isdigit() and lines[1] == "HTTP/1.1 200 OK", out
    assert opened(state, reporter="destination", **edge) - before >= 1
    source = f"{w['address']}:{lines[0]}"
    home = "/root" if login == "root" else f"/home/{login}"
    log = f"{home}/.meshlab/labs/{lab}/{w['node']}/logs/ztunnel.log"
    code, found = hosts.sh(host, f"grep -F {shlex.quote(source)} {log}")
    assert code == 0, f"no access log entry from {source} in {log}"
    entry = json.loads(found.splitlines()[-1])
    assert entry["direction"] == "outbound" and entry["protocol"] == "hbone" and entry["outcome"] == "ok"
    assert entry["destination"]["address"] == f"{vip}:9080"
    assert "-A OUTPUT -j MESHLAB_OUTPUT" in hosts.capture_leftovers(host)
    # Every process of the lab on the host (supervisor, ztunnel, workloads) runs as the login; not root:
    # the agents with CAP_NET_ADMIN, the workloads with no capability (else they could mark past the capture).
    _, uid = hosts.sh(host, f"id -u {login}")
    processes = hosts.lab_processes(host, lab)
    assert any(" ztunnel" in p for p in processes) and any(" demo " in p for p in processes), processes
    for line in processes:
        status = hosts.proc_status(host, line.split()[0])
        assert status["Uid"].split()[:2] == [uid.strip()] * 2, (line, status["Uid"])
        if login != "root":
            held = 0 if " demo " in line else NET_ADMIN
            assert int(status["CapAmb"], 16) == int(status["CapEff"], 16) == held, (line, status)

    # The rules follow the mode: none takes them (and the VIP route) off the hosts, ambient puts them back.
    assert "ambient -> none" in meshlab("mode", "bookinfo", "none", "--lab", lab).stdout
    for h in hosts.containers:
        assert hosts.capture_leftovers(h) == "", h
    assert "none -> ambient" in meshlab("mode", "bookinfo", "ambient", "--lab", lab).stdout
    assert "-A OUTPUT -j MESHLAB_OUTPUT" in hosts.capture_leftovers(host)
    code, out = hosts.sh(host, shlex.join(["python3", "-c", PROBE, w["address"], vip, "9080", "/details/0"]))
    assert code == 0 and out.splitlines()[-1:] == ["HTTP/1.1 200 OK"], out

    down = json.loads(meshlab("down", lab, "--json").stdout)
    assert down["errors"] == []
    assert_nothing_left(lab, hosts)
    for h in hosts.containers:
        assert hosts.capture_leftovers(h) == "", h
