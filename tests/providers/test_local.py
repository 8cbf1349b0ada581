"""The conformance suite against the local provider (real supervisors and processes), plus local specifics."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from lab.errors import ProviderNotSupported, ProvisionError
from lab.providers import proctags
from lab.providers.base import NodeSpec, ProcessSpec, Provider
from lab.providers.local import LocalProvider
from tests.providers.conformance import WORKLOAD_SCRIPT, RealProcessConformance, eventually, status_of

TABLE = {"services": [{"name": "details", "namespace": "shop",
                       "ports": [{"name": "http", "port": 9080, "targetPort": 19080, "protocol": "http"}],
                       "endpoints": [{"workload": "details-v1", "node": "node-1", "address": "127.0.0.10"},
                                     {"workload": "details-v2", "node": "node-1", "address": "127.0.0.11"}]},
                      {"name": "ratings", "namespace": "shop",
                       "ports": [{"name": "http", "port": 9080}], "endpoints": []}]}


async def _teardown(lab: str, lab_dir: Path) -> None:
    """Destroy every node the test left, then make sure nothing of the lab runs any more."""
    provider = LocalProvider(lab, lab_dir)
    nodes = lab_dir / "nodes"
    for node in sorted(p.name for p in nodes.iterdir()) if nodes.is_dir() else []:
        await provider.destroy_node(node)
    await provider.close()
    await LocalProvider.clean(lab)
    assert proctags.find_tagged(lab) == []


@pytest.fixture
async def provider(lab_name: str, tmp_path: Path) -> AsyncIterator[LocalProvider]:
    provider = LocalProvider(lab_name, tmp_path / "lab")
    try:
        yield provider
    finally:
        await provider.close()
        await _teardown(lab_name, tmp_path / "lab")


class TestLocalConformance(RealProcessConformance):
    async def leftovers(self, provider: Provider) -> list[str]:
        return [p.describe() for p in proctags.find_tagged(provider.lab)]

    async def leftovers_of_exec(self, provider: Provider) -> list[str]:
        return [p.describe() for p in proctags.find_tagged(provider.lab) if "sleeping" in " ".join(p.cmdline)]


async def _create(provider: LocalProvider, agent_pyz: Path, address: str, name: str = "node-1") -> int:
    info = await provider.create_node(NodeSpec(provider.lab, name, 0, address), agent_pyz)
    return int(info.details["pid"])


def _http_get(host: str, port: int, paths: list[str]) -> list[tuple[int, Any]]:
    """GET each path on one keep-alive connection."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        answers = []
        for path in paths:
            conn.request("GET", path)
            response = conn.getresponse()
            answers.append((response.status, json.loads(response.read())))
        return answers
    finally:
        conn.close()


def _until_gone(pid: int) -> Callable[[], Awaitable[bool]]:
    async def gone() -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        return state == "Z"

    return gone


def _count_tagged(lab: str, at_least: int) -> Callable[[], Awaitable[bool]]:
    async def enough() -> bool:
        return len(await asyncio.to_thread(proctags.find_tagged, lab)) >= at_least

    return enough


async def _start_family(provider: LocalProvider, node: str) -> None:
    """A workload, and one whose shell leaves a grandchild behind in its process group."""
    python = LocalProvider.agent_command(provider, node)[0]
    await provider.start_process(node, ProcessSpec("w1", (python, "-c", WORKLOAD_SCRIPT)))
    await provider.start_process(node, ProcessSpec("w2", ("sh", "-c", "sleep 300 & sleep 300")))
    for name in ("w1", "w2"):
        await eventually(lambda n=name: _is_running(provider, node, n), f"{name} running")


async def _is_running(provider: LocalProvider, node: str, name: str) -> bool:
    return (await status_of(provider, node, name)).state == "running"


@pytest.mark.parametrize("finish", ["destroy", "clean"])
async def test_sigkilled_supervisor_leaves_nothing_behind(provider: LocalProvider, agent_pyz: Path,
                                                          node_address: str, finish: str) -> None:
    supervisor = await _create(provider, agent_pyz, node_address)
    await _start_family(provider, "node-1")
    await eventually(_count_tagged(provider.lab, 5), "supervisor, w1, sh and 2 x sleep")
    os.kill(supervisor, signal.SIGKILL)
    await eventually(_until_gone(supervisor), "the supervisor gone")
    if finish == "destroy":
        await provider.destroy_node("node-1")
        assert not (provider.lab_dir / "nodes" / "node-1").exists()
    else:
        removed = await LocalProvider.clean(provider.lab)
        assert len(removed) >= 4
    assert proctags.find_tagged(provider.lab) == []


async def test_resolver_answers_over_http_on_the_node_address(provider: LocalProvider, agent_pyz: Path,
                                                              node_address: str) -> None:
    await _create(provider, agent_pyz, node_address)
    await provider.push_config("node-1", "resolver", TABLE)
    answers = await asyncio.to_thread(_http_get, node_address, 15053, [
        "/resolve?service=details&port=9080&namespace=shop",
        "/resolve?service=details.shop.svc.cluster.local&port=9080",
        "/resolve?service=ratings.shop&port=9080",
        "/resolve?service=nope&port=9080",
        "/table",
    ])
    assert answers[0] == (200, {"address": "127.0.0.10", "port": 19080, "via": "direct", "workload": "details-v1"})
    assert answers[1][1]["workload"] == "details-v2"  # round robin
    assert answers[2] == (503, {"error": "no ready endpoint for ratings.shop:9080"})
    assert answers[3][0] == 404
    assert answers[4] == (200, TABLE)


async def test_restarted_supervisor_reloads_its_config(provider: LocalProvider, agent_pyz: Path,
                                                       node_address: str) -> None:
    first = await _create(provider, agent_pyz, node_address)
    await provider.push_config("node-1", "resolver", TABLE)
    os.kill(first, signal.SIGTERM)
    await eventually(_until_gone(first), "the supervisor gone")
    assert (await provider.node_info("node-1")).state == "stopped"
    second = await _create(provider, agent_pyz, node_address)
    assert second != first
    [(status, table)] = await asyncio.to_thread(_http_get, node_address, 15053, ["/table"])
    assert (status, table) == (200, TABLE)


async def test_another_provider_instance_adopts_the_running_supervisor(
        provider: LocalProvider, agent_pyz: Path, node_address: str) -> None:
    first = await _create(provider, agent_pyz, node_address)
    await provider.start_process("node-1", ProcessSpec("w1", ("sleep", "300")))
    again = LocalProvider(provider.lab, provider.lab_dir)
    try:
        assert await _create(again, agent_pyz, node_address) == first
        assert [p.name for p in await again.list_processes("node-1")] == ["w1"]
    finally:
        await again.close()


async def test_supervisor_state_file_follows_the_processes(provider: LocalProvider, agent_pyz: Path,
                                                           node_address: str) -> None:
    await _create(provider, agent_pyz, node_address)
    await provider.start_process("node-1", ProcessSpec("w1", ("sleep", "300")))
    path = provider.lab_dir / "nodes" / "node-1" / "supervisor.json"

    async def recorded() -> dict[str, Any] | None:
        doc = json.loads(path.read_text())
        return doc if [(p["name"], p["state"]) for p in doc["processes"]] == [("w1", "running")] else None

    doc = await eventually(recorded, "w1 running in supervisor.json")
    assert (doc["node"], doc["address"]) == ("node-1", node_address)


async def test_supervisor_that_cannot_start_is_reported(provider: LocalProvider, agent_pyz: Path,
                                                        node_address: str) -> None:
    with socket.create_server((node_address, 15053)):  # the resolver's port is taken
        with pytest.raises(ProvisionError, match=r"node-1.*supervisor\.log"):
            await _create(provider, agent_pyz, node_address)


async def test_a_long_lab_folder_path_works(lab_name: str, tmp_path: Path, agent_pyz: Path,
                                            node_address: str) -> None:
    lab_dir = tmp_path / ("x" * 60) / ("y" * 60) / lab_name  # control.sock beyond 108 bytes
    provider = LocalProvider(lab_name, lab_dir)
    try:
        await _create(provider, agent_pyz, node_address)
        assert len(str(lab_dir / "nodes" / "node-1" / "control.sock")) > 108
        assert (await provider.node_info("node-1")).state == "running"
    finally:
        await provider.close()
        await _teardown(lab_name, lab_dir)


async def test_partition_needs_the_mesh_proxies(provider: LocalProvider) -> None:
    with pytest.raises(ProviderNotSupported, match="proxies"):
        await provider.partition("node-1", None)


async def test_unknown_node_is_an_error(provider: LocalProvider) -> None:
    started = time.monotonic()
    with pytest.raises(ProvisionError, match="node-9"):
        await provider.list_processes("node-9")
    with pytest.raises(ProvisionError, match="node-9"):
        await provider.node_info("node-9")
    assert time.monotonic() - started < 10
