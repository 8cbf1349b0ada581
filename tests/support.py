"""Helpers shared by the test modules that drive a lab as a user would: the CLI, and the Docker engine."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def meshlab(*args: str, check: bool = True, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the `meshlab` CLI (this interpreter, this MESHLAB_HOME); with `check`, a non-zero exit fails the test."""
    proc = subprocess.run([sys.executable, "-m", "lab.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"meshlab {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@contextlib.contextmanager
def running_lab(folder: Path, name: str, topology: str, *up_args: str, timeout: float = 180,
                clean: bool = False) -> Iterator[Path]:
    """A lab brought up from `topology` (written to folder/<name>.yaml) for a block of tests; down after,
    also when they fail (and `meshlab clean` too with `clean`, for docker leftovers)."""
    path = Path(folder) / f"{name}.yaml"
    path.write_text(topology)
    try:
        meshlab("up", str(path), *up_args, timeout=timeout)
        yield path
    finally:
        meshlab("down", name, check=False)
        if clean:
            meshlab("clean", name, check=False)


@contextlib.contextmanager
def test_timer_paused() -> Iterator[None]:
    """A cold image build takes minutes: hold pytest-timeout's per-test alarm (ITIMER_REAL) meanwhile."""
    left, interval = signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        yield
    finally:
        if left:
            signal.setitimer(signal.ITIMER_REAL, left, interval)


test_timer_paused.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def labelled(lab: str) -> list[str]:
    """Containers, networks and volumes of `lab` (in this MESHLAB_HOME), asked of the Docker API by label."""
    from lab.providers import proctags
    from lab.providers.docker import engine

    client = engine()
    try:
        labels = {"label": [f"meshlab.lab={lab}", f"meshlab.home={proctags.home_tag()}"]}
        return ([f"container {c.name}" for c in client.containers.list(all=True, filters=labels)]
                + [f"network {n.name}" for n in client.networks.list(filters=labels)]
                + [f"volume {v.name}" for v in client.volumes.list(filters=labels)])
    finally:
        client.close()
