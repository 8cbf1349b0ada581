"""bookinfo on the docker provider, driven through the `meshlab` CLI as a user would.

Needs a Docker engine (`scripts/install-docker.sh` starts one) and the node image (built offline if
missing); skipped only when no engine answers, and in CI (`CI` set) that fails instead.
The lab has a name of its own (container names are per lab name, not per MESHLAB_HOME).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.providers import proctags
from tests.support import labelled, meshlab

ROOT = Path(__file__).resolve().parents[2]
BOOKINFO = ROOT / "topologies" / "bookinfo.yaml"

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def host_side(lab: str) -> list[proctags.TaggedProcess]:
    """The lab's tagged processes in this PID namespace (the control plane), not those in its containers."""
    mine = os.readlink("/proc/self/ns/pid")
    found = []
    for p in proctags.find_tagged(lab=lab):
        try:
            if os.readlink(f"/proc/{p.pid}/ns/pid") == mine:
                found.append(p)
        except OSError:
            continue
    return found


@pytest.fixture
def lab(node_image: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A bookinfo topology of its own name; whatever the test leaves is removed."""
    name = f"bookinfo-dk{uuid.uuid4().hex[:6]}"
    topo = tmp_path / "bookinfo.yaml"
    topo.write_text(re.sub(r"(?m)^name: bookinfo$", f"name: {name}", BOOKINFO.read_text()))
    yield name, topo
    meshlab("down", name, check=False)
    meshlab("clean", name, check=False)


def up(name: str, topo: Path) -> dict:
    doc = json.loads(meshlab("up", str(topo), "--provider", "docker", "--json").stdout)
    assert doc["status"] == "running"
    return doc


def test_bookinfo_on_docker_serves_every_version_and_down_leaves_nothing(lab: tuple[str, Path]) -> None:
    name, topo = lab
    started = time.monotonic()
    doc = up(name, topo)
    print(f"\nbookinfo bring-up (docker): {doc['upSeconds']:.2f}s in the lab, "
          f"{time.monotonic() - started:.2f}s with the CLI")
    subnet = doc["docker"]["subnet"]
    assert subnet.startswith("10.210.") and subnet.endswith(".0/24")
    base = subnet.rsplit(".", 1)[0]
    assert doc["docker"]["gateway"] == f"{base}.1"
    assert {n: v["address"] for n, v in doc["nodes"].items()} == {
        "node-1": f"{base}.2", "node-2": f"{base}.3", "node-3": f"{base}.4"}
    assert all(w["address"].startswith(f"{base}.") for w in doc["workloads"].values())

    load = json.loads(meshlab("load", "productpage:9080/productpage", "-n", "60", "-c", "2",
                              "--count-body", r"reviews-v\d", "--json", "--lab", name).stdout)
    assert load["codes"] == {"200": 60}
    assert set(load["body_matches"]) == {"reviews-v1", "reviews-v2", "reviews-v3"}

    status = json.loads(meshlab("status", name, "--json").stdout)
    assert status["controlPlane"]["state"] == "running"
    assert {n["state"] for n in status["nodes"].values()} == {"running"}
    procs = {p["name"]: p for n in status["nodes"].values() for p in n["processes"]}
    assert all(procs[w]["ready"] and procs[w]["state"] == "running" for w in status["workloads"])
    assert {p["state"] for p in procs.values() if p["name"] == "ztunnel"} <= {"running"}
    # Every ztunnel reached the control plane at its network's gateway.
    for node in status["nodes"]:
        log = (Path(os.environ["MESHLAB_HOME"]) / "labs" / name / "nodes" / node / "logs" / "ztunnel.log").read_text()
        assert f"connected to the control plane at {base}.1:15012" in log

    assert labelled(name)
    down = json.loads(meshlab("down", name, "--json").stdout)
    assert sorted(down["nodes"]) == ["node-1", "node-2", "node-3"]
    assert labelled(name) == []
    assert proctags.find_tagged(lab=name) == []


def test_down_after_sigkill_of_every_host_side_process(lab: tuple[str, Path]) -> None:
    name, topo = lab
    up(name, topo)
    victims = host_side(name)
    assert victims, "the control plane should be a tagged host process"
    proctags.signal_processes(victims, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(proctags.is_alive(p) for p in victims) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert labelled(name)  # the containers outlive the lab's host processes
    meshlab("down", name)
    assert labelled(name) == []
    assert proctags.find_tagged(lab=name) == []


def test_docker_lab_errors_are_clear_without_an_engine(tmp_path: Path) -> None:
    """No engine: `up --provider docker` says how to get one; a local lab never asks for one."""
    topo = tmp_path / "bookinfo.yaml"
    topo.write_text(re.sub(r"(?m)^name: bookinfo$", "name: bookinfo-noengine", BOOKINFO.read_text()))
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    proc = subprocess.run([sys.executable, "-m", "lab.cli.main", "up", str(topo), "--provider", "docker"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert proc.returncode != 0
    assert "no Docker engine answers" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    subprocess.run([sys.executable, "-m", "lab.cli.main", "clean", "bookinfo-noengine"], capture_output=True,
                   timeout=60, cwd=ROOT, env=env)
