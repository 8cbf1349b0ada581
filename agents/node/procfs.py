"""Resource use of a process group, read from /proc (Linux only; elsewhere it reports nothing)."""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Usage:
    pid: int
    rss_bytes: int
    cpu_seconds: float

    def to_json(self) -> dict[str, float | int]:
        return {"pid": self.pid, "rss_bytes": self.rss_bytes, "cpu_seconds": round(self.cpu_seconds, 3)}


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3, the state, comes first)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("latin-1")
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces and ')'.
    return raw[raw.rfind(")") + 2:].split()


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0  # a zombie or kernel thread has no VmRSS line


def _cpu_seconds(fields: list[str]) -> float:
    # utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the state field.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def group_usage(leaders: list[int]) -> dict[int, Usage]:
    """RSS and CPU per process group led by each of `leaders` (each workload runs in its own session).

    One pass over /proc, so asking for every workload of a node costs one scan.
    """
    wanted = {str(pid): pid for pid in leaders}
    totals: dict[int, list[float]] = {}
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        pids = []
    for pid in pids:
        fields = _stat_fields(int(pid))
        # Field 5, the process group, is index 2 after the state field.
        if fields is None or len(fields) < 13 or fields[2] not in wanted:
            continue
        total = totals.setdefault(wanted[fields[2]], [0, 0.0])
        total[0] += _rss_bytes(int(pid))
        total[1] += _cpu_seconds(fields)
    return {leader: Usage(leader, int(rss), cpu) for leader, (rss, cpu) in totals.items()}
