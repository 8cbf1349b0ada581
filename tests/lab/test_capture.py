"""Transparent capture without a container: the rule builder, the plan's cluster VIPs, the ztunnel's side,
and the L7 proxies' part (sidecar ports and rules, proxy addresses on the lab network, marked sockets).

The rules are checked as text here and against a real kernel by tests/lab/test_docker_ambient.py.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from lab import capture, dataplane, mesh
from lab.capture import CapturedWorkload, CaptureSpec, SidecarCapture
from lab.errors import LabError, ProvisionError
from lab.orchestrator import _state_document
from lab.plan import plan_lab
from lab.providers.base import ExecResult
from lab.topology.loader import load_topology

from agents.node.resolver import Resolver
from agents.proxy.connect import tcp_connect
from agents.proxy.sidecar import _listen_addresses as sidecar_listen_addresses
from agents.proxy.view import MeshView
from agents.ztunnel import transparent
from agents.ztunnel.config import ConfigError, parse_snapshot
from agents.ztunnel.listeners import CaptureListeners
from agents.ztunnel.relay import connect_from

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"
AGENT = ("python3", "agents.pyz")
NO_POLICY = {"peerAuthentications": [], "authorizationPolicies": []}


def docker_state(mode: str = "ambient", local_node: str | None = None) -> dict:
    """bookinfo's state with docker nodes (all, or all but `local_node`), its namespace in `mode`."""
    topo = load_topology(TOPOLOGIES / "bookinfo.yaml")
    nodes = [n if n.name == local_node else replace(n, provider="docker") for n in topo.nodes]
    plan = plan_lab(replace(topo, nodes=nodes), "127.150.0.0/16", "bookinfo", lambda n: AGENT, "10.210.7.0/24")
    state = _state_document(plan, "bookinfo.yaml", "running", None)
    state["namespaces"]["bookinfo"]["mode"] = mode
    return state


# ---------------------------------------------------------------- the rule builder

def test_ambient_workloads_are_redirected_out_to_15001_and_in_to_15006() -> None:
    spec = CaptureSpec("node-1", (CapturedWorkload("web", "10.210.7.32", (8080, 9090)),))
    text = capture.rules(spec)
    assert text.splitlines() == [
        "*nat", ":MESHLAB_OUTPUT - [0:0]", ":MESHLAB_PREROUTING - [0:0]",
        '-A MESHLAB_OUTPUT -m mark --mark 0x539/0xfff -m comment --comment "meshlab: proxy traffic" -j RETURN',
        '-A MESHLAB_OUTPUT -p tcp --dport 15008 -m comment --comment "meshlab: HBONE" -j RETURN',
        '-A MESHLAB_PREROUTING -p tcp --dport 15008 -m comment --comment "meshlab: HBONE" -j RETURN',
        '-A MESHLAB_OUTPUT -s 10.210.7.32/32 -d 10.96.0.0/16 -p tcp -m comment --comment "meshlab: outbound of web" '
        '-j REDIRECT --to-ports 15001',
        '-A MESHLAB_OUTPUT -d 10.210.7.32/32 -p tcp --dport 8080 -m comment --comment "meshlab: inbound of web" '
        '-j REDIRECT --to-ports 15006',
        '-A MESHLAB_PREROUTING -d 10.210.7.32/32 -p tcp --dport 8080 -m comment --comment "meshlab: inbound of web" '
        '-j REDIRECT --to-ports 15006',
        '-A MESHLAB_OUTPUT -d 10.210.7.32/32 -p tcp --dport 9090 -m comment --comment "meshlab: inbound of web" '
        '-j REDIRECT --to-ports 15006',
        '-A MESHLAB_PREROUTING -d 10.210.7.32/32 -p tcp --dport 9090 -m comment --comment "meshlab: inbound of web" '
        '-j REDIRECT --to-ports 15006',
        "COMMIT"]


def test_the_script_restores_the_chains_and_hooks_them_once() -> None:
    spec = CaptureSpec("node-1", (CapturedWorkload("web", "10.210.7.32", (8080,)),))
    script = capture.script(spec)
    assert script.startswith("set -e\niptables-restore -w --noflush <<'MESHLAB_RULES'\n*nat\n")
    assert capture.rules(spec) + "MESHLAB_RULES\n" in script
    assert ("iptables -w -t nat -C OUTPUT -j MESHLAB_OUTPUT 2>/dev/null || "
            "iptables -w -t nat -I OUTPUT 1 -j MESHLAB_OUTPUT") in script
    assert "-I PREROUTING 1 -j MESHLAB_PREROUTING" in script


def test_nothing_to_capture_unhooks_and_deletes_the_chains() -> None:
    script = capture.script(CaptureSpec("node-1"))
    assert "iptables-restore" not in script
    for hook, chain in (("OUTPUT", "MESHLAB_OUTPUT"), ("PREROUTING", "MESHLAB_PREROUTING")):
        assert f"while iptables -w -t nat -D {hook} -j {chain} 2>/dev/null; do :; done" in script
        assert f"iptables -w -t nat -X {chain}" in script
    assert capture.rules(CaptureSpec("node-1")).splitlines() == [
        "*nat", ":MESHLAB_OUTPUT - [0:0]", ":MESHLAB_PREROUTING - [0:0]", "COMMIT"]


def test_a_sidecar_workload_is_sent_to_its_own_sidecar_ports_before_ambient_rules() -> None:
    spec = CaptureSpec("node-1", (CapturedWorkload("web", "10.210.7.32", (8080,)),),
                       (SidecarCapture("api", "10.210.7.33", (7000,), 15101, 15106),))
    lines = capture.rules(spec).splitlines()
    sidecar_out = ('-A MESHLAB_OUTPUT -s 10.210.7.33/32 ! -d 10.210.7.33/32 -p tcp -m comment --comment '
                   '"meshlab: outbound of api to its sidecar" -j REDIRECT --to-ports 15101')
    assert sidecar_out in lines
    assert any("-d 10.210.7.33/32 -p tcp --dport 7000" in line and line.endswith("--to-ports 15106")
               for line in lines if line.startswith("-A MESHLAB_PREROUTING"))
    assert lines.index(sidecar_out) < next(i for i, line in enumerate(lines) if "outbound of web" in line)


def test_capture_spec_lists_the_ambient_workloads_of_the_node() -> None:
    state = docker_state()
    spec = capture.capture_spec(state, "node-3")
    assert [(w.name, w.ports) for w in spec.ambient] == [("reviews-v2", (9080,)), ("reviews-v3", (9080,)),
                                                         ("ratings-v1", (9080,))]
    assert spec.ambient[0].address == state["workloads"]["reviews-v2"]["address"]
    assert capture.capture_spec(docker_state("none"), "node-3").empty


def test_only_docker_nodes_capture_transparently() -> None:
    state = docker_state(local_node="node-1")
    assert {n: v["capture"] for n, v in state["nodes"].items()} == {
        "node-1": "explicit", "node-2": "transparent", "node-3": "transparent"}
    assert capture.transparent_nodes(state) == ["node-2", "node-3"]
    del state["nodes"]["node-2"]["capture"]  # a state written before the field: the provider decides
    assert capture.node_capture(state, "node-2") == "transparent"


# ---------------------------------------------------------------- plan and snapshots

def test_docker_nodes_share_one_cluster_vip_per_service_and_have_no_capture_addresses() -> None:
    state = docker_state(local_node="node-1")
    assert state["services"]["details.bookinfo"]["vips"] == {
        "node-1": "127.150.129.2", "node-2": "10.96.0.17", "node-3": "10.96.0.17"}
    assert state["workloads"]["ratings-v1"]["inboundCapture"] == ""
    assert state["workloads"]["productpage-v1"]["inboundCapture"] == "127.150.129.100"  # the local node's
    # The resolver of a docker node: ambient callers get the VIP, the others the workload itself (iptables decides).
    table = mesh.resolver_table(state, "node-3")
    ratings = next(s for s in table["services"] if s["name"] == "ratings")
    assert ratings["vip"] == "10.96.0.19" and ratings["endpoints"][0]["inboundCapture"] is None


def test_the_ztunnel_of_a_docker_node_listens_on_two_wildcard_sockets() -> None:
    state = docker_state()
    raw = mesh.ztunnel_snapshot(state, "node-3", NO_POLICY, 60)
    assert raw["capture"] == "transparent"
    snapshot = parse_snapshot(raw, "node-3")
    assert snapshot.listen_addresses() == {("outbound", "0.0.0.0", 15001), ("inbound", "0.0.0.0", 15006)}
    assert snapshot.upstream_mark == 0x539
    ratings = state["workloads"]["ratings-v1"]["address"]
    assert snapshot.inbound_target(ratings, 9080).name == "ratings-v1"
    assert snapshot.inbound_target(ratings, 9081) is None  # not one of its ports
    assert snapshot.inbound_target(state["workloads"]["details-v1"]["address"], 9080) is None  # not on node-3
    assert snapshot.outbound[("10.96.0.19", 9080)][0].name == "ratings"
    explicit = parse_snapshot(mesh.ztunnel_snapshot(docker_state(local_node="node-1"), "node-1", NO_POLICY, 60),
                              "node-1")
    assert explicit.capture == "explicit" and explicit.upstream_mark is None


def test_an_unknown_capture_is_nacked_naming_the_field() -> None:
    raw = mesh.ztunnel_snapshot(docker_state(), "node-3", NO_POLICY, 60)
    raw["capture"] = "tproxy"
    with pytest.raises(ConfigError, match=r"snapshot.capture: want one of explicit, transparent, got 'tproxy'"):
        parse_snapshot(raw, "node-3")


# ---------------------------------------------------------------- the ztunnel's sockets

def test_sockaddr_in_is_read_in_network_order() -> None:
    raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 9080) + socket.inet_aton("10.96.0.17") + bytes(8)
    assert transparent.parse_sockaddr_in(raw) == ("10.96.0.17", 9080)
    with pytest.raises(OSError, match="not an IPv4 address"):
        transparent.parse_sockaddr_in(struct.pack("=H", socket.AF_INET6) + bytes(14))


def test_a_connection_that_was_not_redirected_has_its_own_address_as_original_destination() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
        with client, conn:
            assert transparent.original_destination(conn) == server.getsockname()


async def test_upstream_sockets_carry_the_mark_the_rules_skip() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        marked = await connect_from(server.getsockname(), None, 2.0, mark=transparent.PROXY_MARK)
        plain = await connect_from(server.getsockname(), None, 2.0)
        with marked, plain:
            assert marked.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x539
            assert plain.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0


async def test_capture_sockets_move_between_specific_and_wildcard_addresses_on_one_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    served: list[str] = []

    async def handler(conn: socket.socket) -> None:
        served.append(conn.getsockname()[0])
        conn.close()

    listeners = CaptureListeners({"outbound": handler})
    try:
        explicit = {("outbound", "127.0.0.1", port), ("outbound", "127.0.0.2", port)}
        listeners.apply(explicit)
        wildcard = {("outbound", "0.0.0.0", port)}
        assert listeners.apply(wildcard) == (wildcard, explicit)  # the old ones closed first, no EADDRINUSE
        assert set(listeners.sockets) == wildcard
        await asyncio.to_thread(lambda: socket.create_connection(("127.0.0.3", port), timeout=2).close())
        for _ in range(100):
            if served:
                break
            await asyncio.sleep(0.02)
        assert served == ["127.0.0.3"]
        listeners.apply(explicit)  # and back
        assert set(listeners.sockets) == explicit
    finally:
        await listeners.close()


async def test_a_wildcard_that_cannot_be_bound_restores_the_old_sockets() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:  # something else holds 127.0.0.1:port
        port = taken.getsockname()[1]
        listeners = CaptureListeners({"outbound": lambda conn: asyncio.sleep(0)})
        try:
            old = {("outbound", "127.0.0.2", port)}
            listeners.apply(old)
            with pytest.raises(ConfigError, match=f"cannot bind outbound capture 0.0.0.0:{port}"):
                listeners.apply({("outbound", "0.0.0.0", port)})
            assert set(listeners.sockets) == old
        finally:
            await listeners.close()


# ---------------------------------------------------------------- L7 proxies on docker nodes

def test_each_sidecar_of_a_node_has_capture_ports_of_its_own_and_outbound_rules_come_first() -> None:
    state = docker_state("sidecar")
    spec = capture.capture_spec(state, "node-3")
    assert spec.ambient == ()
    assert [(s.name, s.outbound_port, s.inbound_port) for s in spec.sidecars] == [
        ("reviews-v2", 15101, 15106), ("reviews-v3", 15111, 15116), ("ratings-v1", 15121, 15126)]
    assert spec.sidecars[2].address == state["workloads"]["ratings-v1"]["address"]
    lines = capture.rules(spec).splitlines()
    outbound = [i for i, line in enumerate(lines) if "outbound of" in line]
    inbound = [i for i, line in enumerate(lines) if "inbound of" in line]
    # reviews-v2 dialling reviews-v3 by address must reach its own sidecar, not reviews-v3's inbound side
    assert len(outbound) == 3 and len(inbound) == 6 and max(outbound) < min(inbound)


def test_docker_workloads_have_sidecar_addresses_on_the_lab_network_from_the_plan() -> None:
    state = docker_state(local_node="node-1")
    assert [state["workloads"][w]["sidecarAddress"] for w in ("details-v1", "reviews-v1", "ratings-v1")] == [
        "10.210.7.128", "10.210.7.129", "10.210.7.132"]
    assert state["workloads"]["details-v1"]["sidecarPorts"] == {"outbound": 15101, "inbound": 15106}
    assert state["workloads"]["productpage-v1"]["sidecarPorts"] is None  # local: explicit capture
    topo = load_topology(TOPOLOGIES / "bookinfo.yaml")
    nodes = [replace(n, provider="docker") for n in topo.nodes]
    plan = plan_lab(replace(topo, nodes=nodes), "127.150.0.0/16", "bookinfo", lambda n: AGENT, "10.210.7.0/24")
    node2 = next(n for n in plan.nodes if n.name == "node-2")  # its eth0 carries the sidecars' addresses too
    assert node2.workload_addresses == ("10.210.7.33", "10.210.7.34", "10.210.7.129", "10.210.7.130")


def test_waypoints_on_docker_nodes_get_lab_network_addresses() -> None:
    state = docker_state()
    state["docker"] = {"subnet": "10.210.7.0/24", "gateway": "10.210.7.1"}
    first = dataplane.add_waypoint(state, "bookinfo")
    second = dataplane.add_waypoint(state, "bookinfo", "ratings")
    assert (first["node"], first["address"]) == ("node-1", "10.210.7.224")
    assert (second["node"], second["address"]) == ("node-3", "10.210.7.225")
    dataplane.remove_waypoint(state, "bookinfo")
    assert dataplane.add_waypoint(state, "bookinfo", "details")["address"] == "10.210.7.224"  # freed, reused
    state["nodes"]["node-2"]["provider"] = "ssh"
    with pytest.raises(LabError, match="waypoints run on local and docker nodes only"):
        dataplane.add_waypoint(state, "bookinfo", "reviews")


def test_a_sidecar_caller_on_a_docker_node_is_answered_with_the_vip() -> None:
    state = docker_state("sidecar", local_node="node-1")
    table = mesh.resolver_table(state, "node-2")
    assert table["capture"] == "transparent" and table["sidecars"] == {}
    details = state["workloads"]["details-v1"]["address"]
    answer = Resolver(table).resolve("ratings", 9080, "bookinfo", source=details)
    assert (answer.address, answer.port, answer.via) == ("10.96.0.19", 9080, "sidecar")
    local = mesh.resolver_table(state, "node-1")  # explicit capture: the caller's sidecar address
    productpage = state["workloads"]["productpage-v1"]
    assert local["sidecars"] == {productpage["address"]: productpage["sidecarAddress"]}


def test_a_sidecar_on_a_docker_node_listens_on_its_two_redirect_ports() -> None:
    state = docker_state("sidecar")
    raw = mesh.sidecar_snapshot(state, "reviews-v3", NO_POLICY, 60)
    assert raw["proxy"]["capturePorts"] == {"outbound": 15111, "inbound": 15116}
    view = MeshView(parse_snapshot(raw, "node-3"), "sidecar")
    workload = view.snapshot.by_name[("bookinfo", "reviews-v3")]
    assert sidecar_listen_addresses(view, workload, raw["proxy"]["address"]) == {
        ("outbound", "0.0.0.0", 15111), ("inbound", "0.0.0.0", 15116)}
    assert view.snapshot.upstream_mark == transparent.PROXY_MARK
    raw["proxy"]["capturePorts"] = None
    with pytest.raises(ConfigError, match="proxy.capturePorts"):
        sidecar_listen_addresses(MeshView(parse_snapshot(raw, "node-3"), "sidecar"), workload, "10.210.7.133")


async def test_plain_upstream_sockets_of_the_l7_proxies_carry_the_mark() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for mark, expected in ((transparent.PROXY_MARK, 0x539), (None, 0)):
            _, writer = await tcp_connect("127.0.0.1", port, None, 2.0, mark)
            assert writer.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == expected
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_proxy_address_that_cannot_be_added_names_the_node_and_the_address() -> None:
    class Node:
        def __init__(self, code: int) -> None:
            self.code, self.scripts = code, []

        async def exec(self, node: str, argv: list[str], timeout: float = 60.0) -> ExecResult:
            self.scripts.append(argv[-1])
            return ExecResult(self.code, "", "RTNETLINK answers: Operation not permitted\n")

    ok = Node(0)
    await capture.set_proxy_address(ok, "node-1", "10.210.7.224")
    await capture.set_proxy_address(ok, "node-1", "10.210.7.224", present=False)
    assert ok.scripts == ["ip -4 -o addr show dev eth0 | grep -q ' 10.210.7.224/' || ip addr add 10.210.7.224/32 dev eth0",
                          "! ip -4 -o addr show dev eth0 | grep -q ' 10.210.7.224/' || ip addr del 10.210.7.224/32 dev eth0"]
    with pytest.raises(ProvisionError, match="node node-1: cannot add the proxy address 10.210.7.224: RTNETLINK"):
        await capture.set_proxy_address(Node(2), "node-1", "10.210.7.224")
