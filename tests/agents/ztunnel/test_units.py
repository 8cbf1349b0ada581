"""The ztunnel's pure parts, table-driven: snapshot checks, HBONE headers, the metrics text; plus the TCP relay."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import socket
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.common.admin_http import Reply, route
from agents.ztunnel.config import ConfigError, parse_snapshot
from agents.ztunnel.headers import baggage, connect_headers, forwarded_for, parse_baggage, trace_id
from agents.ztunnel.listeners import CaptureListeners
from agents.ztunnel.relay import connect_from, splice
from agents.ztunnel.telemetry import LABELS, ConnectionRecord, Peer, Telemetry, peer_from_baggage, tcp_labels
from tests.agents.ztunnel.fakes import Node, ServiceSpec, Topology, WorkloadSpec

N1, N2 = Node("node-1", 1), Node("node-2", 2)
TOPO = Topology([N1, N2],
                [WorkloadSpec("web", "shop", "web", N1, "127.88.1.10", app="web"),
                 WorkloadSpec("db", "shop", "db", N2, "127.88.2.10", ports=[5432]),
                 WorkloadSpec("db-2", "shop", "db", N2, "127.88.2.11", ports=[5432])],
                [ServiceSpec("db", "shop", [(5432, 5432)], ["db", "db-2"])])


# ---------------------------------------------------------------- config


def test_a_good_snapshot_gives_the_lookups_the_data_path_needs() -> None:
    snap = parse_snapshot(TOPO.snapshot(N2), "node-2")
    assert sorted(snap.local_ambient) == ["127.88.2.10", "127.88.2.11"]
    assert snap.local_identities == {"spiffe://cluster.local/ns/shop/sa/db"}  # two workloads, one identity
    assert snap.listen_addresses() == {("outbound", "127.88.130.2", 5432), ("inbound", "127.88.130.100", 5432),
                                       ("inbound", "127.88.130.101", 5432)}
    service, port = snap.outbound[("127.88.130.2", 5432)]
    assert [w.name for w in snap.endpoints(service)] == ["db", "db-2"] and port.target_port == 5432
    assert snap.service_of(snap.by_address["127.88.2.11"], 5432) is service


def broken(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(TOPO.snapshot(N2))
    *parents, last = path.split(".")
    target: Any = doc
    for key in parents:
        target = target[int(key)] if key.isdigit() else target[key]
    target[int(last) if last.isdigit() else last] = value
    return doc


@pytest.mark.parametrize("doc, message", [
    ("not an object", "snapshot: want an object"),
    (broken("node", "node-9"), "for node 'node-9'"),
    (broken("workloads", {}), "snapshot.workloads: want a list"),
    (broken("workloads.1.address", "db.local"), "workloads[1].address: not an IP address"),
    (broken("workloads.1.mode", "sidecars"), "workloads[1].mode"),
    (broken("workloads.1.identity", "spiffe://cluster.local/db"), "workloads[1].identity"),
    (broken("workloads.1.ports", [5432, 70000]), "workloads[1].ports[1]"),
    (broken("workloads.2.address", "127.88.2.10"), "share address 127.88.2.10"),
    (broken("services.0.vip", "127.88.130.100"), "both a service VIP and an inbound capture address"),
    (broken("services.0.ports.0.port", "5432"), "services[0].ports[0].port"),
    (broken("services.0.endpoints", [1]), "services[0].endpoints"),
    (broken("policy.authorizationPolicies", [{"name": "x", "namespace": "shop", "rules": [{"from": 3}]}]),
     "policy: cannot evaluate"),
    (broken("certTtlSeconds", -1), "certTtlSeconds"),
])
def test_a_malformed_snapshot_is_refused_naming_the_field(doc: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_snapshot(doc, "node-2")


# ---------------------------------------------------------------- headers


@pytest.mark.parametrize("header, client", [
    ('for="127.0.0.1:4000";host=x.svc', "127.0.0.1"),
    ("for=10.1.2.3", "10.1.2.3"),
    ('host=a;for="[::1]:80"', "::1"),
    ('for="10.0.0.1:1", for=10.0.0.2', "10.0.0.1"),
    ("proto=https", None),
    (None, None),
])
def test_forwarded_gives_the_original_client(header: str | None, client: str | None) -> None:
    assert forwarded_for(header) == client


def test_connect_headers_describe_the_source_and_round_trip() -> None:
    snap = parse_snapshot(TOPO.snapshot(N1), "node-1")
    web = snap.by_address["127.88.1.10"]
    service = snap.services[0]
    headers = connect_headers(("127.88.1.10", 40000), web, service)
    assert headers["forwarded"] == 'for="127.88.1.10:40000";host=db.shop.svc.cluster.local'
    assert trace_id(headers["traceparent"]) is not None
    assert peer_from_baggage(parse_baggage(headers["baggage"])) == Peer.of(web)
    assert parse_baggage(baggage(web, "east, west"))["k8s.cluster.name"] == "east, west"


# ---------------------------------------------------------------- telemetry


def test_metrics_text_escapes_label_values_and_parses_back() -> None:
    out = io.StringIO()
    telemetry = Telemetry(out)
    tricky = Peer('we"ird\\name\nx', "ns")
    record = ConnectionRecord("outbound", "127.0.0.1:1", "127.0.0.2:2", source=tricky)
    labels = tcp_labels("source", tricky, None, Peer(), None, None, "-", "none")
    telemetry.opened(record, labels)
    telemetry.closed(record, "ok", sent=7, received=11)
    failed = ConnectionRecord("outbound", "127.0.0.1:3", "127.0.0.2:2", labels=labels[:-2] + ("UF", "none"))
    telemetry.closed(failed, "upstream_connect_failed", flags="UF")
    samples = {(s.name, s.labels["response_flags"]): s for f in text_string_to_metric_families(telemetry.prometheus())
               for s in f.samples}
    assert samples[("istio_tcp_sent_bytes_total", "-")].value == 7
    assert samples[("istio_tcp_received_bytes_total", "-")].value == 11
    assert samples[("istio_tcp_connections_opened_total", "UF")].value == 1
    assert samples[("istio_tcp_connections_closed_total", "UF")].value == 1
    assert samples[("istio_tcp_sent_bytes_total", "-")].labels["source_workload"] == 'we"ird\\name\nx'
    assert set(samples[("istio_tcp_sent_bytes_total", "-")].labels) == set(LABELS)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["outcome"], e["bytes_sent"], e["bytes_received"]) for e in lines] == \
        [("ok", 7, 11), ("upstream_connect_failed", 0, 0)]
    assert list(telemetry.logs) == lines and telemetry.active == 0


def test_admin_routes_answer_404_405_and_json() -> None:
    routes = {"/stats": lambda q: Reply.json({"limit": q.get("limit")})}
    assert route(routes, "GET", "/stats?limit=3").body == b'{\n "limit": "3"\n}\n'
    assert route(routes, "POST", "/stats").status == 405
    assert route(routes, "GET", "/nope").status == 404


# ---------------------------------------------------------------- relay and listeners


async def test_splice_keeps_half_close_and_counts_each_direction() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    loop = asyncio.get_running_loop()

    async def upstream_app() -> None:  # reads to EOF, then answers and closes
        conn, _ = await loop.sock_accept(server)
        got = b""
        while chunk := await loop.sock_recv(conn, 65536):
            got += chunk
        await loop.sock_sendall(conn, b"got %d" % len(got))
        conn.close()

    app = asyncio.ensure_future(upstream_app())
    front = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(front.getsockname())
    downstream, _ = front.accept()
    upstream = await connect_from(server.getsockname(), "127.0.0.1")
    spliced = asyncio.ensure_future(splice(downstream, upstream))
    payload = b"x" * 700_000
    await asyncio.to_thread(client.sendall, payload)
    client.shutdown(socket.SHUT_WR)
    answer = await asyncio.to_thread(lambda: b"".join(iter(lambda: client.recv(65536), b"")))
    assert answer == b"got 700000"
    assert await spliced == (700_000, len(answer), None)
    await app
    for s in (client, front, server):
        s.close()


async def test_capture_listeners_bind_all_or_nothing() -> None:
    async def nothing(sock: socket.socket) -> None:
        sock.close()
    taken = socket.create_server(("127.88.200.2", 0))
    listeners = CaptureListeners({"outbound": nothing, "inbound": nothing})
    free_port = taken.getsockname()[1] + 1 if taken.getsockname()[1] < 65535 else 1024
    with pytest.raises(ConfigError, match="cannot bind"):
        listeners.apply({("outbound", "127.88.200.1", free_port), ("outbound", "127.88.200.2",
                                                                   taken.getsockname()[1])})
    assert listeners.sockets == {}
    with socket.socket() as probe:  # the socket bound before the failure was released
        probe.bind(("127.88.200.1", free_port))
    listeners.apply({("inbound", "127.88.200.1", free_port)})
    assert set(listeners.sockets) == {("inbound", "127.88.200.1", free_port)}
    await listeners.close()
    taken.close()
