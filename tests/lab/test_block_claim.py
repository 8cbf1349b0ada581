"""Two `meshlab up` at once, from two MESHLAB_HOMEs that do not see each other's labs, get two blocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lab.addressing import BlockClaim
from tests.support import ROOT

TOPOLOGY = """
name: {name}
nodes:
  - name: node-1
namespaces:
  - name: app
services:
  - name: echo
    namespace: app
    ports: [{{port: 8080}}]
    workloads:
      - {{name: echo-v1, node: node-1, serviceAccount: echo, run: {{demo: echo}}}}
"""


def test_the_claim_is_held_until_released() -> None:
    first, second = BlockClaim(), BlockClaim()
    first.acquire()
    got = threading.Event()

    def take() -> None:
        second.acquire()
        got.set()

    taker = threading.Thread(target=take)
    taker.start()
    try:
        assert not got.wait(0.5)  # still held by the first
        first.release()
        assert got.wait(30)
    finally:
        first.release()
        taker.join(30)
        second.release()


@pytest.mark.slow
def test_concurrent_ups_from_two_homes_take_two_blocks(tmp_path: Path) -> None:
    runs = []
    for name in ("claim-a", "claim-b"):
        home = tmp_path / name
        home.mkdir()
        topo = home / f"{name}.yaml"
        topo.write_text(TOPOLOGY.format(name=name))
        env = {**os.environ, "MESHLAB_HOME": str(home)}
        runs.append((name, env, topo))
    procs = [subprocess.Popen([sys.executable, "-m", "lab.cli.main", "up", str(topo), "--json"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _, env, topo in runs]
    try:
        outputs = [p.communicate(timeout=180) for p in procs]
        for p, (out, err) in zip(procs, outputs):
            assert p.returncode == 0, err
        blocks = [json.loads(out)["block"] for out, _ in outputs]
        assert blocks[0] != blocks[1], blocks
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for name, env, _ in runs:
            subprocess.run([sys.executable, "-m", "lab.cli.main", "down", name], cwd=ROOT, env=env,
                           capture_output=True, timeout=120)
