"""The agent channel re-reads its bootstrap root file when the control plane's certificate does not verify:
how an agent that was away during a root rotation rejoins. A real TLS server on loopback plays the control
plane; its certificate comes from a rotated lab CA."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from pathlib import Path

import pytest

from agents.common.channel import AgentChannel
from lab.ca import LabCA

WAITING = "waiting for a new trust bundle"
REREAD = "holds a new trust bundle"


async def eventually(check, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
async def rotated_control_plane(tmp_path: Path):
    """(old root PEM, new bundle PEM, port, hellos): a channel server whose certificate is from the new root."""
    ca = LabCA.load_or_create(tmp_path / "ca", "cluster.local")
    old = ca.bundle_pem.decode()
    ca.prepare_root()
    ca.activate_next_root()
    ca.drop_old_roots()
    key, cert = ca.issue_server_cert(["127.0.0.1"])
    (tmp_path / "cp-key.pem").write_bytes(key)
    (tmp_path / "cp-cert.pem").write_bytes(cert)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cp-cert.pem", tmp_path / "cp-key.pem")
    hellos: list[dict] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hellos.append(json.loads(await reader.readline()))
            writer.write(json.dumps({"type": "config", "version": 7, "config": {}}).encode() + b"\n")
            while await reader.readline():
                pass
        except (ConnectionError, ssl.SSLError, ValueError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    yield old, ca.bundle_pem.decode(), server.sockets[0].getsockname()[1], hellos
    server.close()


async def test_an_agent_with_the_old_root_rejoins_once_the_bootstrap_file_holds_the_new_one(
        rotated_control_plane, tmp_path: Path, caplog) -> None:
    old, new, port, hellos = rotated_control_plane
    root_file = tmp_path / "root-cert.pem"
    root_file.write_text(old)
    configs: list[int] = []

    async def on_config(version: int, config: dict) -> None:
        configs.append(version)

    caplog.set_level(logging.INFO, logger="meshlab.channel")
    channel = AgentChannel("127.0.0.1", port, str(root_file), "node-b", "ztunnel", "token", on_config)
    channel.start()
    try:
        # the old root cannot verify the new certificate: the agent keeps retrying, says why only once
        await eventually(lambda: channel.reconnects >= 3, "three failed handshakes")
        assert not channel.connected.is_set() and hellos == []
        waiting = [r for r in caplog.records if WAITING in r.getMessage()]
        assert len(waiting) == 1, [r.getMessage() for r in caplog.records]
        assert "unable to get local issuer certificate" in waiting[0].getMessage()  # OpenSSL's own verdict
        assert str(root_file) in waiting[0].getMessage()

        write_atomic(root_file, new)  # what the control plane writes into the node's bootstrap folder
        await eventually(lambda: channel.connected.is_set() and configs == [7], "rejoin with the new root")
        assert hellos[0]["node"] == "node-b" and hellos[0]["agent"] == "ztunnel"
        reread = [r for r in caplog.records if REREAD in r.getMessage()]
        assert len(reread) == 1 and "1 root(s)" in reread[0].getMessage()
        assert len([r for r in caplog.records if WAITING in r.getMessage()]) == 1
    finally:
        await channel.close()


async def test_an_unusable_bootstrap_file_is_reported_once_and_the_agent_keeps_its_roots(
        rotated_control_plane, tmp_path: Path, caplog) -> None:
    old, new, port, hellos = rotated_control_plane
    root_file = tmp_path / "root-cert.pem"
    root_file.write_text(old)

    async def on_config(version: int, config: dict) -> None:
        return None

    caplog.set_level(logging.INFO, logger="meshlab.channel")
    channel = AgentChannel("127.0.0.1", port, str(root_file), "node-b", "ztunnel", "token", on_config)
    channel.start()
    try:
        await eventually(lambda: channel.reconnects >= 1, "a failed handshake")
        write_atomic(root_file, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        seen = channel.reconnects
        await eventually(lambda: channel.reconnects >= seen + 3, "three more failed handshakes")
        unusable = [r for r in caplog.records if "is unusable" in r.getMessage()]
        assert len(unusable) == 1, [r.getMessage() for r in caplog.records]
        assert not channel.connected.is_set()
        write_atomic(root_file, old + new)  # the overlap bundle: both roots
        await eventually(lambda: channel.connected.is_set() and hellos, "rejoin with the overlap bundle")
        assert "2 root(s)" in next(r for r in caplog.records if REREAD in r.getMessage()).getMessage()
    finally:
        await channel.close()
