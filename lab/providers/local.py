"""The local provider: a node is a folder and a block of loopback addresses on this machine.

Each node runs one node supervisor (`agents.pyz node`), detached in its own
session, reached over `<lab_dir>/nodes/<node>/control.sock`. Every process it
starts carries the lab's tags, so `destroy_node` and `clean` find leftovers in
/proc even when the supervisor was SIGKILLed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lab.errors import ProviderNotSupported, ProvisionError
from lab.providers import proctags
from lab.providers.base import ExecResult, NodeInfo, NodeSpec
from lab.providers.supervised import STOP_TIMEOUT, SupervisedProvider, tail_file

START_TIMEOUT = 5.0

# Supervisors this process started, kept so they are reaped (not left as zombies) once they exit.
_spawned: dict[int, subprocess.Popen[bytes]] = {}


def _reap() -> None:
    for pid, proc in list(_spawned.items()):
        if proc.poll() is not None:
            del _spawned[pid]


def _install(src: Path, dest: Path) -> None:
    """Copy the agent zipapp into place atomically, unless it is already identical."""
    if dest.exists() and dest.read_bytes() == src.read_bytes():
        return
    # Renamed over the old file: a running supervisor keeps reading the one it opened.
    _copy_atomic(src, dest)
    dest.chmod(0o755)


def _copy_atomic(src: Path, dest: Path) -> None:
    """Copy so that a process watching `dest` never sees it half-written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class LocalProvider(SupervisedProvider):
    """Nodes as process groups on this machine, one supervisor each."""

    name = "local"
    resolver_port = 15053

    # -- paths and tags ------------------------------------------------------
    def agent_command(self, node: str) -> tuple[str, ...]:
        return (sys.executable, str(self.node_dir(node) / "agents.pyz"))

    def _tags(self, node: str) -> dict[str, str]:
        return {"MESHLAB_LAB": self.lab, "MESHLAB_NODE": node, "MESHLAB_HOME": proctags.home_tag()}

    def _supervisor_pid(self, node: str) -> int | None:
        """The pid of the node's live supervisor, from its pid file, checked against its tags."""
        try:
            pid = int((self.node_dir(node) / "supervisor.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if proctags.tags_of(pid) == (self.lab, node, proctags.home_tag()) else None

    def _require_node(self, node: str) -> Path:
        folder = self.node_dir(node)
        if not folder.is_dir():
            raise ProvisionError(f"no node {node!r} in lab {self.lab!r} (no folder {folder})")
        return folder

    # -- nodes ------------------------------------------------------------------
    async def create_node(self, spec: NodeSpec, agent_pyz: Path) -> NodeInfo:
        folder = self.node_dir(spec.name)
        for sub in ("logs", "config"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(_install, agent_pyz, folder / "agents.pyz")
        ping = await self._ping(spec.name)
        if ping is not None and ping.get("address") != spec.address:
            await self._shutdown(spec.name)  # the node moved: start it again on its new address
            ping = None
        if ping is None:
            # Leftovers of a dead or hung supervisor would hold the node's addresses and ports.
            await asyncio.to_thread(proctags.kill_tagged, self.lab, spec.name)
            ping = await self._start_supervisor(spec)
        return self._info(spec.name, "running", ping)

    async def _start_supervisor(self, spec: NodeSpec) -> dict[str, Any]:
        folder = self.node_dir(spec.name)
        sock = folder / "control.sock"
        log_path = folder / "logs" / "supervisor.log"
        sock.unlink(missing_ok=True)
        argv = [*self.agent_command(spec.name), "node", "--lab", self.lab, "--node", spec.name,
                "--dir", str(folder), "--address", spec.address, "--resolver-port", str(self.resolver_port)]
        env = {**os.environ, **self._tags(spec.name)}
        env.pop("MESHLAB_WORKLOAD", None)

        def spawn() -> subprocess.Popen[bytes]:
            with open(log_path, "ab") as log:
                return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                        cwd=folder, env=env, start_new_session=True)

        proc = await asyncio.to_thread(spawn)
        _spawned[proc.pid] = proc
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                last = (await asyncio.to_thread(tail_file, log_path, 3)).strip().replace("\n", " | ")
                raise ProvisionError(f"node {spec.name}: its supervisor exited at start (code {proc.returncode}):"
                                     f" {last or 'no output'} (log: {log_path})")
            if sock.exists():
                ping = await self._ping(spec.name)
                if ping is not None:
                    return ping
            if time.monotonic() > deadline:
                await asyncio.to_thread(proctags.kill_tagged, self.lab, spec.name)
                raise ProvisionError(f"node {spec.name}: its supervisor did not answer on {sock} within "
                                     f"{START_TIMEOUT:g}s; see {log_path}")
            await asyncio.sleep(0.05)

    async def destroy_node(self, name: str) -> None:
        pid = self._supervisor_pid(name)
        # A paused supervisor would only time out: go straight to killing by tags.
        if pid is not None and _state(pid) != "T":
            try:
                await self._shutdown(name)
            except ProvisionError:
                pass
        await self._forget(name)
        await asyncio.to_thread(proctags.kill_tagged, self.lab, name)
        _reap()
        await asyncio.to_thread(shutil.rmtree, self.node_dir(name), True)

    async def _shutdown(self, name: str) -> None:
        await self._call(name, "shutdown", timeout=STOP_TIMEOUT)
        await self._forget(name)
        pid = self._supervisor_pid(name)
        deadline = time.monotonic() + 2.0
        while pid is not None and _state(pid) not in (None, "Z") and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        _reap()

    async def node_info(self, name: str) -> NodeInfo:
        self._require_node(name)
        pid = self._supervisor_pid(name)
        if pid is None:
            return self._info(name, "stopped", None)
        if _state(pid) == "T":
            return self._info(name, "paused", None)
        ping = await self._ping(name)
        return self._info(name, "running" if ping else "unreachable", ping)

    def _info(self, name: str, state: str, ping: dict[str, Any] | None) -> NodeInfo:
        folder = self.node_dir(name)
        known = ping
        if known is None:  # the supervisor's last word on disk
            try:
                known = json.loads((folder / "supervisor.json").read_text())
            except (OSError, ValueError):
                known = {}
        details = {"dir": str(folder), "pid": known.get("pid"), "resolver": known.get("resolver"),
                   "socket": str(folder / "control.sock")}
        return NodeInfo(self.lab, name, str(known.get("address", "")), state, self.name, details)

    # -- talking to the supervisor ----------------------------------------------
    # -- files and commands ---------------------------------------------------
    async def copy_file(self, node: str, src: Path, dest: str) -> None:
        folder = self._require_node(node)
        rel = Path(dest)
        if rel.is_absolute() or ".." in rel.parts:
            raise ProvisionError(f"node {node}: copy destination must be inside the node's folder, not {dest!r}")
        target = folder / rel
        try:
            await asyncio.to_thread(_copy_atomic, src, target)
        except OSError as e:
            raise ProvisionError(f"node {node}: cannot copy {src} to {target}: {e}") from None

    async def exec(self, node: str, argv: list[str], env: dict[str, str] | None = None,
                   timeout: float = 60.0) -> ExecResult:
        folder = self._require_node(node)
        full_env = {**os.environ, **(env or {}), **self._tags(node)}
        try:
            # Popen rather than asyncio's subprocess: cancelling a half-created one can hang Python 3.11.
            proc = subprocess.Popen(argv, cwd=folder, env=full_env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:  # answer like a shell would, as docker and ssh do
            return ExecResult(126 if isinstance(e, PermissionError) else 127, "", f"{argv[0]}: {e.strerror}\n")
        try:
            out, err = await asyncio.to_thread(proc.communicate, None, timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            await asyncio.to_thread(proc.communicate)
            raise ProvisionError(f"node {node}: {shlex.join(argv)} did not finish within {timeout:g}s") from None
        except asyncio.CancelledError:
            _kill_group(proc.pid)  # the thread's communicate() then returns
            raise
        return ExecResult(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))

    # -- supervised processes ---------------------------------------------------
    async def _check_reachable(self, node: str) -> None:
        pid = self._supervisor_pid(node)
        if pid is not None and _state(pid) == "T":
            raise ProvisionError(f"node {node} is paused: its supervisor answers nothing until resumed")
        if pid is None:  # fail at once, naming why, rather than on a socket nobody serves
            self._require_node(node)
            raise ProvisionError(f"node {node} is stopped: no supervisor runs there (removing its stop_node "
                                 f"fault or `meshlab up` starts it again)")

    async def logs(self, node: str, name: str, tail: int = 100) -> str:
        path = self._require_node(node) / "logs" / f"{name}.log"
        text = await self._log_file(node, name, tail)
        if text is None:
            raise ProvisionError(f"node {node}: no log of a process named {name!r} ({path})")
        return text

    # -- node faults ----------------------------------------------------------------
    async def pause_node(self, node: str) -> None:
        self._require_node(node)
        await self._forget(node)  # a paused node answers nothing; don't keep a connection to it
        frozen = await asyncio.to_thread(proctags.freeze_tagged, self.lab, node)
        if not frozen:
            raise ProvisionError(f"node {node}: nothing runs there to pause")

    async def resume_node(self, node: str) -> None:
        self._require_node(node)
        found = await asyncio.to_thread(proctags.find_tagged, self.lab, node)
        proctags.signal_processes(found, signal.SIGCONT)

    async def stop_node(self, node: str) -> None:
        """The supervisor records what runs and stops it all, then exits; leftovers are killed by their tags."""
        self._require_node(node)
        pid = self._supervisor_pid(node)
        if pid is not None:
            if _state(pid) == "T":  # a paused node first thaws, so that its supervisor can answer
                await self.resume_node(node)
            try:
                await self._shutdown(node)
            except ProvisionError:
                pass  # a hung supervisor records nothing; it goes with the rest
        await self._forget(node)
        await asyncio.to_thread(proctags.kill_tagged, self.lab, node)
        _reap()

    async def start_node(self, node: str) -> None:
        """Start the node's supervisor again on the address it had (from its `supervisor.json`)."""
        folder = self._require_node(node)
        pid = self._supervisor_pid(node)
        if pid is not None and _state(pid) != "T" and await self._ping(node) is not None:
            return  # it runs
        try:
            address = json.loads((folder / "supervisor.json").read_text())["address"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ProvisionError(f"node {node}: cannot start it again: its address is unknown (no readable "
                                 f"{folder / 'supervisor.json'}); `meshlab up` the lab") from None
        await asyncio.to_thread(proctags.kill_tagged, self.lab, node)  # a hung supervisor's leftovers
        await self._start_supervisor(NodeSpec(self.lab, node, 0, str(address)))

    async def partition(self, node: str, peer: str | None, direction: str = "both") -> None:
        raise ProviderNotSupported("the local provider cannot partition nodes yet: on loopback a partition "
                                   "needs the mesh proxies (ztunnel) to drop the traffic, which come later")

    async def heal_partition(self, node: str, peer: str | None) -> None:
        raise ProviderNotSupported("the local provider cannot partition nodes yet (it needs the mesh proxies)")

    # -- leftovers ----------------------------------------------------------------------
    @classmethod
    async def clean(cls, lab: str | None) -> list[str]:
        killed = await asyncio.to_thread(proctags.kill_tagged, lab)
        _reap()
        return [f"killed {p.describe()}" for p in killed]



def _state(pid: int) -> str | None:
    """The one-letter /proc state of a process ('T' when stopped), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2:].split()[0].decode()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
