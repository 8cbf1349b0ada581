"""`python3 agents.pyz ztunnel --node NODE --address ADDR --cp HOST:PORT --token-file F --root-file F`.

Runs one node's ztunnel until SIGTERM: connects to the control plane's agent
channel (agent `ztunnel`), serves with the last good config and certificates
when the control plane is away, and exits 0 on SIGTERM after closing its
sockets. Access log lines (JSON) go to stdout, everything else to stderr.
"""

from __future__ import annotations

import argparse
import sys

from agents.common.agent_main import add_channel_options, run_agent, run_main
from agents.ztunnel.agent import Ports, Ztunnel


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="agents.pyz ztunnel", description="Run a node's ztunnel (L4 mesh proxy).")
    parser.add_argument("--node", required=True, help="the node this ztunnel serves")
    add_channel_options(parser, "the node address: HBONE, admin, metrics and ready bind it")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    ports = Ports(args.hbone_port, args.admin_port, args.metrics_port, args.ready_port)
    return run_main(lambda: run_agent(lambda request_cert: Ztunnel(args.node, args.address, request_cert, ports),
                                      args, "ztunnel"), f"ztunnel[{args.node}]")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
