"""`python -m tui [--lab NAME] [--mesh MODE] [--load TARGET]`: what `meshlab tui` and `make lab` run."""

from __future__ import annotations

import argparse
import sys

from tui.app import run
from tui.quick_actions import WarmUp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshlab tui", description="open the terminal UI on a running lab")
    parser.add_argument("--lab", help="lab name (default: the only lab)")
    parser.add_argument("--mesh", choices=["ambient", "sidecar"],
                        help="on open, move every namespace in mode none to this mode")
    parser.add_argument("--load", metavar="SERVICE:PORT/PATH",
                        help="on open, start a bounded load run against this target unless one is running")
    parser.add_argument("--load-qps", type=float, default=10.0, help="requests per second of that run (10)")
    parser.add_argument("--load-duration", default="10m", help="how long that run lasts (10m, at most 1h)")
    args = parser.parse_args(argv)
    warm = None
    if args.mesh or args.load:
        warm = WarmUp(args.mesh, args.load or "", args.load_qps, args.load_duration)
    return run(args.lab, warm)


if __name__ == "__main__":
    sys.exit(main())
