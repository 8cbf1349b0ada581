"""What every mesh agent's command line shares: the agent-channel options and the run loop.

`add_channel_options(parser)` adds `--node --address --cp --token-file --root-file` and
the agent's ports; `run_agent(make, args, name)` builds the agent with a certificate
requester, binds its ports, connects it to the control plane's agent channel as `name`
(with the node's bootstrap token), and serves until SIGTERM or SIGINT, then closes
everything and returns 0 (1 when its ports cannot be bound).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from agents.common.channel import AgentChannel

log = logging.getLogger("meshlab.agent")

RequestCert = Callable[[str, bytes], Awaitable[tuple[bytes, bytes]]]


class Agent(Protocol):
    control_plane: Callable[[], dict[str, Any]]

    async def start(self) -> None: ...
    async def apply(self, version: int, raw: Any) -> None: ...
    async def close(self) -> None: ...


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"want HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def add_channel_options(parser: argparse.ArgumentParser, address_help: str) -> None:
    """The options every agent has: where it runs, how it reaches the control plane, its ports."""
    parser.add_argument("--address", required=True, help=address_help)
    parser.add_argument("--cp", required=True, type=host_port, help="the control plane's agent channel, HOST:PORT")
    parser.add_argument("--token-file", required=True, help="the node's bootstrap token")
    parser.add_argument("--root-file", required=True, help="the lab root certificate (PEM)")
    parser.add_argument("--hbone-port", type=int, default=15008)
    parser.add_argument("--admin-port", type=int, default=15000)
    parser.add_argument("--metrics-port", type=int, default=15020)
    parser.add_argument("--ready-port", type=int, default=15021)


def quiet_network_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """One line, no traceback, for the network errors a proxy sees all day; the default handler otherwise."""
    exc = context.get("exception")
    if isinstance(exc, (OSError, ssl.SSLError, EOFError)):
        log.info("%s: %s", context.get("message", "network error"), exc)
        return
    loop.default_exception_handler(context)


async def run_agent(make: Callable[[RequestCert], Agent], args: argparse.Namespace, name: str) -> int:
    """Serve one agent on the agent channel until SIGTERM (see the module docstring)."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(quiet_network_errors)
    with open(args.token_file, encoding="utf-8") as f:
        token = f.read().strip()
    channel: AgentChannel | None = None

    async def request_cert(identity: str, csr: bytes) -> tuple[bytes, bytes]:
        assert channel is not None
        return await channel.request_cert(identity, csr)

    agent = make(request_cert)
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


def run_main(coroutine: Callable[[], Awaitable[int]], label: str) -> int:
    """`asyncio.run` with stderr logging named `label`; an unreadable token or root file is one error line."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s {label} %(name)s: %(message)s")
    try:
        return asyncio.run(coroutine())
    except OSError as e:
        log.error("cannot start: %s", e)
        return 1
