"""Pure parts of transparent capture and agent reach on ssh nodes: no hosts needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab import capture
from lab.controlplane import reach
from lab.plan import plan_lab
from lab.topology.loader import load_topology

TOPOLOGY = """
name: capture-ssh
nodes:
  - {name: node-1, provider: ssh, ssh: {host: 192.0.2.10, capture: transparent}}
  - {name: node-2, provider: ssh, ssh: {host: 192.0.2.11}}
namespaces:
  - {name: shop, mode: ambient}
services:
  - name: web
    namespace: shop
    ports: [{name: http, port: 80, targetPort: 8080}]
    workloads:
      - {name: web-1, node: node-1, run: {command: ["sleep", "1"]}}
      - {name: web-2, node: node-2, run: {command: ["sleep", "1"]}}
"""


def test_an_ssh_node_captures_transparently_only_when_asked() -> None:
    assert capture.capture_of("ssh", {"ssh": {"host": "h", "capture": "transparent"}}) == "transparent"
    assert capture.capture_of("ssh", {"ssh": {"host": "h", "capture": "auto"}}) == "explicit"
    assert capture.capture_of("ssh") == "explicit"
    assert capture.capture_of("docker") == "transparent" and capture.capture_of("local") == "explicit"


def test_a_transparent_ssh_node_gets_cluster_vips_and_no_explicit_inbound_address(tmp_path: Path) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(TOPOLOGY)
    plan = plan_lab(load_topology(path), "127.77.0.0/16", "capture-ssh", lambda n: ("./agent",))
    vips = plan.vips["web.shop"]
    assert vips["node-1"].startswith("10.96.") and vips["node-2"].startswith("127.77.")
    one, two = plan.placement("web-1"), plan.placement("web-2")
    assert one.address.startswith("127.") and one.inbound_capture == "" and one.sidecar_ports
    assert two.inbound_capture and two.sidecar_ports is None


def test_the_rules_of_an_ssh_node_route_the_service_cidr_through_lo() -> None:
    state = {"nodes": {"node-1": {"provider": "ssh", "capture": "transparent"}},
             "namespaces": {"shop": {"mode": "ambient"}},
             "workloads": {"web-1": {"node": "node-1", "namespace": "shop", "address": "127.77.1.2",
                                     "ports": [8080]}}}
    spec = capture.capture_spec(state, "node-1")
    assert spec.loopback_workloads
    text = capture.script(spec)
    assert "ip route replace 10.96.0.0/16 dev lo" in text and "-s 127.77.1.2/32 -d 10.96.0.0/16" in text
    undo = capture.script(capture.CaptureSpec("node-1", loopback_workloads=True))
    assert "ip route del 10.96.0.0/16 dev lo" in undo and "-X MESHLAB_OUTPUT" in undo


def test_agents_of_ssh_nodes_are_reached_through_their_socks_listener(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reach, "lab_dir", lambda lab: tmp_path / lab)
    (tmp_path / "mixed" / "ssh").mkdir(parents=True)
    (tmp_path / "mixed" / "ssh" / "tunnels.json").write_text(json.dumps({"node-2": {"socksPort": 40123}}))
    state = {"lab": "mixed",
             "nodes": {"node-1": {"provider": "docker", "address": "10.210.0.2"},
                       "node-2": {"provider": "ssh", "address": "192.0.2.11"}},
             "waypoints": {"shop/waypoint": {"node": "node-2", "address": "127.77.2.250"}},
             "workloads": {"a": {"node": "node-1", "sidecarAddress": "10.210.0.9"},
                           "b": {"node": "node-2", "sidecarAddress": "127.77.2.9"}}}
    assert reach.routes(state) == {"192.0.2.11": "127.0.0.1:40123", "127.77.2.250": "127.0.0.1:40123",
                                   "127.77.2.9": "127.0.0.1:40123"}
    assert reach.where("192.0.2.11", 15020, reach.routes(state)) == "192.0.2.11:15020 via socks 127.0.0.1:40123"
    assert reach.routes({**state, "nodes": {"node-1": state["nodes"]["node-1"]}}) == {}
