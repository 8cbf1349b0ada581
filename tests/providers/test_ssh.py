"""The conformance suite against the ssh provider, on real OpenSSH servers, plus ssh specifics.

The hosts are containers of the node image running sshd (tests/providers/sshd.py) on a network
the test makes, logged into with a generated key and checked against a known_hosts the test
writes. Needs a Docker engine (skipped with the reason only when none answers; not in CI).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from lab import capture
from lab.errors import ProvisionError
from lab.providers.base import NodeSpec, ProcessSpec, Provider
from lab.providers.ssh import SshProvider, _registry
from tests.providers.conformance import RealProcessConformance, eventually
from tests.providers.sshd import NO_PYTHON, OLD_PYTHON, PLAIN_USER, SUDO_LOGIN, SUDO_USER, SshHosts

pytestmark = [pytest.mark.ssh, pytest.mark.docker]


@pytest.fixture(scope="module")
def hosts(node_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHosts]:
    made = SshHosts(node_image, tmp_path_factory.mktemp("ssh"))
    try:
        made.start("host-1", extra=SUDO_USER)  # root, and a login with passwordless sudo
        yield made
    finally:
        made.close()


@pytest.fixture
def node_address(hosts: SshHosts) -> str:
    return str(hosts.subnet.network_address + 10)  # host-1


@pytest.fixture
def workload_address() -> str:
    return f"127.78.{random.randrange(1, 250)}.10"  # loopback: bindable on any Linux host


@pytest.fixture
async def provider(lab_name: str, tmp_path: Path, hosts: SshHosts) -> AsyncIterator[SshProvider]:
    provider = SshProvider(lab_name, tmp_path / "lab")
    try:
        yield provider
    finally:
        await provider.close()
        await SshProvider.clean(lab_name)
        assert hosts.lab_processes("host-1", lab_name) == []


class TestSshConformance(RealProcessConformance):
    python = "python3"  # the host's

    @pytest.fixture
    async def node(self, provider: Provider, agent_pyz: Path, node_address: str, workload_address: str,
                   hosts: SshHosts) -> str:
        spec = NodeSpec(provider.lab, "node-1", 0, node_address, (workload_address,),
                        settings=hosts.settings(node_address))
        await provider.create_node(spec, agent_pyz)
        return "node-1"

    async def leftovers(self, provider: Provider) -> list[str]:
        hosts: SshHosts = self._hosts
        return (hosts.lab_processes("host-1", provider.lab) + hosts.lab_files("host-1", provider.lab)
                + [f"record {n}" for n in _registry().get(provider.lab, {})])

    async def leftovers_of_exec(self, provider: Provider) -> list[str]:
        return [p for p in self._hosts.lab_processes("host-1", provider.lab) if "sleeping" in p]

    @pytest.fixture(autouse=True)
    def _keep_hosts(self, hosts: SshHosts) -> None:
        self._hosts = hosts


class TestSshSudoConformance(TestSshConformance):
    """The same suite on a login that is not root but has passwordless sudo, its node capturing transparently:
    the supervisor runs through `sudo setpriv` with CAP_NET_ADMIN, and the tag scripts go through sudo."""

    @pytest.fixture
    async def node(self, provider: Provider, agent_pyz: Path, node_address: str, workload_address: str,
                   hosts: SshHosts) -> str:
        spec = NodeSpec(provider.lab, "node-1", 0, node_address, (workload_address,),
                        settings=hosts.settings(node_address, user=SUDO_LOGIN, capture="transparent"))
        await provider.create_node(spec, agent_pyz)
        return "node-1"


# -- ssh specifics ---------------------------------------------------------------------------------------

async def test_one_connection_per_host_and_node_details(provider: SshProvider, agent_pyz: Path,
                                                        node_address: str, hosts: SshHosts) -> None:
    settings = hosts.settings(node_address)
    # Two nodes on one host need two addresses (each serves its resolver and ztunnel ports on its own).
    for i, address in ((1, node_address), (2, f"127.79.{random.randrange(1, 250)}.1")):
        await provider.create_node(NodeSpec(provider.lab, f"node-{i}", i - 1, address, settings=settings), agent_pyz)
    # Both nodes share the host: a second node there needs no second login (asyncssh connection).
    assert len(provider._pool._conns) == 1
    info = await provider.node_info("node-1")
    assert info.details["host"] == node_address and info.details["python"].startswith("3.")
    assert (info.details["captureCapability"], info.details["captureReason"]) == ("transparent", "login is root")
    assert info.details["capture"] == "explicit"  # transparent only when the node's settings ask for it
    assert info.details["dir"].endswith(f"/.meshlab/labs/{provider.lab}/node-1")


async def test_supervisor_outlives_the_ssh_connection(provider: SshProvider, agent_pyz: Path,
                                                      node_address: str, hosts: SshHosts) -> None:
    await provider.create_node(NodeSpec(provider.lab, "node-1", 0, node_address,
                                        settings=hosts.settings(node_address)), agent_pyz)
    before = (await provider.node_info("node-1")).details["pid"]
    code, out = hosts.sh("host-1", "pkill -f '^sshd: root'")  # every session, killed on the server's side
    assert code == 0, out
    info = await provider.node_info("node-1")  # a new connection, the same supervisor
    assert (info.state, info.details["pid"]) == ("running", before)


async def _error_of(provider: SshProvider, agent_pyz: Path, address: str, settings: dict) -> str:
    with pytest.raises(ProvisionError) as caught:
        await provider.create_node(NodeSpec(provider.lab, "node-1", 0, address, settings=settings), agent_pyz)
    return str(caught.value)


async def test_unreachable_host_is_named(provider: SshProvider, agent_pyz: Path, hosts: SshHosts) -> None:
    nobody = str(hosts.subnet.network_address + 250)  # nothing answers there
    message = await _error_of(provider, agent_pyz, nobody, hosts.settings(nobody))
    assert f"node node-1: cannot reach ssh host root@{nobody}" in message


async def test_wrong_key_is_refused_clearly(provider: SshProvider, agent_pyz: Path, node_address: str,
                                            hosts: SshHosts, tmp_path: Path) -> None:
    import asyncssh

    other = tmp_path / "other_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(other))
    message = await _error_of(provider, agent_pyz, node_address, hosts.settings(node_address, identity=str(other)))
    assert f"{node_address} refused the login" in message and str(other) in message


async def test_host_key_mismatch_names_the_host_and_the_opt_out(provider: SshProvider, agent_pyz: Path,
                                                                node_address: str, hosts: SshHosts,
                                                                tmp_path: Path) -> None:
    import asyncssh

    wrong = tmp_path / "known_hosts"
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    wrong.write_text(f"{node_address} {key}\n")  # another host key for the same address
    message = await _error_of(provider, agent_pyz, node_address,
                              hosts.settings(node_address, known_hosts=str(wrong)))
    assert f"the host key of root@{node_address} is not trusted" in message
    assert "insecure_host_key: true" in message and "ssh-keyscan" in message
    # The opt-out, for throwaway labs: any host key.
    info = await provider.create_node(NodeSpec(provider.lab, "node-1", 0, node_address,
                                               settings=hosts.settings(node_address, known_hosts=str(wrong),
                                                                       insecure_host_key=True)), agent_pyz)
    assert info.state == "running"


@pytest.mark.parametrize("variant", ["no-python", "old-python", "no-sudo"])
async def test_bad_hosts_give_clear_errors(variant: str, provider: SshProvider, agent_pyz: Path,
                                           hosts: SshHosts) -> None:
    extra = {"no-python": NO_PYTHON, "old-python": OLD_PYTHON, "no-sudo": PLAIN_USER}[variant]
    name = f"{variant}-{provider.lab}"
    address = await asyncio.to_thread(hosts.start, name, extra=extra)
    try:
        if variant == "no-python":
            message = await _error_of(provider, agent_pyz, address, hosts.settings(address))
            assert f"node node-1: no python3 on root@{address}" in message and "3.11 or newer" in message
        elif variant == "old-python":
            message = await _error_of(provider, agent_pyz, address, hosts.settings(address))
            assert f"python3 on root@{address} is Python 3.8.10, too old" in message and "3.11" in message
        else:
            settings = hosts.settings(address, user="mesh", capture="transparent")
            message = await _error_of(provider, agent_pyz, address, settings)
            assert f"ssh.capture is transparent, but on mesh@{address}" in message and "sudo" in message
            assert "`sudo -n true` failed" in message and "allow the login passwordless sudo" in message
            # Explicit capture needs no privilege: the same login makes a node.
            info = await provider.create_node(NodeSpec(provider.lab, "node-1", 0, address,
                                                       settings=hosts.settings(address, user="mesh")), agent_pyz)
            assert (info.details["captureCapability"], info.details["captureReason"]) == (
                "explicit", "no root, no passwordless sudo")
            await provider.destroy_node("node-1")
            assert hosts.lab_processes(name, provider.lab) == [] and hosts.lab_files(name, provider.lab) == []
    finally:
        await asyncio.to_thread(hosts.containers.pop(name).remove, force=True)


async def test_unknown_and_missing_settings_are_named(provider: SshProvider, agent_pyz: Path,
                                                      node_address: str, hosts: SshHosts) -> None:
    assert "needs `ssh: {host: ...}`" in await _error_of(provider, agent_pyz, node_address, {})
    message = await _error_of(provider, agent_pyz, node_address, hosts.settings(node_address, colour="blue"))
    assert "unknown ssh setting(s) colour" in message
    message = await _error_of(provider, agent_pyz, node_address, hosts.settings(node_address, capture="sideways"))
    assert "ssh.capture must be one of auto, explicit, transparent" in message


# A supervised process that marks a socket as the proxies do (SO_MARK needs CAP_NET_ADMIN), then stays.
MARKER = """
import socket, time
s = socket.socket()
try:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0x539)
    print("marked", s.getsockopt(socket.SOL_SOCKET, socket.SO_MARK), flush=True)
except OSError as e:
    print("cannot mark:", e, flush=True)
time.sleep(600)
"""
NET_ADMIN = 1 << 12  # CAP_NET_ADMIN's bit in /proc/<pid>/status


async def test_a_sudo_login_captures_transparently_with_net_admin(provider: SshProvider, agent_pyz: Path,
                                                                   node_address: str, workload_address: str,
                                                                   hosts: SshHosts) -> None:
    settings = hosts.settings(node_address, user=SUDO_LOGIN, capture="transparent")
    info = await provider.create_node(NodeSpec(provider.lab, "node-1", 0, node_address, (workload_address,),
                                               settings=settings), agent_pyz)
    assert info.details["capture"] == info.details["captureCapability"] == "transparent"
    assert info.details["captureReason"].startswith("passwordless sudo")
    assert info.details["dir"] == f"/home/{SUDO_LOGIN}/.meshlab/labs/{provider.lab}/node-1"
    await provider.start_process("node-1", ProcessSpec("marker", ("python3", "-c", MARKER)))
    # A workload goes without: it could otherwise mark its sockets past the capture rules too.
    await provider.start_process("node-1", ProcessSpec("app", ("python3", "-c", MARKER), labels={"role": "workload"}))

    def marked(name: str) -> Callable[[], Awaitable[str | None]]:
        async def said() -> str | None:
            lines = [line for line in (await provider.logs("node-1", name)).splitlines()
                     if line.startswith(("marked", "cannot mark"))]
            return lines[0] if lines else None
        return said

    assert await eventually(marked("marker"), "the marker's output") == f"marked {0x539}"
    assert (await eventually(marked("app"), "the workload's output")).startswith("cannot mark")
    # The supervisor and what it starts run as the login, with CAP_NET_ADMIN (ambient: passed on at exec).
    _, uid = hosts.sh("host-1", f"id -u {SUDO_LOGIN}")
    supervisor = info.details["pid"]
    marker = next(p.pid for p in await provider.list_processes("node-1") if p.name == "marker")
    for pid in (supervisor, marker):
        status = hosts.proc_status("host-1", pid)
        assert status["Uid"].split()[:2] == [uid.strip()] * 2, status["Uid"]
        assert int(status["CapAmb"], 16) == int(status["CapEff"], 16) == NET_ADMIN, status
    app = next(p.pid for p in await provider.list_processes("node-1") if p.name == "app")
    status = hosts.proc_status("host-1", app)
    assert status["Uid"].split()[:2] == [uid.strip()] * 2 and int(status["CapEff"], 16) == 0, status
    # Its files stay the login's.
    _, owners = hosts.sh("host-1", f"find /home/{SUDO_LOGIN}/.meshlab ! -user {SUDO_LOGIN}")
    assert owners.strip() == ""
    # The capture rules go through sudo (the provider's as_root); the node's processes are found through sudo.
    spec = capture.CaptureSpec("node-1", (capture.CapturedWorkload("web-1", workload_address, (8080,)),),
                               loopback_workloads=True)
    await capture.install(provider, "node-1", spec)
    assert "-A OUTPUT -j MESHLAB_OUTPUT" in hosts.capture_leftovers("host-1")
    await provider.pause_node("node-1")
    assert hosts.proc_status("host-1", marker)["State"].split()[0] == "T"
    assert (await provider.node_info("node-1")).state == "paused"
    await provider.resume_node("node-1")
    assert (await provider.node_info("node-1")).state == "running"

    await provider.destroy_node("node-1")
    assert hosts.lab_processes("host-1", provider.lab) == [] and hosts.lab_files("host-1", provider.lab) == []
    assert hosts.capture_leftovers("host-1") == ""


async def test_a_host_holds_one_transparent_node(provider: SshProvider, agent_pyz: Path, node_address: str,
                                                 hosts: SshHosts, tmp_path: Path) -> None:
    settings = hosts.settings(node_address, capture="transparent")
    await provider.create_node(NodeSpec(provider.lab, "node-1", 0, node_address, settings=settings), agent_pyz)
    # A second node of the lab there, on an address of its own: the wildcard capture ports are taken.
    second = f"127.79.{random.randrange(1, 250)}.1"
    message = await _error_of_node(provider, agent_pyz, "node-2", second, settings)
    assert (f"node node-2: ssh.capture is transparent, but on root@{node_address} node node-1 of lab "
            f"{provider.lab} captures transparently already") in message
    # Another lab there (a sudo login this time): refused the same way, naming the lab; nothing of it recorded.
    other = SshProvider(f"{provider.lab}-b", tmp_path / "lab-b")
    try:
        message = await _error_of_node(other, agent_pyz, "node-1", node_address,
                                       hosts.settings(node_address, user=SUDO_LOGIN, capture="transparent"))
        assert f"node node-1 of lab {provider.lab} captures transparently already" in message
        assert f"meshlab down {provider.lab}" in message
        assert _registry().get(other.lab, {}) == {}
        # Explicit capture is no conflict.
        info = await other.create_node(NodeSpec(other.lab, "node-1", 0, second, settings=hosts.settings(
            node_address, user=SUDO_LOGIN)), agent_pyz)
        assert info.details["capture"] == "explicit"
        await other.destroy_node("node-1")
    finally:
        await other.close()
        await SshProvider.clean(other.lab)
    assert hosts.lab_processes("host-1", other.lab) == []
    # The first node is untouched: down then takes its chains off (none were written here: no capture install).
    assert (await provider.node_info("node-1")).state == "running"


async def _error_of_node(provider: SshProvider, agent_pyz: Path, node: str, address: str, settings: dict) -> str:
    with pytest.raises(ProvisionError) as caught:
        await provider.create_node(NodeSpec(provider.lab, node, 0, address, settings=settings), agent_pyz)
    return str(caught.value)
