"""Supervised processes in-process: backoff, stop escalation, process groups, spawn failures."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.node import processes
from agents.node.procfs import group_usage
from agents.node.processes import Backoff, ProcessSpec, SupervisedProcess, describe_exit

TIMEOUT = 20.0


@pytest.mark.parametrize(("uptimes", "delays"), [
    ([0, 0, 0, 0, 0, 0, 0, 0], [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10, 10]),
    ([0, 0, 0, 11, 0], [0.2, 0.4, 0.8, 0.2, 0.4]),  # 10 s of uptime: back to the first delay
    ([9.9, 9.9], [0.2, 0.4]),
    ([10, 10, 10], [0.2, 0.2, 0.2]),
])
def test_backoff(uptimes: list[float], delays: list[float]) -> None:
    backoff = Backoff()
    assert [backoff.delay(u) for u in uptimes] == pytest.approx(delays)


@pytest.mark.parametrize(("doc", "message"), [
    ({"argv": ["x"]}, "bad process name"),
    ({"name": "../x", "argv": ["x"]}, "bad process name"),
    ({"name": "a", "argv": []}, "argv"),
    ({"name": "a", "argv": "sleep 1"}, "argv"),
    ({"name": "a", "argv": ["x"], "restart": "sometimes"}, "restart"),
    ({"name": "a", "argv": ["x"], "ready_tcp": ["127.0.0.1"]}, "ready_tcp"),
    ([], "object"),
])
def test_bad_specs_are_refused(doc: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProcessSpec.from_json(doc)


def test_spec_from_json() -> None:
    spec = ProcessSpec.from_json({"name": "a", "argv": ["sleep", "1"], "env": {"A": 1}, "restart": None,
                                  "ready_tcp": ["127.0.0.1", "80"], "labels": {"role": "workload"}})
    assert spec == ProcessSpec("a", ("sleep", "1"), {"A": "1"}, "always", ("127.0.0.1", 80), {"role": "workload"})


def test_describe_exit() -> None:
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-9) == "killed by signal 9 (SIGKILL)"


async def until(check, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + TIMEOUT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def supervised(tmp_path: Path, *argv: str, restart: str = "always") -> SupervisedProcess:
    spec = ProcessSpec("p", tuple(argv), restart=restart)
    return SupervisedProcess(spec, dict(os.environ), tmp_path, tmp_path / "p.log", lambda: None)


async def test_stop_escalates_to_sigkill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes, "STOP_GRACE", 0.3)
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    process = supervised(tmp_path, sys.executable, "-c", script)
    process.start()
    log = tmp_path / "p.log"
    await until(lambda: log.exists() and "up" in log.read_text().splitlines(), "the process up")
    await process.stop()
    assert (process.state, process.exit_code, process.pid) == ("stopped", -9, None)


async def test_stop_takes_the_whole_process_group(tmp_path: Path) -> None:
    process = supervised(tmp_path, "sh", "-c", "sleep 60 & echo $! > child.pid; wait")
    process.start()
    await until(lambda: (tmp_path / "child.pid").exists() and (tmp_path / "child.pid").read_text().strip(),
                "the grandchild started")
    child = int((tmp_path / "child.pid").read_text())
    await process.stop()
    await until(lambda: not Path(f"/proc/{child}").exists() or _zombie(child), "the grandchild gone")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


async def test_a_command_that_cannot_start_fails_like_in_a_shell(tmp_path: Path) -> None:
    process = supervised(tmp_path, "/no/such/program", restart="never")
    process.start()
    await until(lambda: process.state == "failed", "failed")
    assert process.exit_code == 127
    assert "cannot start /no/such/program" in (tmp_path / "p.log").read_text()


async def test_stop_during_backoff_is_prompt(tmp_path: Path) -> None:
    process = supervised(tmp_path, sys.executable, "-c", "raise SystemExit(2)")
    process.start()
    await until(lambda: process.state == "backoff" and process.restarts >= 1, "a second backoff")
    await asyncio.wait_for(process.stop(), TIMEOUT)
    assert (process.state, process.exit_code) == ("stopped", 2)


def test_group_usage_sums_the_whole_process_group() -> None:
    leader = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(_group_members(leader.pid)) < 3:
            assert time.monotonic() < deadline, "the group never had 3 members"
            time.sleep(0.02)
        usage = group_usage([leader.pid, 999_999_999])
        assert set(usage) == {leader.pid}
        alone = _rss(leader.pid)
        assert usage[leader.pid].rss_bytes > alone > 0  # the two sleeps count too
        assert usage[leader.pid].cpu_seconds >= 0
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()


def _group_members(pgid: int) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2] == str(pgid):
                found.append(pid)
        except OSError:
            pass
    return found


def _rss(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024
