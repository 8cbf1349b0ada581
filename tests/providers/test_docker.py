"""The conformance suite against the docker provider (containers of the node image), plus docker specifics.

Needs a Docker engine (`scripts/install-docker.sh` starts one); skipped, with the reason, only when
none answers. The node image is built once per session (offline, from debootstrap; cached by recipe).
Traffic goes only to the containers and networks these tests create.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from lab import image
from lab.errors import ProvisionError
from lab.providers.base import NodeSpec, ProcessSpec, Provider
from lab.providers.docker import DockerProvider, _taken_subnets, engine
from tests.support import labelled
from tests.providers.conformance import RealProcessConformance, eventually, status_of

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
# A TCP listener for the network tests: accepts and closes, forever.
LISTENER = ("import socket, sys\n"
            "s = socket.create_server((sys.argv[1], int(sys.argv[2])))\n"
            "while True: s.accept()[0].close()\n")
ASK = ("import sys, urllib.request\n"
       "try: urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).read()\n"
       "except OSError as e: print(e); sys.exit(1)\n")
CONNECT = ("import socket, sys\n"
           "try: socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()\n"
           "except OSError as e: print(e); sys.exit(1)\n")


@pytest.fixture
async def provider(lab_name: str, tmp_path: Path, node_image: str) -> AsyncIterator[DockerProvider]:
    provider = DockerProvider(lab_name, tmp_path / "lab")
    try:
        yield provider
    finally:
        await provider.close()
        await DockerProvider.clean(lab_name)
        assert await asyncio.to_thread(labelled, lab_name) == []


@pytest.fixture
def address_block(node_image: str) -> str:
    """A /24 of 10.210.0.0/16 no Docker network or host route uses: `10.210.<n>`."""
    client = engine()
    try:
        taken = _taken_subnets(client)
    finally:
        client.close()
    for _ in range(1000):
        net = ipaddress.ip_network(f"10.210.{random.randrange(0, 256)}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return str(net.network_address).rsplit(".", 1)[0]
    pytest.fail("no free /24 in 10.210.0.0/16")


@pytest.fixture
def node_address(address_block: str) -> str:
    return f"{address_block}.2"


@pytest.fixture
def workload_address(address_block: str) -> str:
    return f"{address_block}.10"


class TestDockerConformance(RealProcessConformance):
    python = "python3"  # the node image's

    @pytest.fixture
    async def node(self, provider: Provider, agent_pyz: Path, node_address: str, workload_address: str) -> str:
        # The workload address is a secondary address of the container's eth0: bindable there.
        spec = NodeSpec(provider.lab, "node-1", 0, node_address, (workload_address,))
        await provider.create_node(spec, agent_pyz)
        return "node-1"

    async def leftovers(self, provider: Provider) -> list[str]:
        return await asyncio.to_thread(labelled, provider.lab)

    async def leftovers_of_exec(self, provider: Provider) -> list[str]:
        def sleeping() -> list[str]:
            client = engine()
            try:
                container = client.containers.get(f"meshlab-{provider.lab}-node-1")
                top = container.top(ps_args="-eo pid,args")
                return [" ".join(p) for p in top["Processes"] if "sleeping" in " ".join(p)]
            finally:
                client.close()

        return await asyncio.to_thread(sleeping)


# -- helpers --------------------------------------------------------------------------------------

async def _two_nodes(provider: DockerProvider, agent_pyz: Path, block: str) -> tuple[str, str]:
    """node-1 at .2 and node-2 at .3 (with workload address .30), each listening on 18080."""
    await provider.create_node(NodeSpec(provider.lab, "node-1", 0, f"{block}.2"), agent_pyz)
    await provider.create_node(NodeSpec(provider.lab, "node-2", 1, f"{block}.3", (f"{block}.30",)), agent_pyz)
    for node, addresses in (("node-1", [f"{block}.2"]), ("node-2", [f"{block}.3", f"{block}.30"])):
        for i, address in enumerate(addresses):
            name = f"listen-{i}"
            await provider.start_process(node, ProcessSpec(name, ("python3", "-c", LISTENER, address, "18080"),
                                                           ready_tcp=(address, 18080)))
            await eventually(_ready(provider, node, name), f"{node} listening on {address}")
    return f"{block}.2", f"{block}.3"


def _ready(provider: Provider, node: str, name: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await status_of(provider, node, name)).ready

    return check


async def _connects(provider: Provider, node: str, address: str, timeout: float = 0.5) -> bool:
    result = await provider.exec(node, ["python3", "-c", CONNECT, address, "18080", f"{timeout:g}"], timeout=20)
    return result.exit_code == 0


async def _reach(provider: Provider, block: str) -> tuple[bool, bool, bool]:
    """(node-1 → node-2, node-1 → node-2's workload address, node-2 → node-1), connected at once."""
    return tuple(await asyncio.gather(_connects(provider, "node-1", f"{block}.3"),  # type: ignore[return-value]
                                      _connects(provider, "node-1", f"{block}.30"),
                                      _connects(provider, "node-2", f"{block}.2")))


async def _partition_rules(provider: Provider, node: str) -> list[str]:
    listed = await provider.exec(node, ["iptables", "-S"])
    return [line for line in listed.stdout.splitlines() if "meshlab-partition" in line]


# -- the node image and the CLI ------------------------------------------------------------------------

def test_image_build_is_cached_and_has_what_a_node_needs(node_image: str) -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "lab.cli.main", "image", "build", "--offline"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{node_image} is up to date" in done.stdout
    assert time.monotonic() - started < 30
    client = engine()
    try:
        assert client.images.get(f"{image.REPOSITORY}:latest").id == client.images.get(node_image).id
        out = client.containers.run(node_image, ["sh", "-c", "python3 -c 'import sys, cryptography; "
                                                 "print(sys.version_info >= (3, 11))' && iptables -V && ip -V "
                                                 "&& openssl version && command -v sshd ps timeout"], remove=True)
    finally:
        client.close()
    text = out.decode()
    assert text.startswith("True\niptables v1.8"), text
    assert "/usr/sbin/sshd" in text and "OpenSSL 3" in text


def test_debian_mirror_is_read_from_apt_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# nothing here\ndeb [arch=amd64] http://mirror.example/debian-sec bookworm-security main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n")
    assert image.debian_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list").write_text("deb http://one.example/debian bookworm main\n")
    assert image.debian_mirror(tmp_path) == "http://one.example/debian"


# -- nodes, addresses, the network -------------------------------------------------------------------

async def test_node_address_outside_the_lab_network_is_allocated_and_reported(
        provider: DockerProvider, agent_pyz: Path, node_address: str) -> None:
    first = await provider.create_node(NodeSpec(provider.lab, "node-1", 0, node_address), agent_pyz)
    second = await provider.create_node(NodeSpec(provider.lab, "node-2", 1, "127.0.0.5"), agent_pyz)
    network = await provider.lab_network()
    assert network is not None
    subnet = ipaddress.ip_network(network["subnet"])
    assert first.address == node_address and ipaddress.ip_address(node_address) in subnet
    assert ipaddress.ip_address(second.address) in subnet and second.address not in (node_address, network["gateway"])
    assert first.details["gateway"] == second.details["gateway"] == network["gateway"] == str(subnet[1])
    ping = await provider.exec("node-2", ["python3", "-c", CONNECT, node_address, "15053", "5"])
    assert ping.exit_code == 0, ping.stdout  # node-2 reaches node-1's resolver


async def test_changed_address_recreates_the_container(provider: DockerProvider, agent_pyz: Path,
                                                       address_block: str) -> None:
    before = await provider.create_node(NodeSpec(provider.lab, "node-1", 0, f"{address_block}.2"), agent_pyz)
    await provider.start_process("node-1", ProcessSpec("w1", ("sleep", "300")))
    again = DockerProvider(provider.lab, provider.lab_dir)  # another instance adopts the running node
    try:
        adopted = await again.create_node(NodeSpec(provider.lab, "node-1", 0, f"{address_block}.2"), agent_pyz)
        assert adopted.details["container_id"] == before.details["container_id"]
        assert [p.name for p in await again.list_processes("node-1")] == ["w1"]
    finally:
        await again.close()
    moved = await provider.create_node(NodeSpec(provider.lab, "node-1", 0, f"{address_block}.4"), agent_pyz)
    assert moved.address == f"{address_block}.4"
    assert moved.details["container_id"] != before.details["container_id"]
    assert (await provider.node_info("node-1")).state == "running"


async def test_docker_settings_apply_and_unknown_ones_are_refused(provider: DockerProvider, agent_pyz: Path,
                                                                  address_block: str) -> None:
    with pytest.raises(ProvisionError, match="unknown docker setting.*colour"):
        await provider.create_node(NodeSpec(provider.lab, "node-1", 0, f"{address_block}.2",
                                            settings={"docker": {"colour": "blue"}}), agent_pyz)
    settings = {"docker": {"subnet": f"{address_block}.0/25", "cpus": 0.5, "memory": "128m"}}
    info = await provider.create_node(NodeSpec(provider.lab, "node-1", 0, f"{address_block}.200", settings=settings),
                                      agent_pyz)
    assert await provider.lab_network() == {"name": f"meshlab-{provider.lab}", "subnet": f"{address_block}.0/25",
                                            "gateway": f"{address_block}.1"}
    assert ipaddress.ip_address(info.address) in ipaddress.ip_network(f"{address_block}.0/25")  # .200 is outside

    def limits() -> dict[str, int]:
        client = engine()
        try:
            host = client.containers.get(info.details["container"]).attrs["HostConfig"]
            return {"NanoCpus": host["NanoCpus"], "Memory": host["Memory"]}
        finally:
            client.close()

    assert await asyncio.to_thread(limits) == {"NanoCpus": 500_000_000, "Memory": 128 * 1024 * 1024}


async def test_workload_addresses_are_bindable_and_follow_the_spec(provider: DockerProvider, agent_pyz: Path,
                                                                   address_block: str) -> None:
    wanted = (f"{address_block}.10", f"{address_block}.11")
    await provider.create_node(NodeSpec(provider.lab, "node-1", 0, f"{address_block}.2", wanted), agent_pyz)
    bind = "import socket, sys; [socket.create_server((a, 18081)).close() for a in sys.argv[1:]]"
    result = await provider.exec("node-1", ["python3", "-c", bind, *wanted])
    assert result.exit_code == 0, result.stderr
    await provider.create_node(NodeSpec(provider.lab, "node-1", 0, f"{address_block}.2", wanted[1:]), agent_pyz)
    assert (await provider.exec("node-1", ["python3", "-c", bind, wanted[0]])).exit_code != 0
    assert (await provider.exec("node-1", ["python3", "-c", bind, wanted[1]])).exit_code == 0


async def test_stopped_or_hung_node_is_started_again(provider: DockerProvider, agent_pyz: Path,
                                                     address_block: str) -> None:
    spec = NodeSpec(provider.lab, "node-1", 0, f"{address_block}.2", (f"{address_block}.10",))
    info = await provider.create_node(spec, agent_pyz)
    bind = ["python3", "-c", f"import socket; socket.create_server(('{address_block}.10', 18082)).close()"]
    hang = await provider.exec("node-1", ["kill", "-STOP", str(info.details["pid"])])  # the supervisor hangs
    assert hang.exit_code == 0, hang.stderr
    assert (await provider.create_node(spec, agent_pyz)).state == "running"

    def stop() -> None:
        client = engine()
        try:
            client.containers.get(info.details["container"]).stop(timeout=5)
        finally:
            client.close()

    await asyncio.to_thread(stop)
    assert (await provider.node_info("node-1")).state == "stopped"
    with pytest.raises(ProvisionError, match="not running"):
        await provider.list_processes("node-1")
    again = await provider.create_node(spec, agent_pyz)
    assert (again.state, again.details["container_id"]) == ("running", info.details["container_id"])
    assert (await provider.exec("node-1", bind)).exit_code == 0  # its workload address is back


async def test_node_reaches_the_host_at_the_gateway(provider: DockerProvider, agent_pyz: Path,
                                                    node_address: str) -> None:
    info = await provider.create_node(NodeSpec(provider.lab, "node-1", 0, node_address), agent_pyz)
    gateway = info.details["gateway"]
    with socket.create_server((gateway, 0)) as server:  # where a control plane on the host would listen
        port = server.getsockname()[1]
        result = await provider.exec("node-1", ["python3", "-c", CONNECT, gateway, str(port), "5"])
        assert result.exit_code == 0, result.stdout


async def test_a_long_lab_folder_path_works(lab_name: str, tmp_path: Path, agent_pyz: Path, node_address: str,
                                            node_image: str) -> None:
    lab_dir = tmp_path / ("x" * 60) / ("y" * 60) / lab_name  # control.sock beyond 108 bytes, on both sides
    provider = DockerProvider(lab_name, lab_dir)
    try:
        await provider.create_node(NodeSpec(lab_name, "node-1", 0, node_address), agent_pyz)
        assert len(str(lab_dir / "nodes" / "node-1" / "control.sock")) > 108
        assert (await provider.node_info("node-1")).state == "running"
    finally:
        await provider.close()
        await DockerProvider.clean(lab_name)


# -- faults --------------------------------------------------------------------------------------------

async def test_partition_both_ways_one_way_and_heal(provider: DockerProvider, agent_pyz: Path,
                                                    address_block: str) -> None:
    await _two_nodes(provider, agent_pyz, address_block)
    assert await _reach(provider, address_block) == (True, True, True)

    await provider.partition("node-1", "node-2")
    assert await _reach(provider, address_block) == (False, False, False)
    await provider.partition("node-1", "node-2")  # again: the same rules, not twice as many
    assert len(await _partition_rules(provider, "node-1")) == 4  # in and out, for .3 and .30
    await provider.heal_partition("node-1", "node-2")
    assert await _partition_rules(provider, "node-1") == []
    assert await _reach(provider, address_block) == (True, True, True)

    await provider.partition("node-1", "node-2", direction="out")  # node-1 cannot open connections to node-2
    assert await _reach(provider, address_block) == (False, False, True)
    await provider.heal_partition("node-1", "node-2")
    await provider.partition("node-1", "node-2", direction="in")  # node-2 cannot open connections to node-1
    assert await _reach(provider, address_block) == (True, True, False)
    await provider.heal_partition("node-1", "node-2")
    assert await _reach(provider, address_block) == (True, True, True)

    await provider.partition("node-1", None)  # node-1 cut off from everything on its network
    assert await _reach(provider, address_block) == (False, False, False)
    assert (await provider.list_processes("node-1"))  # the lab still reaches its supervisor (unix socket)
    await provider.heal_partition("node-1", None)
    assert await _reach(provider, address_block) == (True, True, True)
    with pytest.raises(ProvisionError, match="direction"):
        await provider.partition("node-1", "node-2", direction="sideways")


async def test_paused_node_answers_nothing_until_resumed(provider: DockerProvider, agent_pyz: Path,
                                                         address_block: str) -> None:
    await _two_nodes(provider, agent_pyz, address_block)
    await provider.pause_node("node-2")
    assert (await provider.node_info("node-2")).state == "paused"
    resolver = f"http://{address_block}.3:15053/table"
    # Its kernel still completes TCP handshakes; nothing on it answers a request.
    assert (await provider.exec("node-1", ["python3", "-c", ASK, resolver, "1"])).exit_code == 1
    with pytest.raises(ProvisionError, match="paused"):
        await provider.exec("node-2", ["true"])
    await provider.resume_node("node-2")
    assert (await provider.node_info("node-2")).state == "running"
    assert (await provider.exec("node-1", ["python3", "-c", ASK, resolver, "5"])).exit_code == 0
    await provider.pause_node("node-2")
    await provider.destroy_node("node-2")  # a paused node can be destroyed
    assert [x for x in await asyncio.to_thread(labelled, provider.lab) if "node-2" in x] == []


# -- leftovers and errors --------------------------------------------------------------------------

LAB_PROCESS = """
import asyncio, sys
from pathlib import Path
from lab.providers.base import NodeSpec, ProcessSpec
from lab.providers.docker import DockerProvider

async def main():
    lab, lab_dir, pyz, block = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    provider = DockerProvider(lab, lab_dir)
    for i in (1, 2):
        await provider.create_node(NodeSpec(lab, f"node-{i}", i - 1, f"{block}.{i + 1}"), pyz)
        await provider.start_process(f"node-{i}", ProcessSpec("w1", ("sleep", "300")))
    print("ready", flush=True)
    await asyncio.sleep(300)

asyncio.run(main())
"""


async def test_clean_after_the_lab_process_was_sigkilled(lab_name: str, tmp_path: Path, agent_pyz: Path,
                                                         address_block: str, node_image: str) -> None:
    lab = subprocess.Popen([sys.executable, "-c", textwrap.dedent(LAB_PROCESS), lab_name, str(tmp_path / "lab"),
                            str(agent_pyz), address_block], cwd=REPO, stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert lab.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(lab.stdout.readline), 60)
        assert line.strip() == "ready"
    finally:
        lab.kill()
        lab.wait()
    left = await asyncio.to_thread(labelled, lab_name)  # the nodes outlive the lab process
    assert sorted(left) == sorted([f"container meshlab-{lab_name}-node-1", f"container meshlab-{lab_name}-node-2",
                                   f"network meshlab-{lab_name}"])
    removed = await DockerProvider.clean(lab_name)
    assert sorted(removed) == sorted(left)
    assert await asyncio.to_thread(labelled, lab_name) == []
    assert await DockerProvider.clean(lab_name) == []


async def test_node_whose_supervisor_cannot_start_is_reported(provider: DockerProvider, node_address: str,
                                                              tmp_path: Path) -> None:
    broken = tmp_path / "agents.pyz"
    broken.write_text("not a zipapp")
    with pytest.raises(ProvisionError, match=r"node-1: its container stopped at start .*docker logs"):
        await provider.create_node(NodeSpec(provider.lab, "node-1", 0, node_address), broken)


async def test_missing_image_and_missing_engine_say_what_to_do(provider: DockerProvider, agent_pyz: Path,
                                                               node_address: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    spec = NodeSpec(provider.lab, "node-1", 0, node_address,
                    settings={"docker": {"image": "meshlab-node:no-such-recipe"}})
    with pytest.raises(ProvisionError, match=r"meshlab image build --offline"):
        await provider.create_node(spec, agent_pyz)
    with pytest.raises(ProvisionError, match="node-9"):
        await provider.node_info("node-9")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(ProvisionError, match=r"no Docker engine answers.*install-docker\.sh"):
        await DockerProvider(provider.lab, provider.lab_dir).node_info("node-1")
    assert await DockerProvider.clean(provider.lab) == []  # nothing can run on an engine that is not there
