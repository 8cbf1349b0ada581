"""`demo NAME [--bind ADDR] [--port N] [--version V]`: run a demo workload.

Servers listen on MESH_BIND_ADDR:MESH_PORT (flags override); `sleep` is a client that idles.
"""

from __future__ import annotations

import argparse
import os
import random
import urllib.parse
import signal
import sys

from agents.common.http import App, make_server, serve_until_terminated
from agents.common.resolve import env_identity

DEFAULT_PORTS = {"productpage": 9080, "details": 9080, "reviews": 9080, "ratings": 9080, "echo": 8080}
NAMES = (*DEFAULT_PORTS, "sleep")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line arguments (exit 2 with usage on errors)."""
    parser = argparse.ArgumentParser(prog="demo", description="Run a meshlab demo workload.")
    parser.add_argument("name", choices=NAMES, help="which demo to run")
    parser.add_argument("--bind", help="listen address (default: $MESH_BIND_ADDR or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: $MESH_PORT or the demo's port)")
    parser.add_argument("--version", help="version to report (default: $MESH_VERSION or v1)")
    args = parser.parse_args(argv)
    if args.port is None:
        env_port = os.environ.get("MESH_PORT", "")
        if env_port and not env_port.isdigit():
            parser.error(f"MESH_PORT={env_port!r} is not a port number")
        args.port = int(env_port) if env_port and int(env_port) else DEFAULT_PORTS.get(args.name, 0)
    if not 0 <= args.port <= 65535:
        parser.error(f"port {args.port} out of range")
    args.bind = args.bind or os.environ.get("MESH_BIND_ADDR") or "127.0.0.1"
    return args


def build_app(name: str, version: str | None = None) -> App:
    """The app for a server demo, configured from the environment (ValueError on bad settings)."""
    if name == "echo":
        from agents.demo.echo import Echo, plan_for

        identity = env_identity()
        identity["version"] = version or identity["version"]
        defaults = dict(urllib.parse.parse_qsl(os.environ.get("MESH_ECHO_DEFAULTS", "")))
        plan_for(defaults, random.Random())  # a bad MESH_ECHO_DEFAULTS is a ValueError at start, not per request
        return Echo(identity, defaults=defaults)
    from agents.demo.bookinfo import BookinfoConfig, make_app

    config = BookinfoConfig.from_env(name)
    if version:
        config.version = version
    return make_app(name, config)


def sleep_forever() -> int:
    """Idle until SIGTERM/SIGINT (a client workload to exec into)."""
    signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    print("sleep: idle until SIGTERM", flush=True)
    signal.sigwait(signals)
    return 0


def main(argv: list[str]) -> int:
    """Run the demo named in argv."""
    args = parse_args(argv)
    if args.name == "sleep":
        return sleep_forever()
    try:
        app = build_app(args.name, args.version)
    except ValueError as exc:
        print(f"demo {args.name}: {exc}", file=sys.stderr)
        return 2
    try:
        server = make_server(app, args.bind, args.port, name=args.name)
    except OSError as exc:
        print(f"demo {args.name}: cannot listen on {args.bind}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return serve_until_terminated(server)
