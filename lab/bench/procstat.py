"""CPU seconds and peak RSS of processes, read from /proc (the bench's proxies all run on this host)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcSample:
    """One process at one moment: CPU seconds so far, RSS now and its peak (VmHWM)."""

    pid: int
    cpu_s: float
    rss_bytes: int
    peak_rss_bytes: int


def sample(pid: int) -> ProcSample | None:
    """The process's counters, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, IndexError):
        return None
    kb = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            kb[key] = int(value.split()[0]) * 1024
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return ProcSample(pid, cpu, kb.get("VmRSS", 0), kb.get("VmHWM", kb.get("VmRSS", 0)))


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system) of all `pids` together; processes that are gone count 0."""
    return sum(s.cpu_s for s in map(sample, pids) if s is not None)
