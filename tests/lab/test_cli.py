"""The CLI's contract: --help everywhere, clear errors, exit codes scripts can rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
VERBS = ["validate", "up", "down", "status", "clean", "load", "logs", "tui"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lab.cli.main", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    assert "usage: meshlab " + verb in capsys.readouterr().out


def test_verbs_that_report_state_have_json() -> None:
    parser = build_parser()
    for verb in ["validate", "up", "down", "status", "clean", "load"]:
        args = {"validate": ["x"], "up": ["x"], "load": ["x"]}.get(verb, [])
        assert parser.parse_args([verb, *args, "--json"]).json is True


def test_validate_ok_and_json() -> None:
    out = run("validate", "topologies/bookinfo.yaml", "topologies/echo.yaml")
    assert out.returncode == 0, out.stderr
    assert "topologies/bookinfo.yaml: valid" in out.stdout
    doc = json.loads(run("validate", "--json", "bookinfo").stdout)
    assert doc == [{"file": "bookinfo", "name": "bookinfo", "valid": True}]


def test_validate_reports_every_error_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nnodes: [{name: n1}]\nnamespaces: [{name: ns, mode: turbo}]\n"
                   "services:\n  - name: s\n    namespace: nowhere\n    ports: [{port: 80}]\n"
                   "    workloads: [{name: w, node: node-9, run: {demo: echo}}]\n")
    out = run("validate", str(bad))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "bad.yaml:3" in out.stderr and "bad.yaml:6" in out.stderr and "bad.yaml:8" in out.stderr
    assert "unknown node 'node-9'" in out.stderr


@pytest.mark.parametrize("args, code, message", [
    (["status", "no-such-lab"], 3, "no lab named 'no-such-lab'"),
    (["up", "no-such-topology"], 1, "no topology file 'no-such-topology'"),
    (["up", "/nonexistent/topo.yaml"], 2, "topo.yaml"),
    (["logs", "x", "--lab", "no-such-lab"], 3, "no lab named"),
    (["load", "productpage", "--lab", "no-such-lab"], 3, "no lab named"),
])
def test_errors_are_messages_with_exit_codes(args: list[str], code: int, message: str) -> None:
    out = run(*args)
    assert out.returncode == code, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_verb_is_a_usage_error() -> None:
    out = run("frobnicate")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "meshlab"
    assert exe.exists(), "pip install -e . installs the `meshlab` console script"
    assert subprocess.run([str(exe), "--help"], capture_output=True, timeout=30).returncode == 0
