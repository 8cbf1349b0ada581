"""Drives one lab's faults and loads through the CLI, for the live-fault tests (local provider).

`LabDriver(lab)` wraps `meshlab fault|load|status --json`; `BackgroundLoad` is a load run that goes on
while a test adds and removes faults, and is ended on cue: the load generator reports what it measured
when it gets SIGTERM, so the run lasts exactly as long as the faults do, however slow the machine is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from tests.support import ROOT, meshlab


class LabDriver:
    """The CLI verbs a fault test uses, against the lab `lab`."""

    def __init__(self, lab: str) -> None:
        self.lab = lab

    def load(self, target: str, source: str, *args: str) -> dict[str, Any]:
        """One bounded `meshlab load` run; its JSON report."""
        target = target if ":" in target else f"{target}:8080"
        out = meshlab("load", target, "--from", source, "--json", "--lab", self.lab, *args, timeout=90)
        return json.loads(out.stdout)

    def add(self, kind: str, target: str | None, *args: str) -> dict[str, Any]:
        """`meshlab fault add`; the fault as the lab answers it (one-shot kinds answer `oneShot`)."""
        where = [target] if target else []
        return json.loads(meshlab("fault", "add", kind, *where, *args, "--json", "--lab", self.lab,
                                  timeout=120).stdout)

    def remove(self, fault_id: str) -> dict[str, Any]:
        return json.loads(meshlab("fault", "rm", fault_id, "--json", "--lab", self.lab, timeout=120).stdout)

    def faults(self) -> list[dict[str, Any]]:
        return json.loads(meshlab("fault", "list", "--json", "--lab", self.lab).stdout)

    def processes(self, node: str) -> dict[str, dict[str, Any]]:
        """The supervisor's view of `node`'s processes, by name (restarts, state, pid)."""
        status = json.loads(meshlab("status", self.lab, "--json").stdout)
        return {p["name"]: p for p in status["nodes"][node].get("processes") or []}

    def start_load(self, target: str, source: str, *args: str) -> BackgroundLoad:
        return BackgroundLoad(self.lab, target if ":" in target else f"{target}:8080", source, list(args))


class BackgroundLoad:
    """`meshlab load` running in the background until `stop()`; give it a -d (and -n) that outlast the test."""

    def __init__(self, lab: str, target: str, source: str, args: list[str]) -> None:
        self.argv = ["load", target, "--from", source, "--json", "--lab", lab, *args]
        self.proc = subprocess.Popen([sys.executable, "-m", "lab.cli.main", *self.argv], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.started = time.monotonic()

    def wait_running(self, timeout: float = 30.0) -> int:
        """The load generator's pid once the CLI has started it (it runs as the CLI's child)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self._generator()
            if pid is not None:
                return pid
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        out, err = self.proc.communicate(timeout=30) if self.proc.poll() is not None else ("", "")
        raise AssertionError(f"meshlab {' '.join(self.argv)}: no load generator ran within {timeout:g}s "
                             f"(exit {self.proc.poll()})\n{out}\n{err}")

    def stop(self) -> dict[str, Any]:
        """End the run now (SIGTERM to the load generator, which then reports); its JSON report.

        Fails if the run had already ended by itself: then it did not cover everything the test did.
        """
        pid = self._generator()
        if pid is None or self.proc.poll() is not None:
            out, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"meshlab {' '.join(self.argv)} ended (exit {self.proc.returncode}) before the "
                                 f"test was done with it: give it a longer -d/-n\n{out}\n{err}")
        os.kill(pid, signal.SIGTERM)
        out, err = self.proc.communicate(timeout=60)
        if self.proc.returncode != 0:
            raise AssertionError(f"meshlab {' '.join(self.argv)} exited {self.proc.returncode}\n{out}\n{err}")
        return json.loads(out)

    def kill(self) -> None:
        """Clean-up after a failed test: end the CLI and its load generator, if they still run."""
        pid = self._generator()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)

    def _generator(self) -> int | None:
        """The pid of the CLI's child that runs `loadgen`, if it runs."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:  # gone meanwhile
                continue
            fields = stat[stat.rfind(b")") + 2:].split()
            if len(fields) > 1 and int(fields[1]) == self.proc.pid and fields[0] != b"Z" and b"loadgen" in argv:
                return int(entry)
        return None
