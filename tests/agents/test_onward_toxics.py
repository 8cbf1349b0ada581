"""L4 toxics on an L7 proxy's own upstream connections (`OnwardToxics`), and the pool that keeps them apart.

Which faults a waypoint or a sidecar applies on the connections it opens, the affinity that
keeps a pooled connection with the requests of its faults, and real toxics on real loopback
connections made through the proxies' connector (`MeshConnector`).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from agents.common.faults import parse_faults
from agents.l7.cluster import ClusterPolicy, LoadBalancerState
from agents.l7.proxy import Downstream
from agents.l7.upstream import Cluster
from agents.proxy.connect import MeshConnector
from agents.proxy.toxics import OnwardToxics
from agents.ztunnel.telemetry import Peer

ECHO = {"type": "service", "name": "echo", "namespace": "amb", "workloads": ["echo-v1"], "nodes": ["node-1"],
        "services": ["echo.amb"]}


def end(name: str, node: str) -> dict[str, Any]:
    return {"type": "workload", "name": name, "namespace": "amb", "workloads": [name], "nodes": [node]}


def fault(fid: str, kind: str, target: dict[str, Any], toxicity: float = 1.0, **params: Any) -> dict[str, Any]:
    return {"id": fid, "kind": kind, "layer": "l4", "target": target, "params": params, "direction": "downstream",
            "toxicity": toxicity, "expiresAt": None}


class View:
    """The part of a proxy's MeshView that OnwardToxics reads: the snapshot's faults and workloads."""

    def __init__(self, *faults: dict[str, Any], node: str = "node-2") -> None:
        parsed = parse_faults(list(faults))
        workloads = {("amb", n): SimpleNamespace(name=n, node=node)
                     for n, node in (("client-a", "node-1"), ("client-b", "node-2"), ("echo-v1", "node-1"))}
        self.snapshot = SimpleNamespace(faults=parsed, fault_ids={f.id for f in parsed}, by_name=workloads,
                                        by_address={}, node=node)  # the node the proxy runs on


def downstream(source: str) -> Downstream:
    return Downstream(service="echo.amb", port=8080, source=Peer(source, "amb"), source_principal=None,
                      source_address="127.0.0.1:1", security="mutual_tls")


def endpoint(mode: str, port: int = 8080, ip: str = "127.0.0.1") -> dict[str, Any]:
    return {"address": ip, "ip": ip, "port": port, "workload": "echo-v1", "namespace": "amb", "mode": mode}


def test_a_waypoint_applies_faults_towards_mesh_endpoints_and_a_sidecar_only_outside_the_mesh() -> None:
    view = View(fault("f1", "latency", ECHO, latency=200))
    waypoint, sidecar = OnwardToxics(lambda: view, True), OnwardToxics(lambda: view, False)
    assert [f.id for f in waypoint.faults(endpoint("ambient"), "echo.amb", downstream("client-b"))] == ["f1"]
    assert sidecar.faults(endpoint("ambient"), "echo.amb", downstream("client-b")) == []  # its ztunnel applies
    assert [f.id for f in sidecar.faults(endpoint("none"), "echo.amb", downstream("client-b"))] == ["f1"]
    assert OnwardToxics(lambda: None, True).faults(endpoint("ambient"), "echo.amb", downstream("client-b")) == []


def test_a_partition_refuses_connections_across_it_for_every_endpoint() -> None:
    cut = {"id": "p1", "kind": "partition", "layer": "l4", "target": {"type": "node", "name": "node-1",
           "nodes": ["node-1"]}, "params": {}, "direction": "both", "toxicity": 1.0, "expiresAt": None}
    for mesh_endpoints in (True, False):  # a sidecar too: no ztunnel on its path enforces it
        across = OnwardToxics(lambda: View(cut, node="node-2"), mesh_endpoints)
        assert "partitioned" in (across.refusal(endpoint("sidecar") | {"identity": "spiffe://x/ns/amb/sa/echo"}) or "")
        assert "partitioned" in (across.refusal(endpoint("none")) or "")
        same_node = OnwardToxics(lambda: View(cut, node="node-1"), mesh_endpoints)
        assert same_node.refusal(endpoint("none")) is None
    assert OnwardToxics(lambda: View(node="node-2"), True).refusal(endpoint("none")) is None


def test_an_edge_matches_by_the_requests_source_and_affinity_names_what_may_hit() -> None:
    view = View(fault("f1", "latency", {"type": "edge", "source": end("client-b", "node-2"), "destination": ECHO},
                      latency=200),
                fault("f2", "reset_peer", end("echo-v1", "node-1"), toxicity=0.5),
                fault("f3", "limit_data", ECHO, toxicity=0.0, bytes=1))
    toxics = OnwardToxics(lambda: view, True)
    assert toxics.affinity(endpoint("ambient"), "echo.amb", downstream("client-b")) == "f1,f2"
    assert toxics.affinity(endpoint("ambient"), "echo.amb", downstream("client-a")) == "f2"
    drawn = [toxics.faults(endpoint("ambient"), "echo.amb", downstream("client-a")) for _ in range(200)]
    assert {len(d) for d in drawn} == {0, 1}  # toxicity 0.5: drawn per connection; toxicity 0: never


async def test_the_pool_reuses_a_connection_only_for_requests_of_its_affinity() -> None:
    accepted: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        await reader.read()
        writer.close()
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    affinities = {"client-a": "", "client-b": "f1"}

    class Connector:
        async def __call__(self, ep: Any, service: str, down: Downstream) -> Any:
            return await asyncio.open_connection("127.0.0.1", port)

        def affinity(self, ep: Any, service: str, down: Downstream) -> str:
            return affinities[down.source.workload]
    cluster, connect, ep = Cluster("outbound|8080||echo", ClusterPolicy("echo.amb"), LoadBalancerState()), \
        Connector(), endpoint("ambient", port)
    try:
        a, reused = await cluster.acquire(ep, connect, "echo.amb", downstream("client-a"))
        assert not reused
        cluster.release(a, True)
        again, reused = await cluster.acquire(ep, connect, "echo.amb", downstream("client-a"))
        assert reused and again is a
        cluster.release(again, True)
        b, reused = await cluster.acquire(ep, connect, "echo.amb", downstream("client-b"))
        assert not reused and b is not a and b.affinity == "f1"
        assert a.writer.is_closing() and cluster.connections == 1  # the other affinity's idle one made room
        cluster.release(b, True)
        fresh, reused = await cluster.acquire(ep, connect, "echo.amb", downstream("client-a"))
        assert not reused and fresh.affinity == "" and b.writer.is_closing()
        fresh.close()
        await asyncio.sleep(0.05)
        assert len(accepted) == 3
    finally:
        server.close()


async def _connect_through(view: View, payload: bytes, wait: float = 0.0) -> tuple[bytes, bool]:
    """A sidecar's connector opens a plain TCP connection to a server sending `payload` (after `wait` seconds):
    what arrives, and whether the server saw its connection reset."""
    reset: list[bool] = []
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.sleep(wait)
            writer.write(payload)
            await writer.drain()
            await reader.read()
        except (ConnectionResetError, BrokenPipeError):  # a write after a RST fails with EPIPE
            reset.append(True)
        finally:
            writer.close()
            done.set()
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connector = MeshConnector(None, lambda: "", lambda s: s, lambda: None,  # type: ignore[arg-type]
                              toxics=OnwardToxics(lambda: view, mesh_endpoints=False))
    got = b""
    try:
        reader, writer = await connector(endpoint("none", port), "echo.amb", downstream("client-a"))
        try:
            async with asyncio.timeout(10):
                while len(got) < len(payload) and (data := await reader.read(65536)):
                    got += data
        except ConnectionResetError:
            pass
        writer.close()
        async with asyncio.timeout(10):
            await done.wait()  # the server's side of the close
    finally:
        server.close()
    return got, bool(reset)


async def test_limit_data_cuts_a_sidecar_connection_outside_the_mesh() -> None:
    got, reset = await _connect_through(View(fault("f1", "limit_data", ECHO, bytes=100)), b"x" * 10_000)
    assert got == b"x" * 100 and not reset  # a clean close after 100 bytes


async def test_reset_peer_resets_a_sidecar_connection_outside_the_mesh_and_untouched_ones_flow() -> None:
    got, reset = await _connect_through(View(fault("f1", "reset_peer", ECHO, timeout=0)), b"x" * 10_000, wait=0.2)
    # the destination gets a RST; the engine's end (a socketpair) sees its upstream end before any data
    assert reset and got == b""
    got, reset = await _connect_through(View(), b"x" * 10_000)  # no fault: the plain path
    assert got == b"x" * 10_000 and not reset
