"""Starting and finding a lab's control plane daemon from the host side (used by `meshlab up`)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lab.client import LabClient
from lab.errors import LabError, ProvisionError
from lab.providers import proctags

START_TIMEOUT = 15.0


def running_pid(lab_path: Path) -> int | None:
    """The pid of the lab's live control plane, if one announced itself and still runs."""
    try:
        pid = int(json.loads((lab_path / "controlplane.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None
    tags = proctags.tags_of(pid)
    return pid if tags is not None and tags[0] == lab_path.name and tags[1] == "" else None


async def ensure_control_plane(lab: str, lab_path: Path) -> tuple[LabClient, bool]:
    """Start the control plane unless it runs; returns a client and whether it was started now."""
    if running_pid(lab_path) is not None:
        return LabClient(lab), False
    (lab_path / "controlplane.json").unlink(missing_ok=True)
    log_path = lab_path / "logs" / "controlplane.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MESHLAB_LAB": lab, "MESHLAB_NODE": "", "MESHLAB_HOME": proctags.home_tag()}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lab.controlplane", "--lab", lab], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, env=env, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise ProvisionError(f"the control plane exited at start (code {proc.returncode}): "
                                 f"{' | '.join(tail) or 'no output'} (log: {log_path})")
        if (lab_path / "controlplane.json").exists():
            try:
                client = LabClient(lab)
                await asyncio.to_thread(client.status)
                return client, True
            except LabError:
                pass
        await asyncio.sleep(0.05)
    raise ProvisionError(f"the control plane did not answer within {START_TIMEOUT:g}s (log: {log_path})")
