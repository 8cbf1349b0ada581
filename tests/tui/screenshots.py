"""Copy the main screens' SVG snapshots to docs/screenshots/ for the README: `python -m tests.tui.screenshots`."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOTS = Path(__file__).parent / "__snapshots__" / "test_snapshots"
SCREENS = {
    "test_main_screen[120x40].svg": "main-120x40.svg",
    "test_main_screen[80x24].svg": "main-80x24.svg",
    "test_detail_screens[workload_certificate].svg": "workload-certificate.svg",
    "test_detail_screens[agent_detail].svg": "agent-detail.svg",
    "test_detail_screens[access_logs].svg": "access-logs.svg",
    "test_detail_screens[resource_cost].svg": "resource-cost.svg",
    "test_detail_screens[mode_dialog].svg": "mode-dialog.svg",
    "test_detail_screens[faults].svg": "faults.svg",
    "test_detail_screens[fault_dialog].svg": "fault-dialog.svg",
    "test_config_editor_shows_problems_inline.svg": "config-editor.svg",
    "test_detail_screens[help].svg": "help.svg",
    "test_start_screen.svg": "start-screen.svg",
}


def main() -> None:
    target = ROOT / "docs" / "screenshots"
    target.mkdir(parents=True, exist_ok=True)
    for snapshot, name in SCREENS.items():
        shutil.copyfile(SNAPSHOTS / snapshot, target / name)
        print(f"docs/screenshots/{name}")


if __name__ == "__main__":
    main()
