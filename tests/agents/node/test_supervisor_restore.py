"""What a supervisor records when it shuts down, and the `restore` op that brings it back (stop_node)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from agents.node.supervisor import NodeSupervisor

SLEEPER = ["sleep", "30"]


def spec(name: str, role: str = "workload", restart: str = "always", **env: str) -> dict:
    return {"name": name, "argv": SLEEPER, "env": env, "restart": restart, "labels": {"role": role}}


def node(folder: Path) -> NodeSupervisor:
    for sub in ("logs", "config"):
        (folder / sub).mkdir(exist_ok=True)
    return NodeSupervisor("lab-x", "node-1", folder, "127.0.0.1", resolver_port=0)


async def until(check, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def ok(supervisor: NodeSupervisor, request: dict) -> dict:
    answer = await supervisor.handle(request)
    assert answer["ok"], answer
    return answer


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_shutdown_records_what_it_kept_running_and_restore_brings_it_back(tmp_path: Path) -> None:
    first = node(tmp_path)
    await ok(first, {"op": "start", "spec": spec("ztunnel", role="ztunnel")})
    await ok(first, {"op": "start", "spec": spec("app", COLOUR="blue")})
    await ok(first, {"op": "restart", "name": "app", "env": {"MESH_SIDECAR": "127.0.0.9:15001"}})
    await ok(first, {"op": "start", "spec": spec("load-1", restart="never")})  # a bounded run
    await ok(first, {"op": "start", "spec": {**spec("done"), "argv": ["true"], "restart": "on-failure"}})
    await until(lambda: first.processes["done"].state == "exited", "done exited")
    pids = [p.pid for p in first.processes.values() if p.pid]
    await ok(first, {"op": "shutdown"})
    assert not any(alive(pid) for pid in pids)
    recorded = json.loads((tmp_path / "restore.json").read_text())
    by_name = {p["name"]: p for p in recorded["processes"]}
    assert set(by_name) == {"ztunnel", "app"}  # not the bounded run, not what finished for good
    assert by_name["app"]["env"] == {"COLOUR": "blue", "MESH_SIDECAR": "127.0.0.9:15001"}  # its current spec

    second = node(tmp_path)
    second._load_restore()
    try:
        assert (await ok(second, {"op": "restore", "roles": ["ztunnel"]}))["restored"] == ["ztunnel"]
        assert [p["name"] for p in json.loads((tmp_path / "restore.json").read_text())["processes"]] == ["app"]
        answer = await ok(second, {"op": "restore"})
        assert (answer["restored"], answer["skipped"], answer["pending"]) == (["app"], [], [])
        assert not (tmp_path / "restore.json").exists()
        assert second.processes["app"].spec.env == {"COLOUR": "blue", "MESH_SIDECAR": "127.0.0.9:15001"}
        await until(lambda: all(p.pid for p in second.processes.values()), "restored processes running")
        assert (await ok(second, {"op": "restore"}))["restored"] == []
    finally:
        await second.handle({"op": "shutdown"})


async def test_a_start_or_stop_by_request_supersedes_the_record(tmp_path: Path) -> None:
    first = node(tmp_path)
    for name in ("a", "b", "c"):
        await ok(first, {"op": "start", "spec": spec(name)})
    await ok(first, {"op": "shutdown"})
    second = node(tmp_path)
    second._load_restore()
    try:
        await ok(second, {"op": "start", "spec": spec("a", COLOUR="red")})
        await ok(second, {"op": "start", "spec": spec("b")})
        await ok(second, {"op": "stop", "name": "b"})
        assert (await ok(second, {"op": "restore"}))["restored"] == ["c"]
        assert second.processes["a"].spec.env == {"COLOUR": "red"}
        assert "b" not in second.processes
    finally:
        await second.handle({"op": "shutdown"})


async def test_a_second_shutdown_before_the_restore_keeps_the_record(tmp_path: Path) -> None:
    first = node(tmp_path)
    await ok(first, {"op": "start", "spec": spec("ztunnel", role="ztunnel")})
    await ok(first, {"op": "start", "spec": spec("app")})
    await ok(first, {"op": "shutdown"})
    second = node(tmp_path)
    second._load_restore()
    await ok(second, {"op": "restore", "roles": ["ztunnel"]})
    await ok(second, {"op": "shutdown"})  # stopped again before the rest came back
    names = {p["name"] for p in json.loads((tmp_path / "restore.json").read_text())["processes"]}
    assert names == {"ztunnel", "app"}


async def test_sigterm_records_too(tmp_path: Path) -> None:
    supervisor = node(tmp_path)
    running = asyncio.create_task(supervisor.run())
    await until(lambda: (tmp_path / "control.sock").exists(), "the control socket")
    await ok(supervisor, {"op": "start", "spec": spec("app")})
    supervisor._shutdown.set()  # what the SIGTERM handler does (docker stop)
    await asyncio.wait_for(running, 15)
    assert [p["name"] for p in json.loads((tmp_path / "restore.json").read_text())["processes"]] == ["app"]


@pytest.mark.parametrize("roles", ["ztunnel", [1]])
async def test_bad_roles_are_an_error(tmp_path: Path, roles: object) -> None:
    supervisor = node(tmp_path)
    answer = await supervisor.handle({"op": "restore", "roles": roles})
    assert answer == {"ok": False, "error": "restore: roles must be a list of role names"}


async def test_a_damaged_record_is_skipped_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "restore.json").write_text(json.dumps({"processes": [{"name": "bad", "argv": []}, spec("good")]}))
    supervisor = node(tmp_path)
    supervisor._load_restore()
    try:
        answer = await ok(supervisor, {"op": "restore"})
        assert (answer["restored"], answer["skipped"]) == (["good"], ["bad"])
    finally:
        await supervisor.handle({"op": "shutdown"})
