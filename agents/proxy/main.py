"""`python3 agents.pyz waypoint --node N --namespace NS --name NAME --address A --cp HOST:PORT ...` and
`python3 agents.pyz sidecar --node N --workload W --address A --cp HOST:PORT ...`.

Each runs one L7 proxy until SIGTERM, connected to the control plane's agent channel as
agent `waypoint:NS/NAME` or `sidecar:W` (node N's bootstrap token), serving with its last
good config when the control plane is away. Access log lines (JSON) go to stdout.
"""

from __future__ import annotations

import argparse

from agents.common.agent_main import add_channel_options, run_agent, run_main
from agents.proxy.sidecar import Sidecar
from agents.proxy.waypoint import Waypoint
from agents.ztunnel.agent import Ports


def parse_args(kind: str, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"agents.pyz {kind}", description=f"Run a {kind} (L7 mesh proxy).")
    parser.add_argument("--node", required=True, help="the node it runs on (its bootstrap token is used)")
    if kind == "waypoint":
        parser.add_argument("--namespace", required=True, help="the waypoint's namespace")
        parser.add_argument("--name", required=True, help="the waypoint's name (its service account too)")
    else:
        parser.add_argument("--workload", required=True, help="the workload this sidecar serves")
    add_channel_options(parser, "the proxy's own address (admin, metrics, ready; the waypoint's HBONE, "
                                "the sidecar's outbound)")
    return parser.parse_args(argv)


def main_of(kind: str, argv: list[str]) -> int:
    args = parse_args(kind, argv)
    ports = Ports(args.hbone_port, args.admin_port, args.metrics_port, args.ready_port)
    proxy = Waypoint if kind == "waypoint" else Sidecar
    name = f"waypoint:{args.namespace}/{args.name}" if kind == "waypoint" else f"sidecar:{args.workload}"
    who = args.name if kind == "waypoint" else args.workload
    return run_main(lambda: run_agent(lambda request_cert: proxy(args.node, args.address, request_cert, ports),
                                      args, name), f"{kind}[{who}]")


def waypoint_main(argv: list[str]) -> int:
    return main_of("waypoint", argv)


def sidecar_main(argv: list[str]) -> int:
    return main_of("sidecar", argv)
