"""Two ztunnels as real processes on loopback, a fake control plane, TCP workloads: the L4 mesh end to end.

node-1 (127.88.1.1) holds the clients, node-2 (127.88.2.1) the servers; VIPs
and inbound captures live in 127.88.129.x / 127.88.130.x. A client connects
from its workload address to its node's VIP of a service, as the demo apps do.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.hbone import HboneClient, HboneError, StaticCertSource, client_context, sni_for_identity
from lab.ca import LabCA
from lab.meshconfig import parse_config, to_agent_json
from tests.agents.ztunnel.fakes import (
    TRUST_DOMAIN,
    FakeControlPlane,
    Node,
    ServiceSpec,
    TcpWorkload,
    Topology,
    WorkloadSpec,
    access_log,
    exchange,
    http_get,
    read_all,
    ready_status,
    refused,
    start_ztunnel,
    stop_all,
    wait_until,
)

NODE1, NODE2 = Node("node-1", 1), Node("node-2", 2)
CLIENT, TALLY_CLIENT, OUTSIDER = "127.88.1.10", "127.88.1.11", "127.88.1.20"
TOPO = Topology(
    nodes=[NODE1, NODE2],
    workloads=[
        WorkloadSpec("client", "apps", "client", NODE1, CLIENT),
        WorkloadSpec("tally-client", "apps", "client", NODE1, TALLY_CLIENT),  # same identity as `client`
        WorkloadSpec("outsider", "legacy", "default", NODE1, OUTSIDER, mode="none"),
        WorkloadSpec("echo", "apps", "echo", NODE2, "127.88.2.10", ports=[7000]),
        WorkloadSpec("tally", "apps", "tally", NODE2, "127.88.2.11", ports=[7001]),
        WorkloadSpec("legacy", "legacy", "legacy", NODE2, "127.88.2.20", mode="none", ports=[7000]),
        WorkloadSpec("ghost", "apps", "ghost", NODE2, "127.88.2.30", ports=[7000]),  # nothing listens
        WorkloadSpec("void", "legacy", "void", NODE2, "127.88.2.31", mode="none", ports=[7000]),  # nor here
    ],
    services=[
        ServiceSpec("echo", "apps", [(7000, 7000)], ["echo"]),
        ServiceSpec("legacy", "legacy", [(7000, 7000)], ["legacy"]),
        ServiceSpec("tally", "apps", [(7100, 7001)], ["tally"]),
        ServiceSpec("ghost", "apps", [(7000, 7000)], ["ghost"]),
        ServiceSpec("void", "legacy", [(7000, 7000)], ["void"]),
    ],
)
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/apps/sa/client"
ECHO_ID = f"spiffe://{TRUST_DOMAIN}/ns/apps/sa/echo"


@dataclass
class Mesh:
    folder: Path
    ca: LabCA
    cp: FakeControlPlane
    apps: dict[str, TcpWorkload]
    first_ready: dict[str, int | None]


def istio(kind: str, name: str, namespace: str, spec: str) -> dict[str, Any]:
    """Istio YAML normalized as the control plane puts it in the snapshot."""
    body = "".join(f"  {line}\n" for line in spec.strip("\n").splitlines())
    text = (f"apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
            f"spec:\n{body}")
    return to_agent_json(parse_config(text))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    folder = tmp_path_factory.mktemp("ztunnel")
    ca = LabCA.load_or_create(folder / "ca", TRUST_DOMAIN)
    cp = FakeControlPlane(ca, "127.88.0.1", {"node-1": "token-1", "node-2": "token-2"}, timedelta(hours=1), folder)
    apps = {"echo": TcpWorkload("127.88.2.10", 7000), "tally": TcpWorkload("127.88.2.11", 7001, "tally"),
            "legacy": TcpWorkload("127.88.2.20", 7000)}
    procs = [start_ztunnel(node, cp, folder) for node in TOPO.nodes]
    try:
        first = {n.name: wait_until(lambda n=n: ready_status(n), f"{n.name} listening") for n in TOPO.nodes}
        for node in TOPO.nodes:
            cp.apply(node.name, TOPO.snapshot(node))
        for node in TOPO.nodes:
            wait_until(lambda n=node: ready_status(n) == 200, f"{node.name} ready")
        yield Mesh(folder, ca, cp, apps, first)
    finally:
        codes = stop_all(procs)
        cp.close()
        for app in apps.values():
            app.close()
    assert codes == [0, 0], "ztunnels exit 0 on SIGTERM"


def recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n and (chunk := s.recv(n - len(data))):
        data += chunk
    return data


def restore(mesh: Mesh) -> None:
    for node in TOPO.nodes:
        mesh.cp.apply(node.name, TOPO.snapshot(node))


def logged(mesh: Mesh, node: Node, **want: Any) -> list[dict[str, Any]]:
    """Access log entries of `node` whose fields have the wanted values (`a__b` for nested field b of a)."""
    def get(entry: dict[str, Any], key: str) -> Any:
        for part in key.split("__"):
            entry = entry.get(part) if isinstance(entry, dict) else None  # type: ignore[assignment]
        return entry
    return [e for e in access_log(mesh.folder, node) if all(get(e, k) == v for k, v in want.items())]


# ---------------------------------------------------------------- traffic


def test_readiness_flips_to_200_once_configured_and_certified(mesh: Mesh) -> None:
    assert mesh.first_ready == {"node-1": 503, "node-2": 503}
    for node in TOPO.nodes:
        status, body = http_get(node.address, 15021, "/healthz/ready")
        assert (status, json.loads(body)["ready"]) == (200, True)
    certs = json.loads(http_get(NODE1.address, 15000, "/certs")[1])
    assert [c["identity"] for c in certs["certificates"]] == [CLIENT_ID]  # two workloads, one identity


def test_bytes_flow_through_both_ztunnels_and_the_destination_sees_the_client(mesh: Mesh) -> None:
    payload = bytes(range(256)) * 4096 + b"end"  # 1 MiB and a bit: many DATA frames each way
    assert exchange(TOPO.vip("echo", NODE1), 7000, payload, CLIENT) == payload
    assert mesh.apps["echo"].clients[-1] == CLIENT
    out = wait_until(lambda: logged(mesh, NODE1, direction="outbound", service="echo.apps.svc.cluster.local",
                                    bytes_received=len(payload)), "the outbound access log line")[-1]
    assert (out["protocol"], out["outcome"], out["bytes_sent"]) == ("hbone", "ok", len(payload))
    assert (out["source"]["identity"], out["destination"]["identity"]) == (CLIENT_ID, ECHO_ID)
    inbound = wait_until(lambda: logged(mesh, NODE2, direction="inbound", trace_id=out["trace_id"]),
                         "the inbound access log line")[-1]
    assert inbound["outcome"] == "ok" and inbound["source"]["address"].startswith(CLIENT + ":")
    assert inbound["source"]["workload"] == "client"
    ring = json.loads(http_get(NODE2.address, 15000, "/logs")[1])
    assert inbound in ring


def test_destination_outside_the_mesh_gets_plaintext_from_the_client_address(mesh: Mesh) -> None:
    assert exchange(TOPO.vip("legacy", NODE1), 7000, b"plain and simple", CLIENT) == b"plain and simple"
    assert mesh.apps["legacy"].clients[-1] == CLIENT
    entry = wait_until(lambda: logged(mesh, NODE1, service="legacy.legacy.svc.cluster.local"), "log line")[-1]
    assert (entry["protocol"], entry["outcome"], entry["destination"]["identity"]) == ("tcp", "ok", None)


def test_a_connection_from_an_unknown_source_is_closed(mesh: Mesh) -> None:
    assert refused(TOPO.vip("echo", NODE1), 7000, "127.88.1.99")
    wait_until(lambda: logged(mesh, NODE1, outcome="unknown_source"), "the unknown_source log line")


def test_metrics_count_connections_and_bytes_exactly(mesh: Mesh) -> None:
    sizes = [1 + 7919 * i for i in range(24)] + [300_000]  # the last one crosses several read chunks
    vip = TOPO.vip("tally", NODE1)

    def one(size: int) -> bytes:
        return exchange(vip, 7100, os.urandom(size), TALLY_CLIENT)
    with ThreadPoolExecutor(5) as pool:
        replies = list(pool.map(one, sizes))
    assert replies == [str(s).encode() for s in sizes]
    request_bytes, response_bytes = sum(sizes), sum(len(str(s)) for s in sizes)

    def edge(node: Node, reporter: str) -> dict[str, tuple[dict[str, str], float]]:
        text = http_get(node.address, 15020, "/metrics")[1].decode()
        found: dict[str, tuple[dict[str, str], float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if (labels["reporter"], labels["source_workload"], labels["destination_workload"]) == \
                        (reporter, "tally-client", "tally"):
                    assert sample.name not in found, f"one series per metric for the edge: {labels}"
                    found[sample.name] = (labels, sample.value)
        return found

    for node, reporter in ((NODE1, "source"), (NODE2, "destination")):
        series = wait_until(lambda n=node, r=reporter: (s := edge(n, r)) and
                            s.get("istio_tcp_connections_closed_total", ({}, 0))[1] == len(sizes) and s,
                            f"{reporter} side counting every close")
        values = {name: value for name, (_, value) in series.items()}
        assert values == {"istio_tcp_connections_opened_total": len(sizes),
                          "istio_tcp_connections_closed_total": len(sizes),
                          "istio_tcp_received_bytes_total": request_bytes,  # client → server
                          "istio_tcp_sent_bytes_total": response_bytes}  # server → client
        labels = series["istio_tcp_sent_bytes_total"][0]
        assert labels["source_principal"] == CLIENT_ID
        assert labels["destination_principal"] == f"spiffe://{TRUST_DOMAIN}/ns/apps/sa/tally"
        assert labels["destination_service"] == "tally.apps.svc.cluster.local"
        assert (labels["destination_service_name"], labels["destination_service_namespace"]) == ("tally", "apps")
        assert (labels["source_app"], labels["source_version"], labels["source_workload_namespace"]) == \
            ("tally-client", "v1", "apps")
        assert (labels["destination_canonical_service"], labels["destination_canonical_revision"]) == ("tally", "v1")
        assert (labels["request_protocol"], labels["response_flags"], labels["connection_security_policy"]) == \
            ("tcp", "-", "mutual_tls")
    stats = json.loads(http_get(NODE2.address, 15000, "/stats")[1])
    assert stats["active_connections"] >= 0 and "istio_tcp_sent_bytes_total" in stats["counters"]


def test_upstream_connect_failures_close_the_client_and_are_counted(mesh: Mesh) -> None:
    for service, node_log in (("ghost", NODE2), ("void", None)):
        assert refused(TOPO.vip(service, NODE1), 7000, CLIENT)
        entry = wait_until(lambda s=service: logged(mesh, NODE1, destination__workload=s), "log line")[-1]
        assert (entry["outcome"], entry["response_flags"]) == ("upstream_connect_failed", "UF")
        if node_log is not None:  # HBONE: the destination ztunnel answered 503 and says why
            assert "503" in entry["detail"]
            assert logged(mesh, node_log, destination__workload=service, outcome="upstream_connect_failed")
    text = http_get(NODE1.address, 15020, "/metrics")[1].decode()
    flagged = [s for f in text_string_to_metric_families(text) for s in f.samples
               if s.labels["destination_workload"] in ("ghost", "void") and s.name.endswith("closed_total")]
    assert {(s.labels["destination_workload"], s.labels["response_flags"], s.value) for s in flagged} == \
        {("ghost", "UF", 1), ("void", "UF", 1)}


# ---------------------------------------------------------------- security


def test_plaintext_to_the_hbone_port_fails(mesh: Mesh) -> None:
    with socket.create_connection((NODE2.address, 15008), timeout=10) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9))
        try:
            answer = read_all(s)
        except ConnectionResetError:
            answer = b""
    assert answer == b"" or answer[:1] == b"\x15", f"only a TLS alert, never HTTP/2: {answer[:20]!r}"


def test_a_client_certificate_from_another_ca_fails_the_handshake(mesh: Mesh, tmp_path: Path) -> None:
    rogue = LabCA.load_or_create(tmp_path / "rogue", TRUST_DOMAIN)
    key, issued = rogue.issue(CLIENT_ID)
    ctx = client_context(issued.leaf_pem, key, mesh.ca.root_pem)  # trusts the lab, presents a foreign leaf
    before = json.loads(http_get(NODE2.address, 15000, "/stats")[1])["hbone"]["handshake_failures"]
    got: bytes | None = None
    with socket.create_connection((NODE2.address, 15008), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=sni_for_identity(ECHO_ID)) as tls:
                got = tls.recv(100)  # TLS 1.3: the server's verdict on our certificate arrives after our Finished
        except (ssl.SSLError, OSError):
            got = None
    assert not got
    wait_until(lambda: json.loads(http_get(NODE2.address, 15000, "/stats")[1])["hbone"]["handshake_failures"]
               > before, "the handshake failure counted")


async def test_a_deny_policy_answers_401_and_closes_the_captured_connection(mesh: Mesh) -> None:
    deny = istio("AuthorizationPolicy", "deny-client", "apps", """
action: DENY
rules:
- from:
  - source:
      principals: ["cluster.local/ns/apps/sa/client"]""")
    await asyncio.to_thread(mesh.cp.apply, NODE2.name, TOPO.snapshot(NODE2, deny))
    key, issued = mesh.ca.issue(CLIENT_ID, timedelta(minutes=5))
    certs = StaticCertSource()
    certs.add(issued.leaf_pem, key, mesh.ca.root_pem)
    client = HboneClient(certs.client_context)
    try:
        with pytest.raises(HboneError) as refusal:
            await client.connect((NODE2.address, 15008), "127.88.2.10:7000", CLIENT_ID, ECHO_ID,
                                 {"forwarded": f'for="{CLIENT}:1234"'})
        assert refusal.value.status == 401 and "apps/deny-client" in refusal.value.reason
        assert await asyncio.to_thread(refused, TOPO.vip("echo", NODE1), 7000, CLIENT)
        entries = await asyncio.to_thread(wait_until, lambda: logged(mesh, NODE1, outcome=(
            "denied: denied by DENY policy apps/deny-client (rule 0)")), "the outbound denial logged")
        assert entries[-1]["response_flags"] == "RBAC"
        assert logged(mesh, NODE2, outcome="denied: apps/deny-client")
        # the policy selects nothing but `echo`'s namespace: the plaintext path to legacy is untouched
        assert await asyncio.to_thread(exchange, TOPO.vip("legacy", NODE1), 7000, b"ok", CLIENT) == b"ok"
    finally:
        await client.aclose()
        await asyncio.to_thread(restore, mesh)
    assert await asyncio.to_thread(exchange, TOPO.vip("echo", NODE1), 7000, b"back", CLIENT) == b"back"


def test_strict_closes_inbound_plaintext_and_permissive_forwards_it(mesh: Mesh) -> None:
    capture = TOPO.inbound_capture("echo")
    strict = istio("PeerAuthentication", "strict", "apps", "mtls:\n  mode: STRICT")
    permissive = istio("PeerAuthentication", "permissive", "apps", "mtls:\n  mode: PERMISSIVE")
    try:
        mesh.cp.apply(NODE2.name, TOPO.snapshot(NODE2, strict))
        assert refused(capture, 7000, OUTSIDER)
        wait_until(lambda: logged(mesh, NODE2, outcome="mtls_required"), "the mtls_required log line")
        assert exchange(TOPO.vip("echo", NODE1), 7000, b"mesh still works", CLIENT) == b"mesh still works"
        mesh.cp.apply(NODE2.name, TOPO.snapshot(NODE2, permissive))
        assert exchange(capture, 7000, b"plaintext welcome", OUTSIDER) == b"plaintext welcome"
        assert mesh.apps["echo"].clients[-1] == OUTSIDER
        # this connection's own line: earlier tests logged inbound plaintext too, so wait for it by its source
        wait_until(lambda: logged(mesh, NODE2, direction="inbound", protocol="tcp", outcome="ok",
                                  source__workload="outsider"), "the plaintext connection's log line")
    finally:
        restore(mesh)


# ---------------------------------------------------------------- control plane


def test_a_malformed_snapshot_is_nacked_and_the_old_config_keeps_working(mesh: Mesh) -> None:
    good = json.loads(http_get(NODE1.address, 15000, "/config_dump")[1])["version"]
    bad = TOPO.snapshot(NODE1)
    bad["services"][0]["vip"] = "not-an-ip"
    try:
        version = mesh.cp.publish(NODE1.name, bad)
        reply = mesh.cp.wait_reply(NODE1.name, version)
        assert reply["type"] == "nack" and "services[0].vip" in reply["error"]
        dump = json.loads(http_get(NODE1.address, 15000, "/config_dump")[1])
        assert dump["version"] == good and dump["rejected"]["version"] == version
        assert exchange(TOPO.vip("echo", NODE1), 7000, b"still here", CLIENT) == b"still here"
        version = mesh.cp.publish(NODE1.name, {**TOPO.snapshot(NODE1), "workloads": "oops"})
        assert mesh.cp.wait_reply(NODE1.name, version)["type"] == "nack"
        assert exchange(TOPO.vip("echo", NODE1), 7000, b"and here", CLIENT) == b"and here"
    finally:
        restore(mesh)


def test_new_connections_work_while_the_control_plane_is_away(mesh: Mesh) -> None:
    def channel(node: Node) -> dict[str, Any]:
        return json.loads(http_get(node.address, 15000, "/config_dump")[1])["control_plane"]

    mesh.cp.pause()
    try:
        for node in TOPO.nodes:
            wait_until(lambda n=node: not channel(n)["connected"], f"{node.name} noticing")
            attempts = channel(node)["reconnects"]
            wait_until(lambda n=node, r=attempts: channel(n)["reconnects"] > r, f"{node.name} failing to reconnect")
        for i in range(5):
            payload = f"cp is gone {i}".encode()
            assert exchange(TOPO.vip("echo", NODE1), 7000, payload, CLIENT) == payload
        assert exchange(TOPO.vip("legacy", NODE1), 7000, b"legacy too", CLIENT) == b"legacy too"
        assert exchange(TOPO.inbound_capture("echo"), 7000, b"capture too", OUTSIDER) == b"capture too"
        assert ready_status(NODE1) == 200
    finally:
        mesh.cp.resume()
    for node in TOPO.nodes:
        wait_until(lambda n=node: channel(n)["connected"], f"{node.name} reconnecting")
    restore(mesh)


# ---------------------------------------------------------------- certificate rotation and shutdown


def test_certificates_renew_at_half_life_without_failed_connections(tmp_path: Path) -> None:
    node3, node4 = Node("node-3", 3), Node("node-4", 4)
    topo = Topology([node3, node4],
                    [WorkloadSpec("client", "apps", "client", node3, "127.88.3.10"),
                     WorkloadSpec("echo", "apps", "echo", node4, "127.88.4.10", ports=[7000])],
                    [ServiceSpec("echo", "apps", [(7000, 7000)], ["echo"])])
    ca = LabCA.load_or_create(tmp_path / "ca", TRUST_DOMAIN)
    cp = FakeControlPlane(ca, "127.88.0.2", {"node-3": "t3", "node-4": "t4"}, timedelta(seconds=4), tmp_path)
    echo = TcpWorkload("127.88.4.10", 7000)
    procs = [start_ztunnel(node, cp, tmp_path) for node in (node3, node4)]
    try:
        for node in (node3, node4):
            assert wait_until(lambda n=node: ready_status(n), "listening") == 503
            cp.apply(node.name, topo.snapshot(node))
            wait_until(lambda n=node: ready_status(n) == 200, "ready")
        first = {n.name: json.loads(http_get(n.address, 15000, "/certs")[1])["certificates"][0]["serial"]
                 for n in (node3, node4)}
        vip = topo.vip("echo", node3)
        with socket.create_connection((vip, 7000), timeout=10, source_address=("127.88.3.10", 0)) as long_lived:
            failures, rounds, deadline = 0, 0, time.monotonic() + 40
            while len(cp.issued) < 8:  # two first certificates, then at least three renewals each
                assert time.monotonic() < deadline, f"only {len(cp.issued)} certificates issued"
                payload = f"round {rounds}".encode()
                try:
                    assert exchange(vip, 7000, payload, "127.88.3.10") == payload
                except (OSError, AssertionError):
                    failures += 1
                long_lived.sendall(payload)
                assert recv_exactly(long_lived, len(payload)) == payload
                rounds += 1
            long_lived.shutdown(socket.SHUT_WR)
            assert read_all(long_lived) == b""
        assert failures == 0 and rounds > 20
        for node in (node3, node4):
            certs = json.loads(http_get(node.address, 15000, "/certs")[1])
            assert certs["renewals"] >= 2 and certs["certificates"][0]["serial"] != first[node.name]
        # a new handshake gets the current certificate
        key, issued = ca.issue("spiffe://cluster.local/ns/apps/sa/client", timedelta(minutes=1))
        ctx = client_context(issued.leaf_pem, key, ca.root_pem)
        current = json.loads(http_get(node4.address, 15000, "/certs")[1])["certificates"][0]["serial"]
        with socket.create_connection((node4.address, 15008), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname=sni_for_identity("spiffe://cluster.local/ns/apps/sa/echo")) as tls:
            served = tls.getpeercert()["serialNumber"].lower().lstrip("0")
        assert served in (current, json.loads(http_get(node4.address, 15000, "/certs")[1])["certificates"][0]["serial"])
        # pools retired at each renewal are closed once idle: one live client pool at most
        wait_until(lambda: json.loads(http_get(node3.address, 15000, "/stats")[1])["hbone"]
                   ["outbound_connections"] <= 1, "retired HBONE pools closed")
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        assert [p.wait(5) for p in procs] == [0, 0]
    finally:
        stop_all(procs)
        cp.close()
        echo.close()
