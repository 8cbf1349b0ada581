"""Every shipped workshop scenario, run as a learner runs it (`meshlab scenario run NAME --json`): it must pass.

Each run brings its own lab up and takes it down. On the local provider all six run; the ones whose
file says `providers: [..., docker]` run again on the docker provider, under a lab name of their own
(container names are per lab name). A runner that passes what should fail would make these
worthless, so one test also runs a scenario whose check cannot hold and expects the failure.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from lab.scenario import list_scenarios, load_scenario
from tests.support import meshlab

SHIPPED = {p.stem: load_scenario(p) for p in list_scenarios()}
DOCKER = [name for name, s in SHIPPED.items() if "docker" in s.providers]
TIMEOUT = 400  # seconds for one scenario (they take 15-50 s here), with room for a loaded machine

pytestmark = pytest.mark.slow


def run(*args: str) -> tuple[int, dict, str]:
    proc = meshlab("scenario", "run", *args, "--json", check=False, timeout=TIMEOUT)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON report (exit {proc.returncode})\n{proc.stdout}\n{proc.stderr}") from None
    return proc.returncode, report, proc.stderr


def assert_passed(code: int, report: dict, log: str) -> None:
    failed = [c for s in report["steps"] for c in s.get("checks", []) if not c["passed"]]
    errors = [s["error"] for s in report["steps"] if s.get("error")]
    assert code == 0 and report["passed"] and not failed and not errors, (failed, errors, log)
    assert report["checks"] >= 8 and report["failed"] == 0
    assert len(report["steps"]) == len(SHIPPED[next(n for n, s in SHIPPED.items() if s.name == report["scenario"])]
                                       .steps)


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_scenario_passes_on_the_local_provider(name: str) -> None:
    code, report, log = run(name)
    assert report["provider"] == "local"
    assert_passed(code, report, log)
    assert "PASS " in log and "down" in log  # the learner's view went to stderr; the lab is gone
    assert meshlab("status", report["lab"], check=False).returncode != 0


@pytest.mark.docker
@pytest.mark.timeout(TIMEOUT + 300)
@pytest.mark.parametrize("name", DOCKER)
def test_shipped_scenario_passes_on_the_docker_provider(name: str, node_image: str) -> None:
    lab = f"sc-{name.split('-')[1][:8]}-{uuid.uuid4().hex[:6]}"
    try:
        code, report, log = run(name, "--provider", "docker", "--lab", lab)
    finally:
        meshlab("down", lab, check=False)
    assert report["provider"] == "docker" and report["lab"] == lab
    assert_passed(code, report, log)


@pytest.mark.timeout(TIMEOUT)
def test_a_failing_check_fails_the_run_and_keep_then_reuse_works(tmp_path: Path) -> None:
    """A check that cannot hold fails the run (exit 1) and later steps still run; --keep leaves the lab up,
    and a second run reuses it and then leaves it up, without the config it applied."""
    lab = f"sc-fail-{uuid.uuid4().hex[:6]}"
    scenario = tmp_path / "fail.yaml"
    topology = Path(__file__).resolve().parents[2] / "topologies" / "echo.yaml"
    scenario.write_text(f"""\
name: fail
title: A check that cannot hold
topology: {topology}
explain: The echo service answers 200; the check says 503.
steps:
  - load: {{target: "echo:8080/", from: client, n: 5, connections: 1}}
    expect:
      - load.codes.503 equals 100%
      - load.codes.200 equals 100%
  - apply:
      namespace: echo
      yaml: |
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata:
          name: default
        spec:
          mtls: {{mode: PERMISSIVE}}
  - say: still running after a failed check
""")
    try:
        code, report, log = run(str(scenario), "--lab", lab, "--keep")
        assert code == 1 and not report["passed"] and report["failed"] == 1, log
        checks = report["steps"][0]["checks"]
        assert [c["passed"] for c in checks] == [False, True]
        assert checks[0]["measured"] == "0.0% (0 of 5)"
        assert len(report["steps"]) == 3 and "FAIL  load.codes.503 equals 100%" in log
        assert meshlab("status", lab).returncode == 0  # kept

        code, report, log = run(str(scenario), "--lab", lab)
        assert code == 1 and "already up, reusing it" in log and "left up as it was found" in log
        assert meshlab("status", lab).returncode == 0
        assert "no resources found" in meshlab("get", "peerauthentication", "--lab", lab).stderr
    finally:
        meshlab("down", lab, check=False)
