"""The conformance suite against the ssh provider, on real OpenSSH servers, plus ssh specifics.

The hosts are containers of the node image running sshd (tests/providers/sshd.py) on a network
the test makes, logged into with a generated key and checked against a known_hosts the test
writes. Needs a Docker engine (skipped with the reason only when none answers; not in CI).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from lab.errors import ProvisionError
from lab.providers.base import NodeSpec, Provider
from lab.providers.ssh import SshProvider, _registry
from tests.providers.conformance import RealProcessConformance
from tests.providers.sshd import NO_PYTHON, OLD_PYTHON, PLAIN_USER, SshHosts

pytestmark = [pytest.mark.ssh, pytest.mark.docker]


@pytest.fixture(scope="module")
def hosts(node_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHosts]:
    made = SshHosts(node_image, tmp_path_factory.mktemp("ssh"))
    try:
        made.start("host-1")
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
