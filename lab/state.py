"""The lab folder: where a lab keeps its state, logs and (later) its CA.

`$MESHLAB_HOME/labs/<lab>/` (default `~/.meshlab/labs/<lab>/`). Every write of
state is atomic (temp file, fsync, rename) so a lab killed mid-write never
leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from lab.errors import LabError, LabNotFound


def meshlab_home() -> Path:
    return Path(os.environ.get("MESHLAB_HOME") or Path.home() / ".meshlab")


def labs_dir() -> Path:
    return meshlab_home() / "labs"


def lab_dir(lab: str) -> Path:
    return labs_dir() / lab


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write `data` to `path` so that readers see the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LabState:
    """The lab's `state.json`: what the lab brought up, read and written as one JSON document."""

    def __init__(self, lab: str) -> None:
        self.lab = lab
        self.dir = lab_dir(lab)
        self.path = self.dir / "state.json"

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            raise LabNotFound(f"no lab named '{self.lab}' (looked in {self.dir})") from None
        except (OSError, ValueError) as e:
            raise LabError(f"cannot read the state of lab '{self.lab}' ({self.path}): {e}") from None

    def save(self, state: dict[str, Any]) -> None:
        atomic_write(self.path, json.dumps(state, indent=2, sort_keys=True) + "\n")


def list_labs() -> list[str]:
    """Names of the labs that have a folder under MESHLAB_HOME."""
    d = labs_dir()
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if (p / "state.json").exists())
