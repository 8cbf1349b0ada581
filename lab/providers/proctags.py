"""Finds and kills the processes a lab started, by the tags in their environment.

Every process of a lab carries `MESHLAB_LAB=<lab>`, `MESHLAB_NODE=<node>` and `MESHLAB_HOME=<home>`
(docs/architecture.md). Reading them from `/proc/<pid>/environ` needs no state,
so `down` and `clean` work after the lab's own processes were SIGKILLed.
Blocking (it sleeps while processes exit): call it from a thread in async code.
"""

from __future__ import annotations

import os
import shlex
import signal
import time
from typing import NamedTuple

from lab.state import meshlab_home

PROC = "/proc"


class TaggedProcess(NamedTuple):
    pid: int
    lab: str
    node: str
    cmdline: tuple[str, ...]  # its argv
    start_ticks: int = 0  # start time from /proc/<pid>/stat: tells a reused pid apart

    def describe(self) -> str:
        return f"process {self.pid} (lab {self.lab}, node {self.node or '-'}): {shlex.join(self.cmdline)}"


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # gone, or another user's process
        return None


def _start_ticks(pid: int) -> int | None:
    """Start time of a live process; None if it is gone or a zombie (a zombie is as good as gone)."""
    raw = _read(f"{PROC}/{pid}/stat")
    if raw is None:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()
    if not fields or fields[0] == b"Z":
        return None
    return int(fields[19])  # field 22 of stat, the 20th after the state


def home_tag() -> str:
    """The MESHLAB_HOME a lab belongs to: labs of the same name under two homes are two labs."""
    return str(meshlab_home().resolve())


def tags_of(pid: int) -> tuple[str, str, str] | None:
    """(lab, node, home) of a tagged process, None for an untagged one."""
    raw = _read(f"{PROC}/{pid}/environ")
    if not raw:
        return None
    lab = node = home = ""
    for entry in raw.split(b"\0"):
        if entry.startswith(b"MESHLAB_LAB="):
            lab = entry[12:].decode(errors="replace")
        elif entry.startswith(b"MESHLAB_NODE="):
            node = entry[13:].decode(errors="replace")
        elif entry.startswith(b"MESHLAB_HOME="):
            home = entry[13:].decode(errors="replace")
    return (lab, node, home) if lab else None


def find_tagged(lab: str | None = None, node: str | None = None) -> list[TaggedProcess]:
    """Processes of this MESHLAB_HOME tagged with `lab` (any lab if None) and `node` (any node if None).

    Never this process.
    """
    found = []
    me = os.getpid()
    home = home_tag()
    for entry in os.listdir(PROC):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        tags = tags_of(pid)
        if (tags is None or tags[2] != home or (lab is not None and tags[0] != lab)
                or (node is not None and tags[1] != node)):
            continue
        start = _start_ticks(pid)
        if start is None:
            continue
        raw = (_read(f"{PROC}/{pid}/cmdline") or b"").rstrip(b"\0")
        cmdline = tuple(arg.decode(errors="replace") for arg in raw.split(b"\0")) if raw else ()
        found.append(TaggedProcess(pid, tags[0], tags[1], cmdline, start))
    return found


def is_alive(process: TaggedProcess) -> bool:
    return _start_ticks(process.pid) == process.start_ticks


def signal_processes(processes: list[TaggedProcess], sig: int) -> None:
    for p in processes:
        if is_alive(p):
            try:
                os.kill(p.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def kill_tagged(lab: str | None = None, node: str | None = None, grace: float = 2.0) -> list[TaggedProcess]:
    """SIGTERM every tagged process, SIGKILL what is left after `grace` seconds; returns what was found."""
    found = freeze_tagged(lab, node)
    signal_processes(found, signal.SIGTERM)
    signal_processes(found, signal.SIGCONT)  # the SIGTERM is acted on once continued
    _wait_gone(found, grace)
    left = [p for p in found if is_alive(p)]
    if left:
        signal_processes(left, signal.SIGKILL)
        _wait_gone(left, 2.0)
    return found


def freeze_tagged(lab: str | None = None, node: str | None = None) -> list[TaggedProcess]:
    """SIGSTOP every tagged process, rescanning until no new one appears; returns them all."""
    # Frozen first, a supervisor cannot restart a workload while its node is being killed.
    found: dict[int, TaggedProcess] = {}
    for _ in range(10):
        new = [p for p in find_tagged(lab, node) if p.pid not in found]
        if not new:
            break
        signal_processes(new, signal.SIGSTOP)
        found.update((p.pid, p) for p in new)
    return list(found.values())


def _wait_gone(processes: list[TaggedProcess], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(is_alive(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.02)
