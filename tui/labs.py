"""What is on this machine before any lab is attached: lab folders, shipped topologies, provider engines."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def meshlab_home() -> Path:
    """$MESHLAB_HOME, as the lab itself reads it (default ~/.meshlab)."""
    return Path(os.environ.get("MESHLAB_HOME") or Path.home() / ".meshlab")


def running_labs() -> list[str]:
    """Names of the lab folders under $MESHLAB_HOME/labs that hold a lab's state."""
    folder = meshlab_home() / "labs"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / "state.json").exists())


@dataclass(frozen=True)
class TopologyChoice:
    """A topology file the start screen offers."""

    path: Path
    name: str  # the lab's name (the file's `name:`)
    summary: str  # its first comment line

    @property
    def label(self) -> str:
        return f"{self.path.stem}  ({self.summary})" if self.summary else self.path.stem


def topology_dirs() -> list[Path]:
    """Where shipped topologies are: the source tree's topologies/, and ./topologies when run elsewhere."""
    dirs = [REPO / "topologies", Path.cwd() / "topologies"]
    return list(dict.fromkeys(d.resolve() for d in dirs if d.is_dir()))


def topologies(dirs: list[Path] | None = None) -> list[TopologyChoice]:
    """Every topology file in `dirs`, with its lab name and first comment line."""
    found = []
    for folder in topology_dirs() if dirs is None else dirs:
        for path in sorted(folder.glob("*.yaml")):
            text = path.read_text(errors="replace")
            first = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("#")), "")
            summary = re.split(r"[:;(]", first)[0].strip()
            try:
                doc = yaml.safe_load(text)
            except yaml.YAMLError:
                doc = None
            name = str(doc.get("name")) if isinstance(doc, dict) and doc.get("name") else path.stem
            found.append(TopologyChoice(path, name, summary))
    return found


@dataclass(frozen=True)
class ProviderChoice:
    """A provider the start screen offers, and why it cannot be used now."""

    name: str
    blocked: str = ""  # empty when usable


def docker_engine_missing() -> str:
    """Why the docker provider cannot run here ('' when a Docker engine answers on its socket)."""
    if shutil.which("docker") is None:
        return "needs a Docker engine (no `docker` command found)"
    socket = Path(os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").removeprefix("unix://"))
    if not socket.exists():
        return f"needs a Docker engine (no socket at {socket})"
    return ""


def providers(docker_missing: str | None = None) -> list[ProviderChoice]:
    """The providers to offer: local always; docker only with an engine."""
    reason = docker_engine_missing() if docker_missing is None else docker_missing
    return [ProviderChoice("local"), ProviderChoice("docker", reason)]
