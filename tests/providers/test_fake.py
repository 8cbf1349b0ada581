"""The conformance suite against the in-memory fake provider, plus its test hooks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lab.errors import LabError
from lab.providers import provider_class, provider_names
from lab.providers.base import ExecResult, NodeSpec, Provider
from lab.providers.fake import FakeProvider
from tests.providers.conformance import ProviderConformance


class TestFakeConformance(ProviderConformance):

    @pytest.fixture
    async def provider(self, lab_name: str, tmp_path: Path) -> AsyncIterator[FakeProvider]:
        provider = FakeProvider(lab_name, tmp_path / "lab")
        yield provider
        await provider.close()
        await FakeProvider.clean(lab_name)

    async def crash(self, provider: Provider, node: str, name: str, exit_code: int) -> None:
        assert isinstance(provider, FakeProvider)
        provider.fail_process(node, name, exit_code)

    async def leftovers(self, provider: Provider) -> list[str]:
        return list(FakeProvider.registry.get(provider.lab, {}))

    async def colour_of(self, provider: Provider, node: str, name: str) -> str | None:
        process = FakeProvider.registry[provider.lab][node].processes.get(name)
        return None if process is None else process.spec.env.get("COLOUR", "")


async def test_instances_of_one_lab_share_their_nodes(lab_name: str, tmp_path: Path) -> None:
    one, two = FakeProvider(lab_name, tmp_path), FakeProvider(lab_name, tmp_path)
    await one.create_node(NodeSpec(lab_name, "n1", 0, "127.1.1.1"), tmp_path / "agents.pyz")
    assert (await two.node_info("n1")).address == "127.1.1.1"
    await two.push_config("n1", "resolver", {"services": []})
    assert FakeProvider.registry[lab_name]["n1"].config == {"resolver": {"services": []}}
    assert await FakeProvider.clean(lab_name) == [f"fake node n1 of lab {lab_name}"]


async def test_exec_handler_scripts_exec(lab_name: str, tmp_path: Path) -> None:
    provider = FakeProvider(lab_name, tmp_path)
    await provider.create_node(NodeSpec(lab_name, "n1", 0, "127.1.1.1"), tmp_path / "agents.pyz")
    provider.exec_handler = lambda node, argv, env: ExecResult(0, f"{node} {argv[0]} {env['X']}\n", "")
    assert (await provider.exec("n1", ["echo"], env={"X": "1"})).stdout == "n1 echo 1\n"
    assert FakeProvider.registry[lab_name]["n1"].execs == [["echo"]]
    await FakeProvider.clean(lab_name)


def test_registry_knows_local_and_fake() -> None:
    assert {"local", "fake"} <= set(provider_names())
    assert provider_class("fake") is FakeProvider
    assert provider_class("local").name == "local"
    with pytest.raises(LabError, match="known: local, fake"):
        provider_class("nope")
