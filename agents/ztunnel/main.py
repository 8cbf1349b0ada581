"""`python3 agents.pyz ztunnel --node NODE --address ADDR --cp HOST:PORT --token-file F --root-file F`.

Runs one node's ztunnel until SIGTERM: connects to the control plane's agent
channel (agent `ztunnel`), serves with the last good config and certificates
when the control plane is away, and exits 0 on SIGTERM after closing its
sockets. Access log lines (JSON) go to stdout, everything else to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from typing import Any

from agents.common.channel import AgentChannel
from agents.ztunnel.agent import Ports, Ztunnel

log = logging.getLogger("meshlab.ztunnel")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="agents.pyz ztunnel", description="Run a node's ztunnel (L4 mesh proxy).")
    parser.add_argument("--node", required=True, help="the node this ztunnel serves")
    parser.add_argument("--address", required=True, help="the node address: HBONE, admin, metrics and ready bind it")
    parser.add_argument("--cp", required=True, type=_host_port, help="the control plane's agent channel, HOST:PORT")
    parser.add_argument("--token-file", required=True, help="the node's bootstrap token")
    parser.add_argument("--root-file", required=True, help="the lab root certificate (PEM)")
    parser.add_argument("--hbone-port", type=int, default=Ports.hbone)
    parser.add_argument("--admin-port", type=int, default=Ports.admin)
    parser.add_argument("--metrics-port", type=int, default=Ports.metrics)
    parser.add_argument("--ready-port", type=int, default=Ports.ready)
    return parser.parse_args(argv)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"want HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


async def run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_network_errors)
    with open(args.token_file, encoding="utf-8") as f:
        token = f.read().strip()
    channel: AgentChannel | None = None

    async def request_cert(identity: str, csr: bytes) -> tuple[bytes, bytes]:
        assert channel is not None
        return await channel.request_cert(identity, csr)

    ports = Ports(args.hbone_port, args.admin_port, args.metrics_port, args.ready_port)
    agent = Ztunnel(args.node, args.address, request_cert, ports)
    try:
        await agent.start()
    except OSError as e:
        log.error("cannot start: %s", e.strerror or e)
        await agent.close()
        return 1
    channel = AgentChannel(args.cp[0], args.cp[1], args.root_file, args.node, "ztunnel", token, agent.apply)
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


def _quiet_network_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """One line, no traceback, for the network errors a proxy sees all day; the default handler otherwise."""
    exc = context.get("exception")
    if isinstance(exc, (OSError, ssl.SSLError, EOFError)):
        log.info("%s: %s", context.get("message", "network error"), exc)
        return
    loop.default_exception_handler(context)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s ztunnel[{args.node}] %(name)s: %(message)s")
    try:
        return asyncio.run(run(args))
    except OSError as e:  # the token or root file is unreadable
        log.error("cannot start: %s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
