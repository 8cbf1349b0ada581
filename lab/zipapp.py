"""Builds the agent zipapp: the one file the lab copies onto every node.

It holds the `agents` package and the pure-Python packages the agents may use
(h2 and its friends, for HBONE). It is rebuilt only when its content changes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import zipfile
from pathlib import Path

from lab.state import atomic_write

AGENTS_DIR = Path(__file__).resolve().parent.parent / "agents"
# Pure-Python packages bundled with the agents (import name); missing ones are skipped.
BUNDLED = ("h2", "hpack", "hyperframe")


def _package_files(root: Path, arcbase: str) -> list[tuple[Path, str]]:
    files = []
    for p in sorted(root.rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        files.append((p, f"{arcbase}/{p.relative_to(root).as_posix()}"))
    return files


def _bundled_files() -> list[tuple[Path, str]]:
    files = []
    for name in BUNDLED:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        files += _package_files(Path(next(iter(spec.submodule_search_locations))), name)
    return files


def build_agent_zipapp(dest: Path) -> Path:
    """Write `dest` (an executable .pyz) unless an identical one is already there."""
    files = _package_files(AGENTS_DIR, "agents") + _bundled_files()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        # A fixed timestamp keeps the archive byte-identical for identical content.
        for path, arcname in files:
            info = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
        main = zipfile.ZipInfo("__main__.py", date_time=(2020, 1, 1, 0, 0, 0))
        zf.writestr(main, "import sys\nfrom agents.__main__ import main\nsys.exit(main())\n")
    data = b"#!/usr/bin/env python3\n" + buf.getvalue()
    if dest.exists() and hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(data).digest():
        return dest
    atomic_write(dest, data, mode=0o755)
    return dest
