"""Supervised processes of a node: start, restart with backoff, readiness probes, stop.

Theory of operation: each `SupervisedProcess` owns one task that loops
spawn -> wait for exit -> decide (restart policy) -> back off -> spawn again,
until `stop()` sets its stop event. The task is the only place that spawns or
reaps the process, so stop, exit and restart never race each other. Every
process runs in its own session, so signals go to its whole process group and
no grandchild outlives it.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BACKOFF_FIRST = 0.2
BACKOFF_MAX = 10.0
BACKOFF_RESET_AFTER = 10.0  # seconds of uptime after which a crash counts as the first again
STOP_GRACE = 3.0  # SIGTERM, then SIGKILL after this long
PROBE_INTERVAL = 0.1
RESTART_POLICIES = ("always", "on-failure", "never")


def _ambient_capabilities() -> int:
    """This process's ambient capability set (non-zero when an ssh node's sudo login gave it CAP_NET_ADMIN)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next((int(line.split()[1], 16) for line in f if line.startswith("CapAmb:")), 0)
    except OSError:
        return 0


def without_capabilities(argv: tuple[str, ...]) -> tuple[str, ...]:
    """`argv` run with no capabilities, when this supervisor holds ambient ones that children would inherit.

    The agents need CAP_NET_ADMIN to mark their own sockets (SO_MARK) past the capture rules; a
    workload holding it could do the same and leave the mesh unseen, so workloads go without.
    """
    if not _AMBIENT or _SETPRIV is None:
        return argv
    return (_SETPRIV, "--inh-caps=-all", "--ambient-caps=-all", "--", *argv)


_AMBIENT = _ambient_capabilities()
_SETPRIV = shutil.which("setpriv")


@dataclass(frozen=True)
class ProcessSpec:
    """The wire form of lab.providers.base.ProcessSpec (agents cannot import `lab`)."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    restart: str = "always"
    ready_tcp: tuple[str, int] | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, doc: Any) -> ProcessSpec:
        """Validate a spec from the control protocol; ValueError says what is wrong."""
        if not isinstance(doc, dict):
            raise ValueError("spec must be an object")
        name, argv = doc.get("name"), doc.get("argv")
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad process name {name!r}")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError(f"process {name}: argv must be a non-empty list of strings")
        restart = doc.get("restart") or "always"
        if restart not in RESTART_POLICIES:
            raise ValueError(f"process {name}: restart must be one of {', '.join(RESTART_POLICIES)}")
        ready = doc.get("ready_tcp")
        ready_tcp = None
        if ready:
            if not isinstance(ready, (list, tuple)) or len(ready) != 2:
                raise ValueError(f"process {name}: ready_tcp must be [host, port]")
            ready_tcp = (str(ready[0]), int(ready[1]))
        env = {str(k): str(v) for k, v in (doc.get("env") or {}).items()}
        labels = {str(k): str(v) for k, v in (doc.get("labels") or {}).items()}
        return cls(name, tuple(argv), env, restart, ready_tcp, labels)


class Backoff:
    """The delay before each restart: 0.2 s doubling to 10 s, back to the start after 10 s of uptime."""

    def __init__(self, first: float = BACKOFF_FIRST, cap: float = BACKOFF_MAX,
                 reset_after: float = BACKOFF_RESET_AFTER) -> None:
        self.first, self.cap, self.reset_after = first, cap, reset_after
        self._next = first

    def delay(self, uptime: float) -> float:
        """The delay after a run that lasted `uptime` seconds."""
        if uptime >= self.reset_after:
            self._next = self.first  # it ran long enough: this crash is a new story
        delay, self._next = self._next, min(self._next * 2, self.cap)
        return delay


async def wait_for_exit(proc: subprocess.Popen[bytes]) -> int:
    """Wait for a child to exit without blocking the event loop; reaps it and returns its exit code."""
    try:
        pidfd = os.pidfd_open(proc.pid)  # Linux 5.3+: readable once the process has exited
    except (AttributeError, OSError):
        return await asyncio.to_thread(proc.wait)
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return proc.wait()  # it has exited: this only reaps it


def signal_group(pgid: int, sig: int) -> None:
    """Send `sig` to a process group that may already be gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _clock() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class SupervisedProcess:
    """One process the node keeps running according to its restart policy."""

    def __init__(self, spec: ProcessSpec, env: dict[str, str], cwd: Path, log_path: Path,
                 on_change: Callable[[], None]) -> None:
        self.spec = spec
        self.state = "starting"
        self.pid: int | None = None
        self.restarts = 0
        self.exit_code: int | None = None
        self.started_at: float | None = None
        self.ready = False
        self._env = env
        self._cwd = cwd
        self._log_path = log_path
        self._on_change = on_change
        self._stop_requested = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        """Running or about to run again (not stopped, not finished for good)."""
        return self._task is not None and not self._task.done() and not self._stop_requested.is_set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"supervise {self.spec.name}")

    async def stop(self) -> None:
        """Stop it for good: SIGTERM to the group, SIGKILL after STOP_GRACE."""
        self._stop_requested.set()
        if self._task is not None:
            await self._task
        self.state = "stopped"
        self._on_change()

    def signal(self, sig: int) -> None:
        if self.pid is None:
            raise ValueError(f"process {self.spec.name} is not running (state {self.state})")
        signal_group(self.pid, sig)

    def status(self) -> dict[str, Any]:
        return {"name": self.spec.name, "state": self.state, "pid": self.pid, "restarts": self.restarts,
                "ready": self.ready, "exit_code": self.exit_code, "started_at": self.started_at,
                "labels": dict(self.spec.labels)}

    def _set(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self, key, value)
        self._on_change()

    def _log(self, line: str) -> None:
        with open(self._log_path, "a", encoding="utf-8") as f:
            f.write(f"[meshlab {_clock()}] {line}\n")

    async def _supervise(self) -> None:
        try:
            await self._restart_loop()
        except Exception as e:  # a bug here must not take the whole node down
            self._log(f"supervision failed: {e!r}")
            self._set(state="failed", pid=None, ready=False)

    async def _restart_loop(self) -> None:
        backoff = Backoff()
        while True:
            self._set(state="starting")
            began = time.monotonic()
            code = await self._run_once()
            if self._stop_requested.is_set():
                self._set(state="stopped")
                return
            if self.spec.restart == "never" or (self.spec.restart == "on-failure" and code == 0):
                self._set(state="exited" if code == 0 else "failed")
                return
            self._set(state="backoff")
            try:
                await asyncio.wait_for(self._stop_requested.wait(), backoff.delay(time.monotonic() - began))
            except TimeoutError:
                pass
            if self._stop_requested.is_set():
                self._set(state="stopped")
                return
            self.restarts += 1

    async def _run_once(self) -> int:
        """Spawn the process once and wait until it exits (or is stopped); returns its exit code."""
        argv = self.spec.argv
        if self.spec.labels.get("role") == "workload":
            argv = without_capabilities(argv)
        try:
            # Popen, not asyncio's subprocess: on Python 3.11 cancelling a half-created asyncio
            # subprocess can hang the loop for good; fork+exec is quick enough to do inline.
            with open(self._log_path, "ab") as log:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        env=self._env, cwd=self._cwd, start_new_session=True)
        except OSError as e:
            code = 126 if isinstance(e, PermissionError) else 127  # what a shell would say
            self._log(f"cannot start {shlex.join(argv)}: {e}")
            self._set(exit_code=code)
            return code
        self._log(f"started (pid {proc.pid}, restarts {self.restarts}): {shlex.join(argv)}")
        self._set(pid=proc.pid, started_at=time.time(), state="running", ready=self.spec.ready_tcp is None)
        probe = asyncio.create_task(self._probe(*self.spec.ready_tcp)) if self.spec.ready_tcp else None
        exited = asyncio.ensure_future(wait_for_exit(proc))
        stop = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                await self._terminate(proc.pid, exited)
        except asyncio.CancelledError:
            # The supervisor itself is going away abnormally: leave nothing behind, not even a zombie.
            signal_group(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
            raise
        finally:
            stop.cancel()
            if probe:
                probe.cancel()
        code = proc.returncode if proc.returncode is not None else -signal.SIGKILL
        # The leader is gone; anything left in its group (e.g. a daemonized child) goes with it.
        signal_group(proc.pid, signal.SIGKILL)
        self._log(describe_exit(code))
        self._set(pid=None, ready=False, exit_code=code)
        return code

    @staticmethod
    async def _terminate(pgid: int, exited: asyncio.Future[int]) -> None:
        signal_group(pgid, signal.SIGTERM)
        signal_group(pgid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
        try:
            await asyncio.wait_for(asyncio.shield(exited), STOP_GRACE)
        except TimeoutError:
            signal_group(pgid, signal.SIGKILL)
            await exited

    async def _probe(self, host: str, port: int) -> None:
        """Connect to host:port every PROBE_INTERVAL until it accepts; then the process is ready."""
        while True:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
            except (OSError, TimeoutError):
                await asyncio.sleep(PROBE_INTERVAL)
                continue
            writer.close()
            self._set(ready=True)
            return
