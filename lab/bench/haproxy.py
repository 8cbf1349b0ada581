"""HAProxy as the L7 baseline: one process, one thread, HTTP mode, keep-alive on both sides."""

from __future__ import annotations

import shutil
import subprocess
from contextlib import ExitStack
from pathlib import Path

from lab.bench.l4 import _free_port, _stop, _wait_port

CONFIG = """global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    http-reuse always
    option http-no-delay
frontend bench
    bind {listen}
    default_backend upstream
backend upstream
    server upstream {upstream}
"""


def haproxy_binary() -> str | None:
    """HAProxy's path (Debian puts it in /usr/sbin, which is not always on PATH)."""
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if Path(p).exists()), None)


def start_haproxy(stack: ExitStack, folder: Path, upstream: str, host: str = "127.0.0.1") -> tuple[int, int]:
    """Start HAProxy in front of `upstream` (host:port); returns its pid and listening port."""
    binary = haproxy_binary()
    if binary is None:
        raise RuntimeError("haproxy not installed (scripts/install-bench-tools.sh)")
    port = _free_port()
    conf = folder / "haproxy.cfg"
    conf.write_text(CONFIG.format(listen=f"{host}:{port}", upstream=upstream))
    log = open(folder / "haproxy.log", "w")
    stack.callback(log.close)
    # -db: stay in the foreground, one process (no master/worker), so its pid is the one doing the work.
    proc = subprocess.Popen([binary, "-db", "-f", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    stack.callback(_stop, proc)
    _wait_port(port)
    return proc.pid, port
