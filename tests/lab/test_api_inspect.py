"""The lab API's read-only inspection routes: the fault catalogue and an agent's config dump.

A control plane over a lab state with no processes running: the catalogue needs nothing more, and a
config dump of an agent that does not answer must say so. The config dumps of live agents are read
through the TUI on a real lab (tests/tui/test_actions.py).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator

import pytest

from lab.client import LabApiError, LabClient
from lab.controlplane.launch import ensure_control_plane
from lab.faults.catalogue import KINDS
from lab.orchestrator import _state_document
from lab.plan import plan_lab
from lab.providers.proctags import kill_tagged
from lab.state import LabState, lab_dir
from lab.topology.loader import parse_topology

BLOCK = "127.233.0.0/16"
TOPOLOGY = f"""
name: apiinspect
addressBlock: {BLOCK}
nodes: [{{name: n1}}, {{name: n2}}]
namespaces: [{{name: shop, mode: ambient}}]
services:
  - name: web
    namespace: shop
    ports: [{{port: 8080}}]
    workloads:
      - {{name: web-v1, node: n1, serviceAccount: web, run: {{demo: echo}}}}
"""


@pytest.fixture
async def client() -> AsyncIterator[LabClient]:
    name = "apiinspect"
    plan = plan_lab(parse_topology(TOPOLOGY, "t.yaml"), BLOCK, name, lambda n: ("python3", "agents.pyz"))
    LabState(name).save(_state_document(plan, "t.yaml", "running", None))
    api, started = await ensure_control_plane(name, lab_dir(name))
    assert started
    yield api
    await asyncio.to_thread(kill_tagged, name)
    shutil.rmtree(lab_dir(name), ignore_errors=True)


async def test_fault_kinds_answers_every_kind_with_its_parameters(client: LabClient) -> None:
    answer = await asyncio.to_thread(client.fault_kinds)
    assert answer["directions"] == ["upstream", "downstream", "both"]
    kinds = {k["name"]: k for k in answer["kinds"]}
    assert list(kinds) == list(KINDS)  # every kind, in the catalogue's order
    for name, kind in KINDS.items():
        doc = kinds[name]
        assert (doc["layer"], doc["targets"], doc["help"], doc["direction"], doc["oneShot"], doc["agent"]) == (
            kind.layer, list(kind.targets), kind.help, kind.direction, kind.one_shot, kind.agent)
        assert [p["name"] for p in doc["params"]] == [p.name for p in kind.params]
        for p in doc["params"]:
            assert set(p) == {"name", "type", "unit", "help", "default", "required"}
            assert not (p["required"] and p["default"] is not None), p  # required means no default
    latency = {p["name"]: p for p in kinds["latency"]["params"]}
    assert latency["latency"] == {"name": "latency", "type": "ms", "unit": "ms", "help": "added delay in ms",
                                  "default": None, "required": True}
    assert latency["jitter"]["default"] == 0
    assert {p["name"]: p["unit"] for p in kinds["abort"]["params"]} == {"status": None, "percentage": "%",
                                                                        "header": None}
    assert kinds["rotate_root"]["params"][0]["default"] is True and kinds["rotate_root"]["targets"] == []


async def test_config_dump_says_which_agent_and_why_not(client: LabClient) -> None:
    with pytest.raises(LabApiError) as e:
        await asyncio.to_thread(client.config_dump, "ztunnel")
    assert e.value.status == 400 and "node" in str(e.value) and "n1, n2" in str(e.value)
    for agent, node in (("ztunnel", "n9"), ("waypoint:shop/waypoint", None), ("sidecar:web-v1", None),
                        ("gateway", None)):
        with pytest.raises(LabApiError) as e:
            await asyncio.to_thread(client.config_dump, agent, node)
        assert e.value.status == 404 and f"no agent '{agent}'" in str(e.value), str(e.value)
    with pytest.raises(LabApiError) as e:  # n1 is in the state, but no ztunnel runs there
        await asyncio.to_thread(client.config_dump, "ztunnel", "n1")
    assert e.value.status == 502 and "127.233.1.1:15000 does not answer" in str(e.value), str(e.value)
