"""`python3 agents.pyz waypoint --node N --namespace NS --name NAME --address A --cp HOST:PORT ...` and
`python3 agents.pyz sidecar --node N --workload W --address A --cp HOST:PORT ...`.

Each runs one L7 proxy until SIGTERM, connected to the control plane's agent channel as
agent `waypoint:NS/NAME` or `sidecar:W` (node N's bootstrap token), serving with its last
good config when the control plane is away. Access log lines (JSON) go to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from agents.common.channel import AgentChannel
from agents.proxy.agent import L7Agent
from agents.proxy.sidecar import Sidecar
from agents.proxy.waypoint import Waypoint
from agents.ztunnel.agent import Ports
from agents.ztunnel.main import _host_port, _quiet_network_errors

log = logging.getLogger("meshlab.proxy")


def parse_args(kind: str, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"agents.pyz {kind}", description=f"Run a {kind} (L7 mesh proxy).")
    parser.add_argument("--node", required=True, help="the node it runs on (its bootstrap token is used)")
    if kind == "waypoint":
        parser.add_argument("--namespace", required=True, help="the waypoint's namespace")
        parser.add_argument("--name", required=True, help="the waypoint's name (its service account too)")
    else:
        parser.add_argument("--workload", required=True, help="the workload this sidecar serves")
    parser.add_argument("--address", required=True, help="the proxy's own address (admin, metrics, ready; "
                                                         "the waypoint's HBONE, the sidecar's outbound)")
    parser.add_argument("--cp", required=True, type=_host_port, help="the control plane's agent channel, HOST:PORT")
    parser.add_argument("--token-file", required=True, help="the node's bootstrap token")
    parser.add_argument("--root-file", required=True, help="the lab root certificate (PEM)")
    parser.add_argument("--hbone-port", type=int, default=Ports.hbone)
    parser.add_argument("--admin-port", type=int, default=Ports.admin)
    parser.add_argument("--metrics-port", type=int, default=Ports.metrics)
    parser.add_argument("--ready-port", type=int, default=Ports.ready)
    return parser.parse_args(argv)


async def run(kind: str, args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_network_errors)
    with open(args.token_file, encoding="utf-8") as f:
        token = f.read().strip()
    channel: AgentChannel | None = None

    async def request_cert(identity: str, csr: bytes) -> tuple[bytes, bytes]:
        assert channel is not None
        return await channel.request_cert(identity, csr)

    ports = Ports(args.hbone_port, args.admin_port, args.metrics_port, args.ready_port)
    agent: L7Agent = (Waypoint if kind == "waypoint" else Sidecar)(args.node, args.address, request_cert, ports)
    name = f"waypoint:{args.namespace}/{args.name}" if kind == "waypoint" else f"sidecar:{args.workload}"
    try:
        await agent.start()
    except OSError as e:
        log.error("cannot start: %s", e.strerror or e)
        await agent.close()
        return 1
    channel = AgentChannel(args.cp[0], args.cp[1], args.root_file, args.node, name, token, agent.apply)
    agent.control_plane = lambda: {"address": f"{args.cp[0]}:{args.cp[1]}", "connected": channel.connected.is_set(),
                                   "acked_version": channel.version, "reconnects": channel.reconnects}
    channel.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await channel.close()
    await agent.close()
    return 0


def main_of(kind: str, argv: list[str]) -> int:
    args = parse_args(kind, argv)
    who = args.name if kind == "waypoint" else args.workload
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s {kind}[{who}] %(name)s: %(message)s")
    try:
        return asyncio.run(run(kind, args))
    except OSError as e:
        log.error("cannot start: %s", e)
        return 1


def waypoint_main(argv: list[str]) -> int:
    return main_of("waypoint", argv)


def sidecar_main(argv: list[str]) -> int:
    return main_of("sidecar", argv)
