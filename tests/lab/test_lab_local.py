"""bookinfo on the local provider, driven through the `meshlab` CLI as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.providers.proctags import find_tagged
from tests.support import meshlab as run_meshlab


ROOT = Path(__file__).resolve().parents[2]
BOOKINFO = ROOT / "topologies" / "bookinfo.yaml"

pytestmark = pytest.mark.slow


def meshlab(*args: str, check: bool = True, timeout: float = 90):
    return run_meshlab(*args, check=check, timeout=timeout)


def lab_pids(lab: str) -> set[int]:
    return {t.pid for t in find_tagged(lab=lab)}


def write_topology(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topo.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def bookinfo():
    """A bookinfo lab, brought up through the CLI, always torn down."""
    up = meshlab("up", str(BOOKINFO), "--json")
    yield json.loads(up.stdout)
    meshlab("down", "bookinfo", check=False)
    subprocess.run([sys.executable, "-m", "lab.cli.main", "clean", "bookinfo"], capture_output=True, cwd=ROOT)


def status(lab: str) -> dict:
    return json.loads(meshlab("status", lab, "--json").stdout)


def processes(doc: dict) -> dict[str, dict]:
    return {p["name"]: p for n in doc["nodes"].values() for p in n["processes"]}


def test_bookinfo_serves_every_reviews_version_and_down_leaves_nothing(bookinfo) -> None:
    assert bookinfo["status"] == "running"
    print(f"\nbookinfo bring-up (local): {bookinfo['upSeconds']:.2f}s")
    load = json.loads(meshlab("load", "productpage:9080/productpage", "-n", "60", "-c", "2",
                              "--count-body", r"reviews-v\d", "--json").stdout)
    assert load["count"] == 60
    assert load["codes"] == {"200": 60}
    assert set(load["body_matches"]) == {"reviews-v1", "reviews-v2", "reviews-v3"}
    assert sum(load["body_matches"].values()) == 60

    doc = status("bookinfo")
    procs = processes(doc)
    assert {w: procs[w]["state"] for w in doc["workloads"]} == {w: "running" for w in doc["workloads"]}
    assert all(procs[w]["ready"] for w in doc["workloads"])
    assert lab_pids("bookinfo")

    down = json.loads(meshlab("down", "bookinfo", "--json").stdout)
    assert sorted(down["nodes"]) == ["node-1", "node-2", "node-3"]
    assert lab_pids("bookinfo") == set()
    assert meshlab("status", "bookinfo", check=False).returncode == 3


def test_second_up_reconciles_without_restarting(bookinfo) -> None:
    before = {n: p["pid"] for n, p in processes(status("bookinfo")).items()}
    again = json.loads(meshlab("up", str(BOOKINFO), "--json").stdout)
    assert again["block"] == bookinfo["block"]
    after = {n: p["pid"] for n, p in processes(status("bookinfo")).items()}
    assert after == before


def test_up_reconciles_a_changed_topology(tmp_path: Path) -> None:
    text = BOOKINFO.read_text()
    try:
        meshlab("up", str(BOOKINFO))
        pid_details = processes(status("bookinfo"))["details-v1"]["pid"]
        # Drop reviews-v3 and give details an env var: v3 stops, details restarts, the rest stays.
        changed = text.replace("run: {demo: details}", "run: {demo: details, env: {COLOR: blue}}")
        assert changed != text
        lines = changed.splitlines()
        start = next(i for i, line in enumerate(lines) if "name: reviews-v3" in line)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("- name:")
                    or not lines[i].startswith(" ")), len(lines))
        del lines[start:end]
        topo = write_topology(tmp_path, "\n".join(lines) + "\n")
        meshlab("up", str(topo))
        procs = processes(status("bookinfo"))
        assert "reviews-v3" not in procs
        assert procs["details-v1"]["pid"] != pid_details
        assert procs["reviews-v2"]["state"] == "running"
    finally:
        meshlab("down", "bookinfo", check=False)
    assert lab_pids("bookinfo") == set()


def test_a_crashed_workload_is_restarted_and_counted(bookinfo) -> None:
    pid = processes(status("bookinfo"))["ratings-v1"]["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        p = processes(status("bookinfo"))["ratings-v1"]
        if p["restarts"] >= 1 and p["ready"]:
            break
        time.sleep(0.2)
    assert p["restarts"] == 1 and p["pid"] != pid and p["exitCode"] == -signal.SIGKILL
    text = meshlab("status", "bookinfo").stdout
    assert "ratings-v1" in text and "RESTARTS" in text


def test_down_after_sigkill_of_every_lab_process_leaves_nothing() -> None:
    meshlab("up", str(BOOKINFO))
    supervisors = [t for t in find_tagged(lab="bookinfo") if " node " in " ".join(t.cmdline)]
    assert len(supervisors) == 3
    for t in supervisors:
        os.kill(t.pid, signal.SIGKILL)
    assert lab_pids("bookinfo"), "workloads outlive their supervisor until down"
    down = meshlab("down", "bookinfo", "--json", check=False)
    assert lab_pids("bookinfo") == set(), down.stdout + down.stderr


def test_down_after_sigkill_of_up_midway_leaves_nothing() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "lab.cli.main", "up", str(BOOKINFO)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Wait until the first node exists, then kill `up` before it finishes.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not lab_pids("bookinfo"):
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    meshlab("down", "bookinfo", check=False)
    assert lab_pids("bookinfo") == set()


def test_clean_removes_leftovers_of_any_lab_by_tag() -> None:
    meshlab("up", str(BOOKINFO))
    assert lab_pids("bookinfo")
    cleaned = json.loads(meshlab("clean", "--json").stdout)
    assert cleaned["removed"]
    assert lab_pids("bookinfo") == set()
    assert meshlab("status", "bookinfo", check=False).returncode == 3


def test_a_command_workload_gets_its_address_and_port(tmp_path: Path) -> None:
    topo = write_topology(tmp_path, """
name: web
nodes: [{name: n1}, {name: n2}]
namespaces: [{name: web}]
services:
  - name: files
    namespace: web
    ports: [{port: 8000}]
    workloads:
      - name: files-v1
        node: n1
        run: {command: "exec python3 -m http.server $MESH_PORT --bind $MESH_BIND_ADDR"}
workloads:
  - {name: client, namespace: web, node: n2, run: {demo: sleep}}
""")
    try:
        meshlab("up", str(topo))
        load = json.loads(meshlab("load", "files:8000/", "-n", "5", "--json", "--lab", "web").stdout)
        assert load["codes"] == {"200": 5}
    finally:
        meshlab("down", "web", check=False)
    assert lab_pids("web") == set()


def test_a_workload_that_never_gets_ready_is_reported_with_its_log(tmp_path: Path) -> None:
    topo = write_topology(tmp_path, """
name: broken
nodes: [{name: n1}]
namespaces: [{name: b}]
services:
  - name: nope
    namespace: b
    ports: [{port: 8000}]
    workloads:
      - name: nope-v1
        node: n1
        run: {command: "echo 'cannot start: no config' >&2; exit 3"}
""")
    try:
        up = meshlab("up", str(topo), "--timeout", "3", check=False)
        assert up.returncode == 1
        assert "nope-v1 on n1" in up.stderr and "cannot start: no config" in up.stderr
        assert "Traceback" not in up.stderr
        assert status("broken")["status"] == "degraded"
    finally:
        meshlab("down", "broken", check=False)
    assert lab_pids("broken") == set()
