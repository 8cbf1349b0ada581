"""stop_node on the docker provider: the container stops, and comes back with its processes, addresses and capture.

A small ambient lab: client-a on node-1, echo-v1 on node-2. Stopping node-2 stops its container (its
network namespace, its secondary addresses and its iptables rules go with it); removing the fault starts
it, the ztunnel rejoins the control plane, the capture rules are written again and client-a reaches
echo over mutual TLS through both ztunnels.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.lab import ambient_scenarios as scenarios
from tests.lab.test_docker_ambient import nat_rules, run
from tests.support import labelled, meshlab, running_lab

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TOPOLOGY = """
name: {name}
provider: docker
nodes:
  - name: node-1
  - name: node-2
namespaces:
  - name: stp
    mode: ambient
services:
  - name: echo
    namespace: stp
    ports: [{{port: 8080}}]
    workloads:
      - {{name: echo-v1, node: node-2, serviceAccount: echo, run: {{demo: echo}}}}
workloads:
  - {{name: client-a, namespace: stp, node: node-1, serviceAccount: client, run: {{demo: sleep}}}}
"""


@pytest.fixture(scope="module")
def docker_lab(node_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    name = f"stop{uuid.uuid4().hex[:6]}"
    with running_lab(tmp_path_factory.mktemp("topo"), name, TOPOLOGY.format(name=name), timeout=240, clean=True):
        yield name


def status(lab: str) -> dict:
    return json.loads(meshlab("status", lab, "--json").stdout)


def echo_from_client(lab: str, n: int = 3) -> dict:
    return scenarios.load(lab, "echo:8080", "--from", "client-a", "-n", str(n), "-c", "1", "--timeout", "10s")


def mtls_connections_to_echo(address: str) -> float:
    return sum(s.value for s in scenarios.metrics(address)
               if s.name == "istio_tcp_connections_opened_total" and s.labels.get("reporter") == "destination"
               and s.labels.get("destination_workload") == "echo-v1"
               and s.labels.get("connection_security_policy") == "mutual_tls")


def test_stop_node_stops_the_container_and_removal_brings_the_mesh_back(docker_lab: str) -> None:
    lab = docker_lab
    assert echo_from_client(lab)["codes"] == {"200": 3}
    assert "MESHLAB_PREROUTING" in nat_rules(lab, "node-2")

    added = json.loads(meshlab("fault", "add", "stop_node", "node-2", "--json", "--lab", lab).stdout)
    doc = status(lab)
    assert doc["nodes"]["node-2"]["state"] == "stopped" and doc["nodes"]["node-2"]["processes"] == []
    cut = echo_from_client(lab)
    assert "200" not in cut["codes"] and cut["errors"], cut  # its ztunnel and echo-v1 are gone with it
    assert not any("time" in e.lower() for e in cut["errors"]), cut["errors"]

    meshlab("fault", "rm", added["id"], "--lab", lab)
    doc = status(lab)
    assert doc["nodes"]["node-2"]["state"] == "running"
    assert {p["name"] for p in doc["nodes"]["node-2"]["processes"]} == {"ztunnel", "echo-v1"}
    # The ztunnel rejoined: SYNCED again, with the certificate of echo's identity.
    agents = json.loads(meshlab("proxy-status", "--json", "--lab", lab).stdout)["agents"]
    assert {a["status"] for a in agents if a.get("node") == "node-2"} == {"SYNCED"}
    rules = nat_rules(lab, "node-2")  # written again into the container's new network namespace
    assert "-A PREROUTING -j MESHLAB_PREROUTING" in rules and "--to-ports 15006" in rules
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and echo_from_client(lab, 1)["codes"] != {"200": 1}:
        time.sleep(0.5)
    before = mtls_connections_to_echo(doc["nodes"]["node-2"]["address"])
    result = echo_from_client(lab, 5)
    assert result["codes"] == {"200": 5}, result
    # The node's new ztunnel took them over mutual TLS (one keep-alive connection or more).
    assert mtls_connections_to_echo(doc["nodes"]["node-2"]["address"]) > before


def filter_rules(lab: str, node: str) -> str:
    result = run(lab, node, lambda p: p.exec(node, ["iptables", "-w", "-S"]))
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_a_partition_outlives_a_stop_of_its_node(docker_lab: str) -> None:
    lab = docker_lab
    cut = json.loads(meshlab("fault", "add", "partition", "node-2", "--json", "--lab", lab).stdout)
    assert "meshlab-partition" in filter_rules(lab, "node-2")
    stop = json.loads(meshlab("fault", "add", "stop_node", "node-2", "--json", "--lab", lab).stdout)
    meshlab("fault", "rm", stop["id"], "--lab", lab)
    # the container's new network namespace came without the rules: the lab put them back
    assert "meshlab-partition" in filter_rules(lab, "node-2")
    assert "200" not in echo_from_client(lab, 2)["codes"]
    meshlab("fault", "rm", cut["id"], "--lab", lab)
    assert "meshlab-partition" not in filter_rules(lab, "node-2")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and echo_from_client(lab, 1)["codes"] != {"200": 1}:
        time.sleep(0.5)
    assert echo_from_client(lab, 3)["codes"] == {"200": 3}


def test_down_of_a_stopped_node_leaves_nothing(docker_lab: str) -> None:
    lab = docker_lab
    meshlab("fault", "add", "stop_node", "node-1", "--lab", lab)
    assert status(lab)["nodes"]["node-1"]["state"] == "stopped"
    meshlab("down", lab)
    assert labelled(lab) == []
