"""The provider conformance suite: what every Provider must do, run against each implementation.

Like trio's `check_two_way_stream`: a test module subclasses `ProviderConformance`
and supplies the fixtures `provider` (a fresh provider for a unique lab,
cleaned up afterwards), `agent_pyz`, `node_address` and `workload_address`
(tests/providers/conftest.py has the last three), and may override the hooks
(`crash`, `leftovers`, `leftovers_of_exec`, `node_processes`, `colour_of`, `python`). Tests that need processes that
really run (output, readiness gating, exec, the resolver) are in
`RealProcessConformance`, which every provider but the in-memory fake runs.

Test workloads are small `python -c` scripts steered by files the test copies
into the node's folder (their working directory), so the suite works the same
on a node that is another machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

from lab.errors import ProvisionError
from lab.providers import proctags
from lab.providers.base import NodeSpec, ProcessSpec, ProcessStatus, Provider

T = TypeVar("T")
TIMEOUT = 20.0  # generous: a 2-core machine under load

# A test workload: says hello, optionally listens (once a gate file exists), exits on a crash file.
WORKLOAD_SCRIPT = r"""
import os, socket, sys, time
name = os.environ["MESHLAB_WORKLOAD"]
print(f"hello from {name} on {os.environ['MESHLAB_NODE']} colour={os.environ.get('COLOUR', '')}", flush=True)
if os.environ.get("TEST_EXIT"):
    time.sleep(0.05)
    sys.exit(int(os.environ["TEST_EXIT"]))
listen, gate, server = os.environ.get("TEST_LISTEN"), os.environ.get("TEST_GATE"), None
while True:
    if listen and server is None and (not gate or os.path.exists(gate)):
        host, port = listen.rsplit(":", 1)
        server = socket.create_server((host, int(port)))
    if os.path.exists(f"crash-{name}"):
        with open(f"crash-{name}") as f:
            code = int(f.read() or 1)
        os.remove(f"crash-{name}")
        sys.exit(code)
    time.sleep(0.05)
"""


async def eventually(check: Callable[[], Awaitable[T]], what: str, timeout: float = TIMEOUT) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}; last seen: {last!r}")


async def status_of(provider: Provider, node: str, name: str) -> ProcessStatus:
    found = [p for p in await provider.list_processes(node) if p.name == name]
    assert found, f"no process {name} on {node}"
    return found[0]


class ProviderConformance:
    """Mix-in test class: the behaviour every provider must show."""

    python: ClassVar[str] = sys.executable  # the interpreter on a node

    # -- hooks ----------------------------------------------------------------
    async def crash(self, provider: Provider, node: str, name: str, exit_code: int) -> None:
        """Make a running test workload exit with `exit_code`."""
        with tempfile.TemporaryDirectory() as tmp:
            marker = Path(tmp) / "crash"
            marker.write_text(str(exit_code))
            await provider.copy_file(node, marker, f"crash-{name}")

    async def leftovers(self, provider: Provider) -> list[str]:
        """What of the provider's lab still exists (processes, containers, records)."""
        return []

    async def leftovers_of_exec(self, provider: Provider) -> list[str]:
        """Processes of finished `exec` calls still running (none may be)."""
        return []

    async def node_processes(self, provider: Provider, node: str) -> list[str]:
        """Every process of the node that still runs (its supervisor included), found without asking it."""
        return [p.describe() for p in await asyncio.to_thread(proctags.find_tagged, provider.lab, node)]

    async def colour_of(self, provider: Provider, node: str, name: str) -> str | None:
        """The COLOUR the last run of a test workload had in its environment (its hello line says)."""
        hellos = [line for line in (await provider.logs(node, name, tail=50)).splitlines() if "hello from" in line]
        return hellos[-1].rsplit("colour=", 1)[1] if hellos else None

    async def has_colour(self, provider: Provider, node: str, name: str, colour: str) -> None:
        async def check() -> str | None:
            seen = await self.colour_of(provider, node, name)
            return seen if seen == colour else None

        await eventually(check, f"{name} started with COLOUR={colour}")

    def workload(self, name: str, *, listen: str | None = None, gate: str | None = None,
                 exit_code: int | None = None, ready_tcp: tuple[str, int] | None = None,
                 restart: str = "always", **env: str) -> ProcessSpec:
        values = dict(env)
        if listen:
            values["TEST_LISTEN"] = listen
        if gate:
            values["TEST_GATE"] = gate
        if exit_code is not None:
            values["TEST_EXIT"] = str(exit_code)
        return ProcessSpec(name=name, argv=(self.python, "-c", WORKLOAD_SCRIPT), env=values,
                           restart=restart, ready_tcp=ready_tcp, labels={"role": "test"})  # type: ignore[arg-type]

    @pytest.fixture
    async def node(self, provider: Provider, agent_pyz: Path, node_address: str) -> str:
        await provider.create_node(NodeSpec(provider.lab, "node-1", 0, node_address), agent_pyz)
        return "node-1"

    async def running(self, provider: Provider, node: str, name: str, ready: bool = True) -> ProcessStatus:
        async def check() -> ProcessStatus | None:
            st = await status_of(provider, node, name)
            return st if st.state == "running" and st.pid and (st.ready or not ready) else None

        return await eventually(check, f"{name} running" + (" and ready" if ready else ""))

    # -- nodes ------------------------------------------------------------------
    async def test_create_node_reports_it_running(self, provider: Provider, node: str,
                                                  node_address: str) -> None:
        info = await provider.node_info(node)
        assert (info.lab, info.name, info.state, info.provider) == (provider.lab, node, "running", provider.name)
        assert info.address == node_address
        assert await provider.list_processes(node) == []

    async def test_create_node_again_adopts_it(self, provider: Provider, node: str, agent_pyz: Path,
                                               node_address: str) -> None:
        await provider.start_process(node, self.workload("w1"))
        before = await self.running(provider, node, "w1")
        info = await provider.create_node(NodeSpec(provider.lab, node, 0, node_address), agent_pyz)
        assert info.state == "running"
        after = await status_of(provider, node, "w1")
        assert (after.pid, after.restarts, after.state) == (before.pid, 0, "running")

    async def test_destroy_node_removes_everything(self, provider: Provider, node: str) -> None:
        await provider.start_process(node, self.workload("w1"))
        await self.running(provider, node, "w1")
        await provider.destroy_node(node)
        assert await self.leftovers(provider) == []
        with pytest.raises(ProvisionError):
            await provider.node_info(node)
        await provider.destroy_node(node)  # already gone: no error

    # -- supervised processes -------------------------------------------------------
    async def test_start_list_stop(self, provider: Provider, node: str) -> None:
        await provider.start_process(node, self.workload("w1"))
        st = await self.running(provider, node, "w1")
        assert (st.restarts, st.exit_code, st.labels) == (0, None, {"role": "test"})
        assert st.started_at is not None
        await provider.stop_process(node, "w1")
        assert await provider.list_processes(node) == []  # stopped and forgotten
        await provider.start_process(node, self.workload("w1"))
        assert (await self.running(provider, node, "w1")).pid != st.pid

    async def test_stop_unknown_process_is_an_error(self, provider: Provider, node: str) -> None:
        with pytest.raises(ProvisionError, match="nope"):
            await provider.stop_process(node, "nope")

    async def test_start_is_idempotent_and_restarts_on_a_changed_spec(self, provider: Provider, node: str) -> None:
        spec = self.workload("w1")
        await provider.start_process(node, spec)
        first = await self.running(provider, node, "w1")
        await provider.start_process(node, spec)
        assert (await status_of(provider, node, "w1")).pid == first.pid
        await provider.start_process(node, self.workload("w1", COLOUR="blue"))
        second = await self.running(provider, node, "w1")
        assert second.pid != first.pid

    async def test_crashed_process_is_restarted_with_exit_code_recorded(self, provider: Provider,
                                                                       node: str) -> None:
        await provider.start_process(node, self.workload("w1"))
        first = await self.running(provider, node, "w1")
        await self.crash(provider, node, "w1", 3)

        async def restarted() -> ProcessStatus | None:
            st = await status_of(provider, node, "w1")
            return st if st.restarts == 1 and st.state == "running" and st.pid else None

        st = await eventually(restarted, "w1 restarted once")
        assert st.exit_code == 3
        assert st.pid != first.pid

    async def test_restart_never_leaves_a_failed_process(self, provider: Provider, node: str) -> None:
        await provider.start_process(node, self.workload("w1", restart="never"))
        await self.running(provider, node, "w1")
        await self.crash(provider, node, "w1", 5)

        async def failed() -> ProcessStatus | None:
            st = await status_of(provider, node, "w1")
            return st if st.state == "failed" else None

        st = await eventually(failed, "w1 failed")
        assert (st.exit_code, st.restarts, st.pid, st.ready) == (5, 0, None, False)

    async def test_on_failure_does_not_restart_a_clean_exit(self, provider: Provider, node: str) -> None:
        await provider.start_process(node, self.workload("w1", restart="on-failure"))
        await self.running(provider, node, "w1")
        await self.crash(provider, node, "w1", 0)

        async def exited() -> ProcessStatus | None:
            st = await status_of(provider, node, "w1")
            return st if st.state == "exited" else None

        st = await eventually(exited, "w1 exited")
        assert (st.exit_code, st.restarts) == (0, 0)

    async def test_process_without_ready_tcp_is_ready_once_running(self, provider: Provider, node: str) -> None:
        await provider.start_process(node, self.workload("w1"))
        assert (await self.running(provider, node, "w1", ready=True)).ready

    async def test_copy_file_refuses_to_leave_the_node_folder(self, provider: Provider, node: str,
                                                              tmp_path: Path) -> None:
        (tmp_path / "f").write_text("x")
        with pytest.raises(ProvisionError):
            await provider.copy_file(node, tmp_path / "f", "../escape")

    async def test_resource_usage_reports_running_processes(self, provider: Provider, node: str) -> None:
        await provider.start_process(node, self.workload("w1"))
        st = await self.running(provider, node, "w1")
        usage = await provider.resource_usage(node)
        assert set(usage) == {"w1"}
        assert usage["w1"].pid == st.pid
        assert usage["w1"].rss_bytes > 0
        assert usage["w1"].cpu_seconds >= 0

    # -- node faults ---------------------------------------------------------------------------
    async def test_pause_and_resume(self, provider: Provider, node: str) -> None:
        await provider.start_process(node, self.workload("w1"))
        before = await self.running(provider, node, "w1")
        await provider.pause_node(node)
        assert (await provider.node_info(node)).state == "paused"
        with pytest.raises(ProvisionError, match="paused"):
            await provider.list_processes(node)
        await provider.resume_node(node)
        assert (await provider.node_info(node)).state == "running"
        after = await status_of(provider, node, "w1")
        assert (after.pid, after.restarts, after.state) == (before.pid, 0, "running")

    async def test_stop_and_start_node_restores_what_ran(self, provider: Provider, node: str,
                                                         workload_address: str) -> None:
        # The current spec counts (w1 was changed after its start), not the first one.
        await provider.start_process(node, self.workload("w1", COLOUR="blue"))
        await provider.start_process(node, self.workload("w1", COLOUR="green"))
        server = self.workload("server", listen=f"{workload_address}:18090", ready_tcp=(workload_address, 18090))
        agent = dataclasses.replace(self.workload("agent"), labels={"role": "ztunnel"})
        for spec in (server, agent, self.workload("bounded", restart="never")):
            await provider.start_process(node, spec)
        before = {name: await self.running(provider, node, name) for name in ("w1", "server", "agent", "bounded")}

        await provider.stop_node(node)
        assert (await provider.node_info(node)).state == "stopped"
        assert await self.node_processes(provider, node) == []
        with pytest.raises(ProvisionError):
            await provider.list_processes(node)
        await provider.stop_node(node)  # stopped already: no error

        await provider.start_node(node)
        assert (await provider.node_info(node)).state == "running"
        assert await provider.list_processes(node) == []  # nothing comes back before it is asked to
        assert await provider.restore_processes(node, ["ztunnel"]) == ["agent"]
        assert sorted(await provider.restore_processes(node)) == ["server", "w1"]  # not the restart=never run
        assert await provider.restore_processes(node) == []
        for name in ("w1", "server", "agent"):
            after = await self.running(provider, node, name)  # `server` binds its workload address again
            # Not the pid: a container's pid namespace starts again from the same numbers.
            assert after.started_at > before[name].started_at and after.labels == before[name].labels
        assert {p.name for p in await provider.list_processes(node)} == {"w1", "server", "agent"}
        await self.has_colour(provider, node, "w1", "green")
        await provider.start_node(node)  # running: nothing happens
        assert (await status_of(provider, node, "w1")).restarts == 0

    async def test_a_process_started_while_stopped_work_is_pending_is_not_restored_twice(
            self, provider: Provider, node: str) -> None:
        await provider.start_process(node, self.workload("w1", COLOUR="blue"))
        await provider.start_process(node, self.workload("w2"))
        await self.running(provider, node, "w1")
        await self.running(provider, node, "w2")
        await provider.stop_node(node)
        await provider.start_node(node)
        # Started by request (as `meshlab up` would) before the restore: that spec wins; w2 was removed.
        await provider.start_process(node, self.workload("w1", COLOUR="red"))
        await provider.start_process(node, self.workload("w2"))
        await provider.stop_process(node, "w2")
        assert await provider.restore_processes(node) == []
        await self.running(provider, node, "w1")
        await self.has_colour(provider, node, "w1", "red")

    # -- leftovers -----------------------------------------------------------------------------------
    async def test_clean_removes_everything_of_the_lab(self, provider: Provider, node: str) -> None:
        await provider.start_process(node, self.workload("w1"))
        await self.running(provider, node, "w1")
        removed = await type(provider).clean(provider.lab)
        assert removed
        assert await self.leftovers(provider) == []
        assert await type(provider).clean(provider.lab) == []


def _stamp(line: str) -> float:
    """Seconds of a supervisor log line's `[meshlab YYYY-mm-dd HH:MM:SS.mmm]` stamp (within a day)."""
    match = re.match(r"\[meshlab \S+ (\d+):(\d+):(\d+\.\d+)\]", line)
    assert match, line
    h, m, s = match.groups()
    return int(h) * 3600 + int(m) * 60 + float(s)


class RealProcessConformance(ProviderConformance):
    """The part of the suite that needs processes that really run (every provider but the fake)."""

    async def test_crash_loop_backs_off(self, provider: Provider, node: str) -> None:
        await provider.start_process(node, self.workload("w1", exit_code=7))

        async def crashed_thrice() -> ProcessStatus | None:
            st = await status_of(provider, node, "w1")
            return st if st.restarts >= 3 else None

        st = await eventually(crashed_thrice, "w1 restarted 3 times")
        assert st.exit_code == 7
        assert st.state in ("starting", "running", "backoff")
        # Each pause before a restart is at least the backoff delay: 0.2 s, doubling.
        log = await provider.logs(node, "w1", tail=1000)
        stamps = [(kind, _stamp(line)) for line in log.splitlines()
                  for kind in ("started", "exited") if re.match(rf"\[meshlab [^]]+\] {kind}", line)]
        pauses = [b[1] - a[1] for a, b in zip(stamps, stamps[1:]) if (a[0], b[0]) == ("exited", "started")]
        assert len(pauses) >= 3, log
        for i, pause in enumerate(pauses[:3]):
            assert pause >= 0.2 * 2 ** i * 0.9, (pauses, log)

    async def test_ready_tcp_gates_readiness(self, provider: Provider, node: str,
                                             workload_address: str) -> None:
        spec = self.workload("w1", listen=f"{workload_address}:18080", gate="open-w1",
                             ready_tcp=(workload_address, 18080))
        await provider.start_process(node, spec)
        st = await self.running(provider, node, "w1", ready=False)
        await asyncio.sleep(0.3)  # a few probe rounds: nothing listens yet
        assert not (await status_of(provider, node, "w1")).ready
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "gate").write_text("")
            await provider.copy_file(node, Path(tmp) / "gate", "open-w1")
        ready = await self.running(provider, node, "w1", ready=True)
        assert ready.pid == st.pid

    async def test_logs_hold_the_output_across_restarts(self, provider: Provider, node: str) -> None:
        await provider.start_process(node, self.workload("w1"))
        await self.running(provider, node, "w1")
        await self.crash(provider, node, "w1", 3)

        async def two_hellos() -> str | None:
            text = await provider.logs(node, "w1")
            return text if text.count("hello from w1 on node-1") == 2 else None

        text = await eventually(two_hellos, "two hellos in the log")
        assert "exited with code 3" in text
        assert len((await provider.logs(node, "w1", tail=2)).splitlines()) == 2

    # -- commands, files, config ------------------------------------------------------------

    async def test_exec_runs_a_command_on_the_node(self, provider: Provider, node: str) -> None:
        script = ("import os, sys; print(os.environ['MESHLAB_NODE'], os.environ['GREETING']); "
                  "print(open('hello.txt').read(), file=sys.stderr); sys.exit(4)")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "hello.txt").write_text("copied")
            await provider.copy_file(node, Path(tmp) / "hello.txt", "hello.txt")
        result = await provider.exec(node, [self.python, "-c", script], env={"GREETING": "hi"})
        assert (result.exit_code, result.stdout, result.stderr) == (4, "node-1 hi\n", "copied\n")
        missing = await provider.exec(node, ["no-such-command-meshlab"])
        assert missing.exit_code == 127

    async def test_exec_that_overruns_its_timeout_is_killed(self, provider: Provider, node: str) -> None:
        script = "import time; print('sleeping', flush=True); time.sleep(60)"
        with pytest.raises(ProvisionError, match="did not finish within 0.5s"):
            await provider.exec(node, [self.python, "-c", script], timeout=0.5)
        assert await self.leftovers_of_exec(provider) == []

    async def test_push_config_reaches_the_resolver(self, provider: Provider, node: str,
                                                    node_address: str) -> None:
        table = {"services": [{"name": "details", "namespace": "shop",
                               "ports": [{"name": "http", "port": 9080, "targetPort": 19080, "protocol": "http"}],
                               "endpoints": [{"workload": "details-v1", "node": node, "address": "127.0.0.9",
                                              "labels": {"app": "details"}}]}]}
        await provider.push_config(node, "resolver", table)
        query = ("import json, urllib.request; print(urllib.request.urlopen("
                 f"'http://{node_address}:15053/resolve?service=details.shop&port=9080', timeout=5).read().decode())")
        result = await provider.exec(node, [self.python, "-c", query], timeout=20)
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout) == {"address": "127.0.0.9", "port": 19080, "via": "direct",
                                             "workload": "details-v1"}
