"""What agents and clients need to find and trust a lab's control plane: its address, tokens."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from lab.state import atomic_write

AGENT_CHANNEL_PORT = 15012


def channel_address(state: dict[str, Any]) -> str:
    """Where local agents reach the control plane: `.0.1` of the lab's block (local provider)."""
    base = state["block"].split("/")[0].rsplit(".", 2)[0]
    return f"{base}.0.1"


def node_channel_address(state: dict[str, Any], node: str) -> str:
    """Where the agents of `node` reach the control plane: the lab network's gateway for a docker node."""
    if state["nodes"][node].get("provider") == "docker" and state.get("docker"):
        return str(state["docker"]["gateway"])
    return channel_address(state)


def channel_addresses(state: dict[str, Any]) -> list[str]:
    """Every address the control plane listens on for agents: one per kind of node the lab has."""
    found = {node_channel_address(state, node) for node in state["nodes"]} or {channel_address(state)}
    return sorted(found)


def api_token(lab_path: Path) -> str:
    """The lab API's bearer token, made on first use (mode 0600)."""
    path = lab_path / "api-token"
    if not path.exists():
        atomic_write(path, secrets.token_urlsafe(24), mode=0o600)
    return path.read_text().strip()


def node_tokens(lab_path: Path, nodes: list[str]) -> dict[str, str]:
    """Each node's bootstrap token for the agent channel, made on first use (mode 0600)."""
    path = lab_path / "tokens.json"
    tokens: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    missing = [n for n in nodes if n not in tokens]
    for n in missing:
        tokens[n] = secrets.token_urlsafe(24)
    if missing or not path.exists():
        atomic_write(path, json.dumps(tokens, indent=2), mode=0o600)
    return tokens
