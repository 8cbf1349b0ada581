"""The lab API's read-only inspection routes: the fault catalogue and an agent's config dump.

A control plane over a lab state with no processes running: the catalogue needs nothing more, and a
config dump of an agent that does not answer must say so. The config dumps of live agents are read
through the TUI on a real lab (tests/tui/test_actions.py).
"""

from __future__ import annotations

import asyncio

import pytest

from lab.client import LabApiError, LabClient
from lab.faults.catalogue import KINDS
from lab.state import LabState
from tests.lab.test_controlplane import lab  # noqa: F401  (the fixture: a lab state and its control plane)


@pytest.fixture
def client(lab) -> LabClient:  # noqa: F811
    return lab[1]


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


async def test_config_dump_says_which_agent_and_why_not(client: LabClient, lab) -> None:  # noqa: F811
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
    address = LabState(lab[0]).load()["nodes"]["n1"]["address"]
    assert e.value.status == 502 and f"{address}:15000 does not answer" in str(e.value), str(e.value)
