"""The supervisor's control operations, called in-process (no sockets)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agents.node.supervisor import NodeSupervisor


@pytest.fixture
async def supervisor(tmp_path: Path) -> AsyncIterator[NodeSupervisor]:
    node = NodeSupervisor("lab-x", "node-1", tmp_path, "127.0.0.1", resolver_port=0)
    (tmp_path / "logs").mkdir()
    (tmp_path / "config").mkdir()
    yield node
    await node.handle({"op": "shutdown"})


@pytest.mark.parametrize(("request_", "error"), [
    ({"op": "fly"}, "unknown op 'fly'"),
    ({"op": "__init__"}, "unknown op"),
    ({"op": "start"}, "start: missing field 'spec'"),
    ({"op": "start", "spec": {"name": "a", "argv": []}}, "start: process a: argv must be"),
    ({"op": "stop", "name": "ghost"}, "stop: no process named 'ghost' on node node-1"),
    ({"op": "signal", "name": "ghost", "signal": 19}, "no process named 'ghost'"),
    ({"op": "config", "section": "../x", "value": {}}, "bad section name"),
    ({"op": "config", "section": "resolver", "value": {"services": [{"ports": []}]}}, "bad resolver table"),
    ({"op": "config", "section": "resolver", "value": ["not", "a", "table"]}, "bad resolver table"),
])
async def test_errors_are_answers(supervisor: NodeSupervisor, request_: dict, error: str) -> None:
    answer = await supervisor.handle(request_)
    assert answer["ok"] is False
    assert error in answer["error"]


async def test_a_refused_config_is_not_kept(supervisor: NodeSupervisor, tmp_path: Path) -> None:
    await supervisor.handle({"op": "config", "section": "resolver", "value": {"services": [{}]}})
    assert not (tmp_path / "config" / "resolver.json").exists()
    assert "resolver" not in supervisor.config


async def test_start_is_idempotent(supervisor: NodeSupervisor) -> None:
    spec = {"name": "a", "argv": ["sleep", "30"], "labels": {"role": "workload"}}
    assert await supervisor.handle({"op": "start", "spec": spec}) == {"ok": True, "changed": True}
    assert await supervisor.handle({"op": "start", "spec": spec}) == {"ok": True, "changed": False}
    [listed] = (await supervisor.handle({"op": "list"}))["processes"]
    assert set(listed) == {"name", "state", "pid", "restarts", "ready", "exit_code", "started_at", "labels"}
    assert await supervisor.handle({"op": "start", "spec": {**spec, "env": {"A": "1"}}}) == {
        "ok": True, "changed": True}


async def test_config_is_kept_on_disk_and_reloaded(supervisor: NodeSupervisor, tmp_path: Path) -> None:
    table = {"services": [{"name": "s", "namespace": "ns", "ports": [{"port": 80}],
                           "endpoints": [{"workload": "s-1", "address": "127.0.0.5"}]}]}
    assert await supervisor.handle({"op": "config", "section": "resolver", "value": table}) == {"ok": True}
    assert json.loads((tmp_path / "config" / "resolver.json").read_text()) == table
    assert supervisor.resolver.resolve("s", 80).address == "127.0.0.5"
    again = NodeSupervisor("lab-x", "node-1", tmp_path, "127.0.0.1")
    again._load_config()
    assert again.config == {"resolver": table}
    assert again.resolver.resolve("s.ns", 80).address == "127.0.0.5"


async def test_ping_names_the_node(supervisor: NodeSupervisor) -> None:
    answer = await supervisor.handle({"op": "ping"})
    assert (answer["ok"], answer["node"], answer["lab"], answer["address"]) == (True, "node-1", "lab-x", "127.0.0.1")
