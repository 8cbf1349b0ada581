"""The docker provider: a node is a container of the node image (`lab.image`) on the lab's bridge network.

* The lab gets one bridge network, `meshlab-<lab>`. Its subnet is the first node's `docker: {subnet: ...}`
  setting (NodeSpec.settings["docker"], as the topology writes it), else the /24 of its address, else
  (taken, or not a private address) a free /24 of 10.210.0.0/16. Its gateway (the subnet's first
  address) is the host: a node reaches the lab's control plane there (`lab_network()`, and `gateway`
  in NodeInfo.details).
* A node is the container `meshlab-<lab>-<node>` (hostname <node>, NET_ADMIN, docker-init as PID 1)
  at NodeSpec.address on that network, or at an address allocated from the top of the subnet when
  the spec's is not inside it. Its command is the node supervisor: `python3 <node dir>/agents.pyz node ...`.
  Workload addresses are added to eth0 as /32 secondaries, so workloads can bind them.
* The node's folder is bind-mounted at the same path inside the container. So the host talks to the
  supervisor over its unix control socket exactly as the local provider does, copies files by renaming
  them into place (atomic, works on a paused node) and reads process logs from disk.
* Everything carries the labels meshlab.lab, meshlab.home and meshlab.node: `clean` finds it by them,
  with no state, also after the lab's own process was SIGKILLed.

Every call to the engine is blocking (the `docker` package): it runs in a thread, and its errors
become ProvisionError here, with what to do about them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from lab.errors import ProvisionError
from lab.image import image_tag
from lab.providers import proctags
from lab.providers.base import ExecResult, NodeInfo, NodeSpec
from lab.providers.local import _copy_atomic, _install
from lab.providers.supervised import STOP_TIMEOUT, SupervisedProvider
from lab.state import atomic_write

try:
    import docker
    import docker.errors
    import docker.types
    import docker.utils
except ImportError:  # a declared dependency; without it only this provider is unavailable
    docker = None

T = TypeVar("T")

START_TIMEOUT = 20.0  # container start and the supervisor's first answer
STOP_GRACE = 15  # `docker stop`: SIGTERM (the supervisor records and stops its processes), SIGKILL after this
ADDRESSES_FILE = "addresses.json"  # eth0's secondary addresses at stop_node: a new network namespace lacks them
FALLBACK_RANGE = ipaddress.IPv4Network("10.210.0.0/16")  # /24s for labs whose addresses don't fit
PARTITION_TAG = "meshlab-partition"
LABEL_LAB, LABEL_HOME, LABEL_NODE = "meshlab.lab", "meshlab.home", "meshlab.node"
START_ENGINE = "start one with `sudo scripts/install-docker.sh` (or point DOCKER_HOST at one)"


def engine(timeout: float = 60.0) -> Any:
    """A client of the Docker engine that answered a ping; ProvisionError saying how to start one."""
    if docker is None:
        raise ProvisionError("the docker provider needs the `docker` Python package: pip install 'docker>=7'")
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except (docker.errors.DockerException, OSError) as e:
        if _reason(e) == "permission denied":
            raise ProvisionError("the Docker engine refuses this user (permission denied on its socket): "
                                 "run as root or join the `docker` group") from None
        raise ProvisionError(f"no Docker engine answers ({_reason(e)}): {START_ENGINE}") from None
    return client


async def free_subnet(candidates: list[str], used: set[str]) -> str:
    """The first of `candidates` (subnets) not in `used` and overlapping no Docker network nor host route."""
    def pick() -> str:
        client = engine(timeout=30)
        try:
            taken = _taken_subnets(client)
        finally:
            client.close()
        for candidate in candidates:
            net = ipaddress.ip_network(candidate)
            if candidate not in used and not any(net.overlaps(t) for t in taken):
                return candidate
        raise ProvisionError(f"no free subnet left for a lab network ({candidates[0]} ... {candidates[-1]}): "
                             "`meshlab clean` old labs")

    return await asyncio.to_thread(pick)


def _reason(e: BaseException) -> str:
    text = str(getattr(e, "explanation", None) or e)
    for hint in ("Connection refused", "No such file or directory", "Permission denied"):
        if hint in text:
            return hint.lower()
    return text[:200]


class DockerProvider(SupervisedProvider):
    """Nodes as containers of the node image on one bridge network per lab."""

    name = "docker"
    resolver_port = 15053

    def __init__(self, lab: str, lab_dir: Path) -> None:
        super().__init__(lab, lab_dir)
        self._engine: Any = None
        self._layout = asyncio.Lock()  # network creation, address allocation, network removal

    # -- names, paths, labels -------------------------------------------------------
    def agent_command(self, node: str) -> tuple[str, ...]:
        return ("python3", str(self.node_dir(node) / "agents.pyz"))

    @property
    def network_name(self) -> str:
        return f"meshlab-{self.lab}"

    def container_name(self, node: str) -> str:
        return f"meshlab-{self.lab}-{node}"

    def _labels(self, node: str | None = None) -> dict[str, str]:
        labels = {LABEL_LAB: self.lab, LABEL_HOME: proctags.home_tag()}
        if node is not None:
            labels[LABEL_NODE] = node
        return labels

    def _tags(self, node: str) -> dict[str, str]:
        return {"MESHLAB_LAB": self.lab, "MESHLAB_NODE": node, "MESHLAB_HOME": proctags.home_tag()}

    # -- the engine ------------------------------------------------------------------------
    async def _docker(self, what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking engine call in a thread; its errors become ProvisionError about `what`."""
        def run() -> T:
            if self._engine is None:
                self._engine = engine()
            return call(self._engine, *args, **kwargs)

        try:
            return await asyncio.to_thread(run)
        except ProvisionError:
            raise
        except docker.errors.ImageNotFound:
            raise ProvisionError(f"{what}: no such image: build the node image with "
                                 "`meshlab image build --offline`") from None
        except docker.errors.APIError as e:
            raise ProvisionError(f"{what}: {e.explanation or e}") from None
        except (docker.errors.DockerException, OSError) as e:
            self._engine = None
            raise ProvisionError(f"{what}: lost the Docker engine ({_reason(e)}): {START_ENGINE}") from None

    async def _container(self, node: str, required: bool = True) -> Any:
        """The node's container (refreshed), None if there is none and not `required`."""
        def find(client: Any) -> Any:
            try:
                return client.containers.get(self.container_name(node))
            except docker.errors.NotFound:
                return None

        container = await self._docker(f"node {node}", find)
        if container is not None and container.labels.get(LABEL_HOME) != proctags.home_tag():
            raise ProvisionError(f"node {node}: the container {container.name} belongs to another MESHLAB_HOME "
                                 f"({container.labels.get(LABEL_HOME)}): remove it or use another lab name")
        if container is None and required:
            raise ProvisionError(f"no node {node!r} in lab {self.lab!r} (no container {self.container_name(node)})")
        return container

    async def lab_network(self) -> dict[str, str] | None:
        """The lab's network: name, subnet and gateway (the host, as the nodes see it); None before any node."""
        network = await self._network()
        return None if network is None else _network_doc(network)

    async def _network(self) -> Any:
        def find(client: Any) -> Any:
            try:
                return client.networks.get(self.network_name)
            except docker.errors.NotFound:
                return None

        network = await self._docker(f"lab {self.lab}", find)
        if network is not None and network.attrs.get("Labels", {}).get(LABEL_HOME) != proctags.home_tag():
            raise ProvisionError(f"the network {self.network_name} belongs to another MESHLAB_HOME: "
                                 "remove it or use another lab name")
        return network

    async def _ensure_network(self, spec: NodeSpec, requested: str | None) -> Any:
        network = await self._network()
        if network is not None:
            if requested and _network_doc(network)["subnet"] != str(ipaddress.ip_network(requested, strict=False)):
                raise ProvisionError(f"lab {self.lab}: its network {self.network_name} has the subnet "
                                     f"{_network_doc(network)['subnet']}, not {requested}; `meshlab down` it first")
            return network
        for attempt in range(5):
            taken = await self._docker("list networks", _taken_subnets)
            subnet = _choose_subnet(spec.address, requested, taken)
            gateway = str(subnet.network_address + 1)
            try:
                return await self._docker(f"lab {self.lab}: create network {self.network_name} ({subnet})",
                                          _create_network, self.network_name, str(subnet), gateway,
                                          self._labels())
            except ProvisionError as e:
                # Another lab took the subnet (or the name) in the meantime: look again.
                if attempt == 4 or not any(w in str(e) for w in ("overlap", "already exists")):
                    raise
                existing = await self._network()
                if existing is not None:
                    return existing
        raise AssertionError("not reached")

    # -- nodes ----------------------------------------------------------------------------------
    async def create_node(self, spec: NodeSpec, agent_pyz: Path) -> NodeInfo:
        folder = self.node_dir(spec.name)
        for sub in ("logs", "config"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(_install, agent_pyz, folder / "agents.pyz")
        options = _options(spec)
        image = str(options.get("image") or image_tag())
        image_id = await self._docker(f"node {spec.name}: node image {image}",
                                      lambda client: client.images.get(image).id)
        async with self._layout:
            network = await self._ensure_network(spec, options.get("subnet"))
            doc = _network_doc(network)
            wanted = spec.address if _fits(spec.address, doc) else None
            container = await self._container(spec.name, required=False)
            if container is not None and not self._same_node(container, image_id, wanted, folder, options):
                await self._forget(spec.name)
                await self._docker(f"node {spec.name}: remove its outdated container",
                                   lambda client: container.remove(force=True))
                container = None
            fresh = container is None
            address: str
            if fresh:
                if wanted is not None:
                    address = wanted
                else:
                    address = await self._docker(f"node {spec.name}: allocate an address", _allocate,
                                                 self.network_name, doc)
                container = await self._create_container(spec, image, address, folder, options)
        if fresh:
            await self._docker(f"node {spec.name}: start", lambda client: container.start())
        else:
            address = _address_on(container, self.network_name) or ""  # adopted: it has one
            if container.status == "paused":
                await self._docker(f"node {spec.name}: unpause", lambda client: container.unpause())
            if container.status not in ("running", "paused"):
                (folder / "control.sock").unlink(missing_ok=True)
                await self._docker(f"node {spec.name}: start", lambda client: container.start())
            elif await self._ping(spec.name) is None:  # a hung supervisor: start the node afresh
                (folder / "control.sock").unlink(missing_ok=True)
                await self._docker(f"node {spec.name}: restart", lambda client: container.restart(timeout=3))
        try:
            await self._set_workload_addresses(spec.name, address, spec.workload_addresses)
        except ProvisionError:
            await self._wait_for_supervisor(spec.name)  # says so when the container stopped at start
            raise
        ping = await self._wait_for_supervisor(spec.name)
        return self._info(spec.name, "running", container, address, ping, doc["gateway"])

    def _same_node(self, container: Any, image_id: str, address: str | None, folder: Path,
                   options: dict[str, Any]) -> bool:
        """Whether a found container is the node asked for (same image, address, folder, limits): adopt it then."""
        mounts = {m.get("Destination"): m.get("Source") for m in container.attrs.get("Mounts", [])}
        current = _address_on(container, self.network_name)
        host = container.attrs.get("HostConfig") or {}
        return (container.attrs.get("Image") == image_id and current is not None
                and (address is None or current == address) and mounts.get(str(folder)) == str(folder)
                and (host.get("NanoCpus") or 0) == _nano_cpus(options) and (host.get("Memory") or 0) == _memory(options)
                and (host.get("Sysctls") or {}) == dict(options.get("sysctls") or {}))

    async def _create_container(self, spec: NodeSpec, image: str, address: str, folder: Path,
                                options: dict[str, Any]) -> Any:
        (folder / "control.sock").unlink(missing_ok=True)
        argv = [*self.agent_command(spec.name), "node", "--lab", self.lab, "--node", spec.name,
                "--dir", str(folder), "--address", address, "--resolver-port", str(self.resolver_port)]
        network = self.network_name

        def create(client: Any) -> Any:
            return client.containers.create(
                image, argv, name=self.container_name(spec.name), hostname=spec.name,
                labels=self._labels(spec.name), environment=self._tags(spec.name), working_dir=str(folder),
                cap_add=["NET_ADMIN"], init=True, detach=True,
                sysctls=dict(options.get("sysctls") or {}) or None,
                nano_cpus=_nano_cpus(options) or None, mem_limit=_memory(options) or None,
                volumes={str(folder): {"bind": str(folder), "mode": "rw"}},
                network=network, networking_config={network: client.api.create_endpoint_config(ipv4_address=address)})

        return await self._docker(f"node {spec.name}: create its container at {address}", create)

    async def _set_workload_addresses(self, node: str, address: str, wanted: tuple[str, ...]) -> None:
        """Make eth0's secondary addresses exactly `wanted` (as /32s), so workloads can bind them."""
        result = await self.exec(node, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"], timeout=20)
        have = {line.split()[3].split("/")[0]: line.split()[3] for line in result.stdout.splitlines()
                if len(line.split()) > 3 and line.split()[2] == "inet"}
        script = [f"ip addr add {a}/32 dev eth0" for a in wanted if a != address and a not in have]
        script += [f"ip addr del {cidr} dev eth0" for a, cidr in have.items() if a != address and a not in wanted]
        if script:
            done = await self.exec(node, ["sh", "-c", " && ".join(script)], timeout=20)
            if done.exit_code != 0:
                raise ProvisionError(f"node {node}: cannot set its workload addresses: {done.stderr.strip()}")

    async def _wait_for_supervisor(self, node: str) -> dict[str, Any]:
        sock = self.node_dir(node) / "control.sock"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if sock.exists():
                ping = await self._ping(node)
                if ping is not None:
                    return ping
            container = await self._container(node)
            if container.status not in ("running", "created"):
                logs = await self._docker(f"node {node}", lambda client: container.logs(tail=4))
                last = logs.decode(errors="replace").strip().replace("\n", " | ")
                raise ProvisionError(f"node {node}: its container stopped at start ({container.status}, code "
                                     f"{container.attrs['State'].get('ExitCode')}): {last or 'no output'} "
                                     f"(`docker logs {container.name}`)")
            if time.monotonic() > deadline:
                raise ProvisionError(f"node {node}: its supervisor did not answer on {sock} within "
                                     f"{START_TIMEOUT:g}s (`docker logs {container.name}`)")
            await asyncio.sleep(0.1)

    async def destroy_node(self, name: str) -> None:
        container = await self._container(name, required=False)
        if container is not None:
            if container.status == "running":
                try:
                    if os.geteuid() != 0:  # hand the files the node's root made back to the host user
                        await self.exec(name, ["chown", "-R", f"{os.geteuid()}:{os.getegid()}",
                                               str(self.node_dir(name))])
                    # The supervisor stops its processes in order (SIGTERM, then SIGKILL after 3 s), then exits.
                    await self._call(name, "shutdown", timeout=STOP_TIMEOUT)
                except ProvisionError:
                    pass
            await self._forget(name)
            await self._docker(f"node {name}: remove its container",
                               lambda client: _remove_quietly(container, force=True))
        await self._forget(name)
        async with self._layout:  # the lab's last node takes the network with it
            network = await self._network()
            if network is not None and not network.attrs.get("Containers"):
                await self._docker(f"lab {self.lab}: remove network {self.network_name}",
                                   lambda client: _remove_quietly(network))
        await asyncio.to_thread(_rmtree, self.node_dir(name))

    async def node_info(self, name: str) -> NodeInfo:
        container = await self._container(name)
        address = _address_on(container, self.network_name) or ""
        if container.status == "paused":
            return self._info(name, "paused", container, address, None)
        if container.status != "running":
            return self._info(name, "stopped", container, address, None)
        ping = await self._ping(name)
        return self._info(name, "running" if ping else "unreachable", container, address, ping)

    def _info(self, name: str, state: str, container: Any, address: str, ping: dict[str, Any] | None,
              gateway: str | None = None) -> NodeInfo:
        folder = self.node_dir(name)
        network = container.attrs.get("NetworkSettings", {}).get("Networks", {}).get(self.network_name) or {}
        details = {"container": container.name, "container_id": container.id[:12],
                   "image": (container.attrs.get("Config") or {}).get("Image"), "network": self.network_name,
                   "gateway": gateway or network.get("Gateway") or None, "dir": str(folder),
                   "socket": str(folder / "control.sock"),
                   "pid": (ping or {}).get("pid"), "resolver": (ping or {}).get("resolver")}
        return NodeInfo(self.lab, name, address, state, self.name, details)

    # -- talking to the supervisor ----------------------------------------------------------
    async def _check_reachable(self, node: str) -> None:
        await self._require_running(node)

    async def _require_running(self, node: str) -> Any:
        container = await self._container(node)
        if container.status == "paused":
            await self._forget(node)
            raise ProvisionError(f"node {node} is paused: its supervisor answers nothing until resumed")
        if container.status != "running":
            raise ProvisionError(f"node {node} is not running (its container is {container.status}): "
                                 "`meshlab up` starts it again")
        return container

    # -- files and commands -----------------------------------------------------------------------
    async def copy_file(self, node: str, src: Path, dest: str) -> None:
        # Through the bind mount: renamed into place, so a process on the node never sees half a file.
        folder = self.node_dir(node)
        rel = Path(dest)
        if rel.is_absolute() or ".." in rel.parts:
            raise ProvisionError(f"node {node}: copy destination must be inside the node's folder, not {dest!r}")
        if not folder.is_dir():
            raise ProvisionError(f"no node {node!r} in lab {self.lab!r} (no folder {folder})")
        try:
            await asyncio.to_thread(_copy_atomic, src, folder / rel)
        except OSError as e:
            raise ProvisionError(f"node {node}: cannot copy {src} to {folder / rel}: {e}") from None

    async def exec(self, node: str, argv: list[str], env: dict[str, str] | None = None,
                   timeout: float = 60.0) -> ExecResult:
        container = await self._require_running(node)
        # coreutils `timeout` runs the command in its own process group and kills the whole group when
        # time is up (and answers 127/126 for a missing or unrunnable command, as a shell does).
        wrapped = ["timeout", "-k", "1", f"{timeout:g}", *argv]
        environment = {**(env or {}), **self._tags(node)}
        workdir = str(self.node_dir(node))

        def run(client: Any) -> tuple[int, bytes, bytes, float]:
            started = time.monotonic()
            exec_id = client.api.exec_create(container.id, wrapped, environment=environment, workdir=workdir)["Id"]
            out, err = client.api.exec_start(exec_id, demux=True)
            code = client.api.exec_inspect(exec_id)["ExitCode"]
            return code, out or b"", err or b"", time.monotonic() - started

        code, out, err, took = await self._docker(f"node {node}: exec {shlex.join(argv)}", run)
        if code in (124, 137) and took >= timeout * 0.9:
            raise ProvisionError(f"node {node}: {shlex.join(argv)} did not finish within {timeout:g}s")
        return ExecResult(code, out.decode(errors="replace"), err.decode(errors="replace"))

    # -- supervised processes ---------------------------------------------------------------------
    async def logs(self, node: str, name: str, tail: int = 100) -> str:
        path = self.node_dir(node) / "logs" / f"{name}.log"
        text = await self._log_file(node, name, tail)
        if text is not None:
            return text
        if name == "supervisor":  # its output is the container's
            container = await self._container(node)
            raw = await self._docker(f"node {node}: logs", lambda client: container.logs(tail=tail))
            return str(raw.decode(errors="replace"))
        raise ProvisionError(f"node {node}: no log of a process named {name!r} ({path})")

    # -- node faults ------------------------------------------------------------------------------------
    async def pause_node(self, node: str) -> None:
        container = await self._container(node)
        await self._forget(node)  # a paused node answers nothing; don't keep a connection to it
        if container.status == "paused":
            return
        if container.status != "running":
            raise ProvisionError(f"node {node}: nothing runs there to pause (its container is {container.status})")
        await self._docker(f"node {node}: pause", lambda client: container.pause())

    async def resume_node(self, node: str) -> None:
        container = await self._container(node)
        if container.status == "paused":
            await self._docker(f"node {node}: unpause", lambda client: container.unpause())

    async def stop_node(self, node: str) -> None:
        """`docker stop`: the supervisor gets SIGTERM (through docker-init), records what runs and stops it.

        The container's network namespace goes with it, so eth0's secondary addresses (workloads, sidecars,
        waypoints) are saved first in the node's folder; iptables rules (capture, partitions) are lost too:
        the lab writes the capture again after `start_node`.
        """
        container = await self._container(node)
        await self._forget(node)
        if container.status == "paused":
            await self._docker(f"node {node}: unpause", lambda client: container.unpause())
            container = await self._container(node)
        if container.status != "running":
            return  # stopped already
        primary = _address_on(container, self.network_name)
        secondary = [a for a in await self._addresses(node) if a != primary]
        await asyncio.to_thread(atomic_write, self.node_dir(node) / ADDRESSES_FILE,
                                json.dumps({"addresses": secondary}))
        if os.geteuid() != 0:  # hand the files the node's root made back to the host user, as destroy_node does
            await self.exec(node, ["chown", "-R", f"{os.geteuid()}:{os.getegid()}", str(self.node_dir(node))])
        await self._docker(f"node {node}: stop", lambda client: container.stop(timeout=STOP_GRACE))

    async def start_node(self, node: str) -> None:
        """`docker start`, wait for the supervisor, put back the secondary addresses saved at stop."""
        container = await self._container(node)
        if container.status == "paused":
            await self._docker(f"node {node}: unpause", lambda client: container.unpause())
        started = container.status not in ("running", "paused")
        if started:
            (self.node_dir(node) / "control.sock").unlink(missing_ok=True)
            await self._docker(f"node {node}: start", lambda client: container.start())
        await self._wait_for_supervisor(node)
        if not started:
            return  # it ran: its addresses are where they were
        saved = self.node_dir(node) / ADDRESSES_FILE
        try:
            addresses = tuple(json.loads(saved.read_text())["addresses"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ProvisionError(f"node {node}: cannot read its saved addresses ({saved}): {e}") from None
        primary = _address_on(await self._container(node), self.network_name) or ""
        await self._set_workload_addresses(node, primary, addresses)
        saved.unlink(missing_ok=True)

    async def partition(self, node: str, peer: str | None, direction: str = "both") -> None:
        """Drop traffic between `node` and `peer` (every address of it; everything on eth0 when None).

        `both` drops every packet either way. `out` drops the packets of connections `node` opens
        towards the peer, `in` those of connections the peer opens towards `node`: the other side's
        connections keep working. iptables rules in `node`, tagged `meshlab-partition:<peer>`.
        """
        if direction not in ("both", "in", "out"):
            raise ProvisionError(f"partition direction must be both, in or out, not {direction!r}")
        await self.heal_partition(node, peer)
        comment = ["-m", "comment", "--comment", f"{PARTITION_TAG}:{peer or '*'}"]
        one_way = [] if direction == "both" else ["-m", "conntrack", "--ctdir", "ORIGINAL"]
        addresses = [] if peer is None else await self._addresses(peer)
        matches_in = [["-i", "eth0"]] if peer is None else [["-s", a] for a in addresses]
        matches_out = [["-o", "eth0"]] if peer is None else [["-d", a] for a in addresses]
        rules = []
        if direction in ("both", "in"):
            rules += [["iptables", "-w", "-I", "INPUT", "1", *m, *one_way, *comment, "-j", "DROP"] for m in matches_in]
        if direction in ("both", "out"):
            rules += [["iptables", "-w", "-I", "OUTPUT", "1", *m, *one_way, *comment, "-j", "DROP"]
                      for m in matches_out]
        done = await self.exec(node, ["sh", "-c", " && ".join(shlex.join(r) for r in rules)], timeout=20)
        if done.exit_code != 0:
            raise ProvisionError(f"node {node}: cannot partition it from {peer or 'every peer'}: {done.stderr.strip()}")

    async def heal_partition(self, node: str, peer: str | None) -> None:
        """Remove the partition rules `partition` added in `node` against `peer` (every one when None)."""
        listed = await self.exec(node, ["iptables", "-w", "-S"], timeout=20)
        if listed.exit_code != 0:
            raise ProvisionError(f"node {node}: cannot read its iptables rules: {listed.stderr.strip()}")
        deletes = []
        for line in listed.stdout.splitlines():
            words = shlex.split(line)
            if words[:1] != ["-A"] or "--comment" not in words:
                continue
            tag = words[words.index("--comment") + 1]
            if tag == f"{PARTITION_TAG}:{peer}" or (peer is None and tag.startswith(f"{PARTITION_TAG}:")):
                deletes.append(["iptables", "-w", "-D", *words[1:]])
        if deletes:
            done = await self.exec(node, ["sh", "-c", " && ".join(shlex.join(d) for d in deletes)], timeout=20)
            if done.exit_code != 0:
                raise ProvisionError(f"node {node}: cannot heal its partition: {done.stderr.strip()}")

    async def _addresses(self, node: str) -> list[str]:
        """Every address of a node of this lab: its own and its workloads' (eth0's)."""
        container = await self._container(node)
        primary = _address_on(container, self.network_name)
        found = [primary] if primary else []
        if container.status == "running":
            listed = await self.exec(node, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"], timeout=20)
            found += [w[3].split("/")[0] for w in map(str.split, listed.stdout.splitlines())
                      if len(w) > 3 and w[2] == "inet" and w[3].split("/")[0] not in found]
        return found

    # -- leftovers ------------------------------------------------------------------------------------------
    @classmethod
    async def clean(cls, lab: str | None) -> list[str]:
        try:
            return await asyncio.to_thread(_clean, lab, proctags.home_tag())
        except ProvisionError:
            return []  # no engine answers: nothing of a lab can be running there

    async def close(self) -> None:
        await super().close()
        if self._engine is not None:
            client, self._engine = self._engine, None
            await asyncio.to_thread(client.close)


# -- node settings ---------------------------------------------------------------------------------------------

SETTINGS = {"image": "the node image (default: meshlab-node:<recipe> from `meshlab image build`)",
            "subnet": "the lab network's subnet, e.g. 10.210.7.0/24 (the first node's counts)",
            "cpus": "CPU limit, e.g. 1.5", "memory": "memory limit, e.g. 256m",
            "sysctls": "namespaced sysctls of the node, e.g. {net.ipv4.ip_forward: 1}"}


def _options(spec: NodeSpec) -> dict[str, Any]:
    """The node's docker settings: the topology's `docker:` mapping of the node."""
    options = spec.settings.get("docker") or {}
    unknown = sorted(set(options) - set(SETTINGS))
    if unknown:
        raise ProvisionError(f"node {spec.name}: unknown docker setting(s) {', '.join(unknown)} "
                             f"(known: {', '.join(SETTINGS)})")
    return dict(options)


def _nano_cpus(options: dict[str, Any]) -> int:
    try:
        return int(float(options.get("cpus") or 0) * 1e9)
    except (TypeError, ValueError):
        raise ProvisionError(f"docker setting cpus must be a number, not {options.get('cpus')!r}") from None


def _memory(options: dict[str, Any]) -> int:
    value = options.get("memory")
    if not value:
        return 0
    try:
        return int(docker.utils.parse_bytes(value) if isinstance(value, str) else value)
    except (docker.errors.DockerException, TypeError, ValueError):
        raise ProvisionError(f"docker setting memory must be like 256m or 1g, not {value!r}") from None


# -- engine helpers (blocking; run in a thread) -----------------------------------------------------------

def _clean(lab: str | None, home: str) -> list[str]:
    client = engine(timeout=30)
    try:
        labels = [f"{LABEL_HOME}={home}", f"{LABEL_LAB}={lab}" if lab else LABEL_LAB]
        removed = []
        for container in client.containers.list(all=True, filters={"label": labels}):
            _remove_quietly(container, force=True)
            removed.append(f"container {container.name}")
        for network in client.networks.list(filters={"label": labels}):
            _remove_quietly(network)
            removed.append(f"network {network.name}")
        for volume in client.volumes.list(filters={"label": labels}):
            _remove_quietly(volume, force=True)
            removed.append(f"volume {volume.name}")
        return removed
    finally:
        client.close()


def _remove_quietly(thing: Any, **kwargs: Any) -> None:
    """Remove a container, network or volume; gone already is fine."""
    try:
        thing.remove(**kwargs)
    except docker.errors.NotFound:
        pass


def _network_doc(network: Any) -> dict[str, str]:
    config = ((network.attrs.get("IPAM") or {}).get("Config") or [{}])[0]
    subnet = ipaddress.ip_network(config.get("Subnet", "0.0.0.0/32"))
    return {"name": network.name, "subnet": str(subnet),
            "gateway": config.get("Gateway") or str(subnet.network_address + 1)}


def _create_network(client: Any, name: str, subnet: str, gateway: str, labels: dict[str, str]) -> Any:
    pool = docker.types.IPAMPool(subnet=subnet, gateway=gateway)
    return client.networks.create(name, driver="bridge", ipam=docker.types.IPAMConfig(pool_configs=[pool]),
                                  labels=labels, check_duplicate=True)


def _taken_subnets(client: Any) -> list[ipaddress.IPv4Network]:
    """Subnets in use: every Docker network's, and every route of this host but the default one."""
    taken = []
    for network in client.networks.list():
        for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
            try:
                net = ipaddress.ip_network(config.get("Subnet", ""), strict=False)
            except ValueError:
                continue
            if isinstance(net, ipaddress.IPv4Network):
                taken.append(net)
    return taken + _host_routes()


def _host_routes() -> list[ipaddress.IPv4Network]:
    routes: list[ipaddress.IPv4Network] = []
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return routes
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        dest = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
        mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
        if int(mask):  # not the default route
            routes.append(ipaddress.IPv4Network(f"{dest}/{mask}", strict=False))
    return routes


def _choose_subnet(address: str, requested: str | None, taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The lab network's subnet: the one asked for, the /24 of the node's address, or a free /24."""
    def free(net: ipaddress.IPv4Network) -> bool:
        return not any(net.overlaps(t) for t in taken)

    if requested:
        try:
            net = ipaddress.IPv4Network(requested, strict=False)
        except ValueError:
            raise ProvisionError(f"the docker setting subnet must be an IPv4 network, not {requested!r}") from None
        if not free(net):
            raise ProvisionError(f"the subnet {requested} for the lab network overlaps one in use "
                                 f"({', '.join(str(t) for t in taken if t.overlaps(net))})")
        return net
    try:
        own = ipaddress.IPv4Network(f"{address}/24", strict=False)
        if own.is_private and not own.is_loopback and not own.is_link_local and free(own):
            return own
    except ValueError:
        pass
    for net in FALLBACK_RANGE.subnets(new_prefix=24):
        if free(net):
            return net
    raise ProvisionError(f"no free /24 left in {FALLBACK_RANGE} for the lab network: `meshlab clean` old labs")


def _fits(address: str, doc: dict[str, str]) -> bool:
    """Whether a node can have `address` on the network: inside its subnet, not its gateway or edges."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    net = ipaddress.ip_network(doc["subnet"])
    return ip in net and ip not in (net.network_address, net.broadcast_address) and str(ip) != doc["gateway"]


def _allocate(client: Any, network_name: str, doc: dict[str, str]) -> str:
    """A free address from the top of the subnet (a topology's own addresses usually start at the bottom)."""
    network = client.networks.get(network_name)
    used = {str(ipaddress.ip_interface(c["IPv4Address"]).ip)
            for c in (network.attrs.get("Containers") or {}).values() if c.get("IPv4Address")}
    net = ipaddress.ip_network(doc["subnet"])
    for ip in reversed(list(net.hosts())):
        if str(ip) not in used and _fits(str(ip), doc):
            return str(ip)
    raise ProvisionError(f"no free address left on {network_name} ({net})")


def _address_on(container: Any, network_name: str) -> str | None:
    network = (container.attrs.get("NetworkSettings") or {}).get("Networks", {}).get(network_name) or {}
    configured = (network.get("IPAMConfig") or {}).get("IPv4Address")
    return configured or network.get("IPAddress") or None


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
