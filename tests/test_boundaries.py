"""The package boundaries of DESIGN.md §2, checked on the source."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Pure-Python packages the agent zipapp bundles.
BUNDLED = {"h2", "hpack", "hyperframe"}


def imported_modules(package: str) -> list[tuple[Path, int, str]]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(path, node.lineno, a.name.split(".")[0]) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((path, node.lineno, node.module.split(".")[0]))
    return found


def test_agents_use_only_the_standard_library_and_bundled_packages() -> None:
    allowed = set(sys.stdlib_module_names) | BUNDLED | {"agents"}
    bad = [f"{p.relative_to(ROOT)}:{line}: {mod}" for p, line, mod in imported_modules("agents") if mod not in allowed]
    assert bad == []


def test_lab_never_imports_textual_or_tui() -> None:
    bad = [f"{p.relative_to(ROOT)}:{line}: {mod}" for p, line, mod in imported_modules("lab")
           if mod in ("textual", "tui")]
    assert bad == []


def test_tui_reaches_the_lab_only_through_its_client() -> None:
    """The TUI may use the lab API client (and its errors), nothing else of `lab`."""
    allowed = {"lab.client", "lab.errors"}
    bad = []
    for path in sorted((ROOT / "tui").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                     else [])
            bad += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names
                    if n.split(".")[0] == "lab" and n not in allowed]
    assert bad == []


def test_agent_zipapp_runs_with_a_bare_interpreter(tmp_path: Path) -> None:
    """The zipapp starts with `python -I -S` (no site-packages): nothing outside it is needed."""
    from lab.zipapp import build_agent_zipapp

    pyz = build_agent_zipapp(tmp_path / "agents.pyz")
    names = zipfile.ZipFile(pyz).namelist()
    assert "__main__.py" in names and "agents/__main__.py" in names
    out = subprocess.run([sys.executable, "-I", "-S", str(pyz), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "node" in out.stderr
    # Every agent module imports cleanly from the zipapp alone.
    modules = [n[:-3].replace("/", ".").removesuffix(".__init__") for n in names
               if n.startswith("agents/") and n.endswith(".py") and not n.endswith("__main__.py")]
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\n"
    check = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {str(pyz)!r}); "
                            + "exec(" + repr(code) + ")", *modules], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr


def test_zipapp_is_rebuilt_only_when_its_content_changes(tmp_path: Path) -> None:
    from lab.zipapp import build_agent_zipapp

    pyz = build_agent_zipapp(tmp_path / "agents.pyz")
    mtime = pyz.stat().st_mtime_ns
    build_agent_zipapp(pyz)
    assert pyz.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("package", ["agents", "lab", "tui"])
def test_packages_compile(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        compile(path.read_text(), str(path), "exec")
