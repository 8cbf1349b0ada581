"""Entry point of the agent zipapp: `python3 agents.pyz COMMAND [ARGS...]`."""

from __future__ import annotations

import importlib
import sys

# command -> "module" with a `main(argv: list[str]) -> int`, or "module:function" of that shape
COMMANDS = {
    "node": "agents.node.supervisor",
    "demo": "agents.demo",
    "loadgen": "agents.loadgen",
    "ztunnel": "agents.ztunnel.main",
    "waypoint": "agents.proxy.main:waypoint_main",
    "sidecar": "agents.proxy.main:sidecar_main",
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        print("usage: agents.pyz {" + ",".join(COMMANDS) + "} [ARGS...]", file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    module_name, _, function = COMMANDS[args[0]].partition(":")
    entry = getattr(importlib.import_module(module_name), function or "main")
    return int(entry(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
