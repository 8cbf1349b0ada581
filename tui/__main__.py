"""`python -m tui [--lab NAME]`: what `meshlab tui` runs."""

from __future__ import annotations

import argparse
import sys

from tui.app import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshlab tui", description="open the terminal UI on a running lab")
    parser.add_argument("--lab", help="lab name (default: the only lab)")
    args = parser.parse_args(argv)
    return run(args.lab)


if __name__ == "__main__":
    sys.exit(main())
