"""The control plane daemon: lab API, agent channel, CA — driven by real clients over real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from agents.common.certs import cert_info, make_key_and_csr
from agents.common.channel import AgentChannel, ChannelError
from lab.client import LabApiError, LabClient
from lab.controlplane.bootstrap import node_tokens
from lab.controlplane.launch import ensure_control_plane, running_pid
from lab.orchestrator import _state_document
from lab.plan import plan_lab
from lab.providers.proctags import kill_tagged
from lab.state import LabState, lab_dir
from lab.topology.loader import parse_topology

TOPOLOGY = """
name: {name}
addressBlock: 127.{b}.0.0/16
nodes: [{{name: n1}}, {{name: n2}}]
namespaces: [{{name: shop, mode: ambient}}]
services:
  - name: web
    namespace: shop
    ports: [{{port: 8080}}]
    workloads:
      - {{name: web-v1, node: n1, serviceAccount: web, run: {{demo: echo}}}}
      - {{name: web-v2, node: n2, serviceAccount: web2, run: {{demo: echo}}}}
"""

STRICT = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: shop
spec:
  mtls:
    mode: STRICT
"""


@pytest.fixture
async def lab(request):
    """A lab folder with a state document and a running control plane (no nodes)."""
    name = f"cp{abs(hash(request.node.name)) % 10000}"
    b = 160 + abs(hash(request.node.name)) % 60
    topo = parse_topology(TOPOLOGY.format(name=name, b=b), "t.yaml")
    plan = plan_lab(topo, f"127.{b}.0.0/16", name, lambda n: ("python3", "agents.pyz"))
    doc = _state_document(plan, "t.yaml", "running", None)
    doc["certTtlSeconds"] = 3600
    LabState(name).save(doc)
    client, started = await ensure_control_plane(name, lab_dir(name))
    assert started
    yield name, client
    await asyncio.to_thread(kill_tagged, name)
    shutil.rmtree(lab_dir(name), ignore_errors=True)


def agent(name: str, node: str, token: str, seen: list, reject: bool = False) -> AgentChannel:
    async def on_config(version: int, config: dict) -> None:
        if reject:
            raise ValueError("cannot use this config")
        seen.append((version, config))

    host, port = json.loads((lab_dir(name) / "controlplane.json").read_text())["channel"].rsplit(":", 1)
    return AgentChannel(host, int(port), str(lab_dir(name) / "ca" / "root-cert.pem"), node, "ztunnel", token,
                        on_config)


async def eventually(check, what: str, timeout: float = 10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check() if asyncio.iscoroutinefunction(check) else check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_apply_get_delete_round_trip(lab, tmp_path: Path) -> None:
    name, client = lab
    answer = await asyncio.to_thread(client.apply, [("strict.yaml", STRICT)])
    assert answer["results"] == [["PeerAuthentication", "shop/default", "created"]]
    again = await asyncio.to_thread(client.apply, [("strict.yaml", STRICT)])
    assert again["results"][0][2] == "unchanged"
    items = (await asyncio.to_thread(client.get_config, "pa"))["items"]
    assert [i["metadata"]["name"] for i in items] == ["default"]
    await asyncio.to_thread(client.delete_config, kind="peerauthentication", name="default", namespace="shop")
    assert (await asyncio.to_thread(client.get_config))["items"] == []
    with pytest.raises(LabApiError) as e:
        await asyncio.to_thread(client.delete_config, kind="pa", name="default", namespace="shop")
    assert e.value.status == 404


async def test_bad_config_is_rejected_whole_with_file_and_line(lab) -> None:
    name, client = lab
    bad = STRICT + "---\n" + STRICT.replace("name: default", "name: other").replace("STRICT", "STRIKT")
    with pytest.raises(LabApiError) as e:
        await asyncio.to_thread(client.apply, [("two.yaml", bad)])
    assert e.value.status == 400 and e.value.exit_code == 2
    assert any("two.yaml:17" in p and "STRIKT" in p for p in e.value.problems), e.value.problems
    assert (await asyncio.to_thread(client.get_config))["items"] == []  # nothing half-applied


async def test_api_needs_the_token(lab) -> None:
    name, client = lab
    client.token = "wrong"
    with pytest.raises(LabApiError) as e:
        await asyncio.to_thread(client.status)
    assert e.value.status == 401


async def test_agents_sync_ack_and_get_certificates_for_their_node_only(lab) -> None:
    name, client = lab
    tokens = node_tokens(lab_dir(name), ["n1", "n2"])
    seen: list = []
    a = agent(name, "n1", tokens["n1"], seen)
    a.start()
    try:
        await eventually(lambda: seen, "first snapshot")
        snapshot = seen[-1][1]
        assert snapshot["node"] == "n1" and {w["name"] for w in snapshot["workloads"]} == {"web-v1", "web-v2"}
        ready = await asyncio.to_thread(client.wait_synced, 10, ["ztunnel/n1"])
        assert ready["synced"] and ready["agents"][0]["status"] == "SYNCED"

        await asyncio.to_thread(client.apply, [("strict.yaml", STRICT)])
        await eventually(lambda: seen[-1][1]["policy"]["peerAuthentications"], "policy pushed")
        assert (await asyncio.to_thread(client.wait_synced, 10))["synced"]

        td = "spiffe://cluster.local/ns/shop/sa/"
        key, csr = make_key_and_csr(td + "web")
        leaf, root = await a.request_cert(td + "web", csr)
        assert cert_info(leaf).uris == [td + "web"]
        _, csr2 = make_key_and_csr(td + "web2")  # web2 runs on n2 only
        with pytest.raises(ChannelError, match="n1"):
            await a.request_cert(td + "web2", csr2)
        certs = (await asyncio.to_thread(client.certs))["certificates"]
        assert [(c["identity"], c["holder"]) for c in certs] == [(td + "web", "ztunnel/n1")]
    finally:
        await a.close()


async def test_nack_keeps_the_agent_stale_and_bad_tokens_are_refused(lab) -> None:
    name, client = lab
    tokens = node_tokens(lab_dir(name), ["n1", "n2"])
    nacker = agent(name, "n2", tokens["n2"], [], reject=True)
    intruder = agent(name, "n1", "not-the-token", [])
    nacker.start()
    intruder.start()
    try:
        async def nacked():
            st = (await asyncio.to_thread(client.proxy_status))["agents"]
            return [a for a in st if a["status"] == "NACKED"]
        [row] = await eventually(nacked, "a NACK")
        assert row["node"] == "n2" and "cannot use this config" in row["nackError"]
        agents = (await asyncio.to_thread(client.proxy_status))["agents"]
        assert all(a["node"] != "n1" for a in agents)  # the intruder never got in
    finally:
        await nacker.close()
        await intruder.close()


async def test_agents_resync_after_the_control_plane_restarts(lab) -> None:
    name, client = lab
    tokens = node_tokens(lab_dir(name), ["n1", "n2"])
    seen: list = []
    a = agent(name, "n1", tokens["n1"], seen)
    a.start()
    try:
        await eventually(lambda: seen, "first snapshot")
        pid = running_pid(lab_dir(name))
        os.kill(pid, signal.SIGKILL)
        await eventually(lambda: not a.connected.is_set(), "disconnect")
        (lab_dir(name) / "controlplane.json").unlink(missing_ok=True)
        client2, started = await ensure_control_plane(name, lab_dir(name))
        assert started
        await eventually(lambda: a.connected.is_set(), "reconnect")
        assert (await asyncio.to_thread(client2.wait_synced, 10, ["ztunnel/n1"]))["synced"]
        assert a.reconnects >= 1
    finally:
        await a.close()


async def test_issued_certificates_verify_against_the_root(lab, tmp_path: Path) -> None:
    name, client = lab
    answer = await asyncio.to_thread(client.issue_cert, "spiffe://cluster.local/ns/shop/sa/web", 600)
    (tmp_path / "leaf.pem").write_text(answer["leaf"])
    (tmp_path / "root.pem").write_text(answer["root"])
    out = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "root.pem"), str(tmp_path / "leaf.pem")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "leaf.pem"), "-noout", "-ext", "subjectAltName"],
                          capture_output=True, text=True).stdout
    assert "URI:spiffe://cluster.local/ns/shop/sa/web" in text
