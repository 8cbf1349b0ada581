"""The ssh provider: a node is a host (a VM, a bare machine) the lab logs into with asyncssh.

* Settings: the node's `ssh:` mapping (`lab.providers.sshconn.SETTINGS`). One connection per host,
  reused by every node there; `~/.ssh/config`, keys and the agent count; host keys are checked.
* Install: `python3 --version` first (>= 3.11, `sshhost.MIN_PYTHON`), then the agent zipapp over
  SFTP into `~/.meshlab/labs/<lab>/<node>/` and the node supervisor started with `setsid`, so it
  outlives the SSH session. The lab talks to it over a channel to its control socket (streamlocal),
  reads its logs with `tail` and finds its processes by their tags in /proc, as everywhere else.
* Reachability: a lab's agents reach the control plane at `127.0.0.1:<channel_port>` on their host,
  a reverse forward kept up by the lab's tunnel keeper (`lab.providers.sshtunnel`) that reconnects
  when the connection drops. Nodes reach each other on the host addresses of the topology.
* Every node is recorded in `$MESHLAB_HOME/ssh/nodes.json` before anything is started on its host,
  so `clean` finds the hosts to search, also after the lab's own process was SIGKILLed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shlex
import tempfile
import time
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from lab import capture
from lab.errors import ProviderNotSupported, ProvisionError
from lab.providers import proctags, sshhost, sshtunnel
from lab.providers.base import ExecResult, NodeInfo, NodeSpec
from lab.providers.nodeclient import NodeClient, SupervisorUnreachable
from lab.providers.sshconn import ConnectionPool, SshTarget, asyncssh, connect, close_quietly, parse_target
from lab.providers.supervised import PING_TIMEOUT, STOP_TIMEOUT, SupervisedProvider
from lab.state import atomic_write, meshlab_home

T = TypeVar("T")

START_TIMEOUT = 15.0
AGENT_WRAPPER = "#!/bin/sh\n# the agent zipapp on the interpreter the topology names (ssh.python)\nexec {python} \"$(dirname \"$0\")/agents.pyz\" \"$@\"\n"


def capture_of_target(setting: str | None) -> str:
    """The capture an ssh node uses: transparent only when its settings ask for it (iptables on a host the
    lab does not own is opt-in; `auto` and `explicit` mean explicit)."""
    return "transparent" if setting == "transparent" else "explicit"


def registry_path() -> Path:
    return meshlab_home() / "ssh" / "nodes.json"


def _registry() -> dict[str, dict[str, Any]]:
    try:
        doc = json.loads(registry_path().read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _save_registry(doc: dict[str, dict[str, Any]]) -> None:
    atomic_write(registry_path(), json.dumps({k: v for k, v in doc.items() if v}, indent=1), mode=0o600)


class _SshNodeClient(NodeClient):
    """A NodeClient on an SSH channel: asyncssh's errors mean the connection broke."""

    async def call(self, op: str, *, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        try:
            return await super().call(op, timeout=timeout, **fields)
        except asyncssh.Error as e:
            await self._abandon()
            raise SupervisorUnreachable(f"node {self.node}: lost the SSH channel during {op!r}: {e.reason}") from None


class SshProvider(SupervisedProvider):
    """Nodes on hosts reached over SSH, one supervisor each."""

    name = "ssh"

    def __init__(self, lab: str, lab_dir: Path) -> None:
        super().__init__(lab, lab_dir)
        self._pool = ConnectionPool()
        self._paused: set[str] = set()

    # -- records ------------------------------------------------------------------------------
    def _record(self, node: str) -> dict[str, Any]:
        record = _registry().get(self.lab, {}).get(node)
        if record is None:
            raise ProvisionError(f"no node {node!r} in lab {self.lab!r} (no ssh node of that name is recorded)")
        return record

    def _target(self, node: str) -> tuple[SshTarget, str]:
        record = self._record(node)
        return parse_target(node, {"ssh": record["target"]}), record["folder"]

    def _remember(self, node: str, record: dict[str, Any]) -> None:
        doc = _registry()
        doc.setdefault(self.lab, {})[node] = record
        _save_registry(doc)

    def _forget_record(self, node: str) -> None:
        doc = _registry()
        doc.get(self.lab, {}).pop(node, None)
        _save_registry(doc)

    def _tags(self, node: str) -> dict[str, str]:
        return {"MESHLAB_LAB": self.lab, "MESHLAB_NODE": node, "MESHLAB_HOME": proctags.home_tag()}

    def agent_command(self, node: str) -> tuple[str, ...]:
        # Processes run in the node's folder; the wrapper runs the zipapp on the configured python.
        return ("./agent",)

    def as_root(self, node: str, argv: list[str]) -> list[str]:
        """`argv` as root on the node's host: itself for a root login, through `sudo -n` otherwise."""
        return list(argv) if _is_root(self._record(node)) else ["sudo", "-n", *argv]

    def channel_endpoint(self, node: str) -> str:
        """Where the node's agents reach the control plane: the reverse forward on their host."""
        target, _ = self._target(node)
        return f"127.0.0.1:{target.channel_port}"

    async def _conn(self, target: SshTarget) -> Any:
        return await self._pool.get(target)

    async def _on_host(self, target: SshTarget, op: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`op(conn, *args)` on the host's connection; once more on a new one if the pooled one had dropped."""
        for attempt in (1, 2):
            conn = await self._conn(target)
            try:
                return await op(conn, *args)
            except (sshhost.HostConnectionLost, asyncssh.ChannelOpenError, asyncssh.ConnectionLost,
                    asyncssh.DisconnectError, ConnectionError) as e:
                await self._pool.drop(target)
                if attempt == 2:
                    raise ProvisionError(f"node {target.node}: lost the SSH connection to {target.where}: "
                                         f"{getattr(e, 'reason', None) or e}") from None
        raise AssertionError("unreachable")

    # -- nodes ------------------------------------------------------------------------------------
    async def create_node(self, spec: NodeSpec, agent_pyz: Path) -> NodeInfo:
        settings = spec.settings
        if "ssh" not in settings and spec.name in _registry().get(self.lab, {}):
            settings = {"ssh": self._record(spec.name)["target"]}  # adopting a node made before
        target = parse_target(spec.name, settings)
        odd = [a for a in spec.workload_addresses if not ipaddress.ip_address(a).is_loopback]
        if odd:
            raise ProvisionError(f"node {spec.name}: workload addresses on an ssh node are loopback ones (127/8), "
                                 f"not {', '.join(odd)}")
        facts = await self._on_host(target, sshhost.host_facts, target)
        conn = await self._conn(target)
        sshhost.check_capture(target, facts)
        held = False  # whether a supervisor of this node runs there with the capture's privilege already
        if target.capture == "transparent":  # before the record: a refused node must not uncapture the other's
            held = await self._on_host(target, sshhost.check_capture_free, target, self.lab, spec.name,
                                       proctags.home_tag())
        base = target.dir or f"{facts.home}/.meshlab/labs"
        folder = f"{base}/{self.lab}/{spec.name}"
        self._remember(spec.name, {"target": target.to_json(), "folder": folder,
                                   "top": f"{base}/{self.lab}" if target.dir else f"{facts.home}/.meshlab",
                                   "address": spec.address, "python": facts.python, "capture": facts.capture,
                                   "captureReason": facts.reason_for(target), "root": facts.root})
        self._paused.discard(spec.name)
        await self._install(conn, spec.name, folder, agent_pyz, target)
        ping = await self._ping(spec.name)
        if ping is not None and ping.get("address") != spec.address:
            await self._shutdown(spec.name)  # the node moved: start it again on its new address
            ping = None
        if ping is not None and target.capture == "transparent" and not held:
            await self._shutdown(spec.name)  # started for explicit capture: again, with CAP_NET_ADMIN and its tag
            ping = None
        if ping is None:
            # Leftovers of a dead or hung supervisor would hold the node's addresses and ports.
            await sshhost.tagged(conn, target, "kill", self.lab, spec.name, proctags.home_tag())
            ping = await self._start_supervisor(conn, spec, target, folder)
        await sshtunnel.add_node(self.lab, self.lab_dir, spec.name, target)
        return await self._info(spec.name, "running", ping)

    async def _install(self, conn: Any, node: str, folder: str, agent_pyz: Path, target: SshTarget) -> None:
        try:
            done = await sshhost.run(conn, f"mkdir -p {shlex.quote(folder)}/logs {shlex.quote(folder)}/config", 30)
            if done.exit_code != 0:
                raise ProvisionError(f"node {node}: cannot make its folder {folder} on {target.where}: "
                                     f"{done.stderr.strip()}")
            if not await sshhost.same_file(conn, agent_pyz, f"{folder}/agents.pyz"):
                await sshhost.install_file(conn, agent_pyz, f"{folder}/agents.pyz", 0o755)
            with tempfile.TemporaryDirectory() as tmp:
                wrapper = Path(tmp) / "agent"
                wrapper.write_text(AGENT_WRAPPER.format(python=shlex.quote(target.python)))
                await sshhost.install_file(conn, wrapper, f"{folder}/agent", 0o755)
        except (asyncssh.Error, OSError) as e:
            raise ProvisionError(f"node {node}: cannot copy the agents to {folder} on {target.where}: {e}") from None

    async def _start_supervisor(self, conn: Any, spec: NodeSpec, target: SshTarget, folder: str) -> dict[str, Any]:
        log = f"{folder}/logs/supervisor.log"
        argv = [target.python, "agents.pyz", "node", "--lab", self.lab, "--node", spec.name, "--dir", folder,
                "--address", spec.address]
        env, net_admin = self._tags(spec.name), False
        if target.capture == "transparent":  # the proxies mark their sockets (SO_MARK): CAP_NET_ADMIN
            env[sshhost.CAPTURE_TAG] = "transparent"
            net_admin = not _is_root(self._record(spec.name))
        started = await sshhost.start_detached(conn, folder, argv, env, log, net_admin=net_admin)
        if started.exit_code != 0:
            raise ProvisionError(f"node {spec.name}: cannot start its supervisor on {target.where}: "
                                 f"{(started.stderr or started.stdout).strip()}")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            ping = await self._ping(spec.name)
            if ping is not None:
                return ping
            if time.monotonic() > deadline or not await sshhost.tagged(conn, target, "list", self.lab, spec.name,
                                                                     proctags.home_tag()):
                tail = await sshhost.run(conn, f"tail -n 3 {shlex.quote(log)}", 10)
                await sshhost.tagged(conn, target, "kill", self.lab, spec.name, proctags.home_tag())
                last = tail.stdout.strip().replace("\n", " | ")
                raise ProvisionError(f"node {spec.name}: its supervisor on {target.where} did not come up: "
                                     f"{last or 'no output'} (log: {log} there)")
            await asyncio.sleep(0.1)

    async def destroy_node(self, name: str) -> None:
        try:
            target, folder = self._target(name)
        except ProvisionError:
            return  # not recorded: already gone
        record = self._record(name)
        if await self._on_host(target, sshhost.supervisor_state, target, folder, name) not in ("", "T"):
            try:
                await self._shutdown(name)
            except ProvisionError:
                pass
        await self._forget(name)
        await self._on_host(target, sshhost.tagged, target, "kill", self.lab, name, proctags.home_tag())
        if target.capture == "transparent" and not await self._on_host(target, sshhost.capture_holders, target):
            await self._on_host(target, sshhost.run, _uncapture_line(record), 30)
        await self._on_host(target, sshhost.remove_tree, folder, record["top"])
        self._forget_record(name)
        self._paused.discard(name)
        await sshtunnel.remove_node(self.lab, self.lab_dir, name)

    async def _shutdown(self, name: str) -> None:
        await self._call(name, "shutdown", timeout=STOP_TIMEOUT)
        await self._forget(name)

    async def node_info(self, name: str) -> NodeInfo:
        target, folder = self._target(name)
        try:
            state = await self._on_host(target, sshhost.supervisor_state, target, folder, name)
        except ProvisionError as e:
            return await self._info(name, "unreachable", None, str(e))
        if state == "T":
            self._paused.add(name)
            await self._forget(name)
            return await self._info(name, "paused", None)
        self._paused.discard(name)
        if not state:
            return await self._info(name, "stopped", None)
        ping = await self._ping(name)
        return await self._info(name, "running" if ping else "unreachable", ping)

    async def _info(self, name: str, state: str, ping: dict[str, Any] | None, error: str | None = None) -> NodeInfo:
        record = self._record(name)
        target = record["target"]
        details: dict[str, Any] = {
            "host": target["host"], "port": target["port"], "user": target["user"], "dir": record["folder"],
            "python": record["python"], "capture": capture_of_target(target.get("capture")),
            "captureCapability": record["capture"], "captureReason": record["captureReason"],
            "pid": (ping or {}).get("pid"), "resolver": (ping or {}).get("resolver"),
            "channel": f"127.0.0.1:{target['channel_port']}",
            "agentsVia": sshtunnel.socks_address(self.lab_dir, name),
            "connection": sshtunnel.connection_state(self.lab_dir, name)}
        if error:
            details["error"] = error
        return NodeInfo(self.lab, name, str((ping or {}).get("address") or record["address"]), state, self.name,
                        details)

    # -- talking to the supervisor ------------------------------------------------------------------
    async def _check_reachable(self, node: str) -> None:
        self._record(node)
        if node in self._paused:
            raise ProvisionError(f"node {node} is paused: its supervisor answers nothing until resumed")

    async def _client(self, node: str) -> NodeClient:
        async with self._connecting.setdefault(node, asyncio.Lock()):
            client = self._clients.get(node)
            if client is None or client.closed:
                target, folder = self._target(node)
                conn = await self._conn(target)
                try:
                    reader, writer = await asyncio.wait_for(
                        conn.open_unix_connection(f"{folder}/control.sock", encoding=None), PING_TIMEOUT)
                except (asyncssh.Error, OSError, TimeoutError) as e:
                    if isinstance(e, asyncssh.Error) and (conn.is_closed() or "closed" in str(e)):
                        await self._pool.drop(target)
                    reason = getattr(e, "reason", None) or str(e) or type(e).__name__
                    raise SupervisorUnreachable(f"node {node}: cannot reach its supervisor on {target.where} "
                                                f"({folder}/control.sock): {reason}") from None
                client = _SshNodeClient(reader, writer, node)  # type: ignore[arg-type]
                self._clients[node] = client
            return client

    # -- files and commands --------------------------------------------------------------------------
    def _relative(self, node: str, dest: str) -> str:
        rel = Path(dest)
        if rel.is_absolute() or ".." in rel.parts:
            raise ProvisionError(f"node {node}: copy destination must be inside the node's folder, not {dest!r}")
        return rel.as_posix()

    async def copy_file(self, node: str, src: Path, dest: str) -> None:
        rel = self._relative(node, dest)
        target, folder = self._target(node)
        try:
            await self._on_host(target, sshhost.install_file, src, f"{folder}/{rel}")
        except (asyncssh.Error, OSError) as e:
            raise ProvisionError(f"node {node}: cannot copy {src} to {folder}/{rel} on {target.where}: "
                                 f"{getattr(e, 'reason', None) or e}") from None

    async def exec(self, node: str, argv: list[str], env: dict[str, str] | None = None,
                   timeout: float = 60.0) -> ExecResult:
        target, folder = self._target(node)
        if node in self._paused:
            raise ProvisionError(f"node {node} is paused: nothing runs there until it is resumed")
        assignments = [f"{k}={v}" for k, v in {**(env or {}), **self._tags(node)}.items()]
        # coreutils `timeout` kills the command's whole process group when time is up.
        line = (f"cd {shlex.quote(folder)} && exec env {shlex.join(assignments)} "
                f"timeout -k 1 {timeout:g} {shlex.join(argv)}")
        started = time.monotonic()
        result = await self._on_host(target, sshhost.run, line, timeout + 15)
        if result.exit_code in (124, 137) and time.monotonic() - started >= timeout * 0.9:
            raise ProvisionError(f"node {node}: {shlex.join(argv)} did not finish within {timeout:g}s")
        return result

    async def logs(self, node: str, name: str, tail: int = 100) -> str:
        target, folder = self._target(node)
        path = f"{folder}/logs/{name}.log"
        done = await self._on_host(target, sshhost.run, f"tail -n {max(0, int(tail))} {shlex.quote(path)}", 30)
        if done.exit_code != 0:
            raise ProvisionError(f"node {node}: no log of a process named {name!r} ({path} on {target.where})")
        return done.stdout

    # -- node faults -------------------------------------------------------------------------------------
    async def pause_node(self, node: str) -> None:
        target, _ = self._target(node)
        await self._forget(node)  # a paused node answers nothing; don't keep a channel to it
        frozen = await self._on_host(target, sshhost.tagged, target, "stop", self.lab, node, proctags.home_tag())
        if not frozen:
            raise ProvisionError(f"node {node}: nothing runs there to pause")
        self._paused.add(node)

    async def resume_node(self, node: str) -> None:
        target, _ = self._target(node)
        await self._on_host(target, sshhost.tagged, target, "cont", self.lab, node, proctags.home_tag())
        self._paused.discard(node)

    async def stop_node(self, node: str) -> None:
        """The supervisor records what runs and stops it all, then exits; leftovers are killed by their tags."""
        target, folder = self._target(node)
        if node in self._paused or await self._on_host(target, sshhost.supervisor_state, target, folder,
                                                       node) == "T":
            await self.resume_node(node)  # a frozen supervisor cannot answer `shutdown`
        try:
            await self._shutdown(node)
        except ProvisionError:
            pass  # not running, or hung: it records nothing and goes with the rest
        await self._forget(node)
        await self._on_host(target, sshhost.tagged, target, "kill", self.lab, node, proctags.home_tag())

    async def start_node(self, node: str) -> None:
        """Start the node's supervisor again, on the address its record holds (no-op if it answers)."""
        if await self._ping(node) is not None:
            return
        target, folder = self._target(node)
        spec = NodeSpec(self.lab, node, 0, str(self._record(node)["address"]))
        conn = await self._conn(target)
        await sshhost.tagged(conn, target, "kill", self.lab, node, proctags.home_tag())  # a hung one's leftovers
        await self._start_supervisor(conn, spec, target, folder)

    async def partition(self, node: str, peer: str | None, direction: str = "both") -> None:
        raise ProviderNotSupported("the ssh provider cannot partition nodes yet (it would change the host's "
                                   "firewall; use the L4 faults of the ztunnel instead)")

    async def heal_partition(self, node: str, peer: str | None) -> None:
        raise ProviderNotSupported("the ssh provider cannot partition nodes yet")

    # -- leftovers ----------------------------------------------------------------------------------------
    @classmethod
    async def clean(cls, lab: str | None) -> list[str]:
        removed = [f"killed {p.describe()}"
                   for p in await asyncio.to_thread(proctags.kill_tagged, lab, sshtunnel.KEEPER_NODE)]
        registry = _registry()
        for lab_name in [lab] if lab else list(registry):
            for node, record in list(registry.get(lab_name, {}).items()):
                try:
                    removed += await _clean_node(lab_name, node, record)
                except ProvisionError:
                    continue  # host unreachable: its record stays, so a later clean tries again
                registry[lab_name].pop(node, None)
                _save_registry(registry)
        return removed

    async def close(self) -> None:
        await super().close()
        await self._pool.close()


def _is_root(record: dict[str, Any]) -> bool:
    return bool(record.get("root", record.get("captureReason") == "login is root"))  # records before "root"


def _uncapture_line(record: dict[str, Any]) -> str:
    """The shell line that takes a transparent node's iptables chains and its VIP route off its host."""
    empty = capture.script(capture.CaptureSpec(node="", loopback_workloads=True))
    return shlex.join(([] if _is_root(record) else ["sudo", "-n"]) + ["sh", "-c", empty])


async def _clean_node(lab: str, node: str, record: dict[str, Any]) -> list[str]:
    """Kill a recorded node's tagged processes on its host and remove its folder."""
    target = parse_target(node, {"ssh": record["target"]})
    conn = await connect(target)
    try:
        killed = await sshhost.tagged(conn, target, "kill", lab, "", proctags.home_tag())
        if target.capture == "transparent" and not await sshhost.capture_holders(conn, target):
            await sshhost.run(conn, _uncapture_line(record), 30)  # unless another lab's node captures there now
        listed = await sshhost.run(conn, f"test -e {shlex.quote(record['folder'])}", 10)
        await sshhost.remove_tree(conn, record["folder"], record["top"])
    finally:
        await close_quietly(conn)
    found = [f"killed process {pid} on {target.where} (lab {lab}, node {n}): {cmd}" for pid, n, cmd in killed]
    if listed.exit_code == 0:
        found.append(f"folder {record['folder']} on {target.where}")
    return found
