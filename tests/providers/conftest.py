"""Fixtures for the provider tests: the agent zipapp, unique lab names and loopback addresses."""

from __future__ import annotations

import itertools
import random
import uuid
from pathlib import Path

import pytest

from lab.zipapp import build_agent_zipapp

# 127.77.<n>.0/24 per test; a random start keeps two test runs on one machine apart.
_blocks = itertools.count(random.randrange(1, 250))


@pytest.fixture(scope="session")
def agent_pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_agent_zipapp(tmp_path_factory.mktemp("agents") / "agents.pyz")


@pytest.fixture
def lab_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def address_block() -> str:
    return f"127.77.{next(_blocks) % 250 + 1}"


@pytest.fixture
def node_address(address_block: str) -> str:
    return f"{address_block}.1"


@pytest.fixture
def workload_address(address_block: str) -> str:
    return f"{address_block}.10"
