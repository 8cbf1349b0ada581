"""SSH connections to the hosts of ssh nodes: node settings, one reused connection per host, clear errors.

A node's `ssh:` mapping in the topology (NodeSpec.settings["ssh"]) says how to log in. What it
leaves out comes from `~/.ssh/config`, the default keys and the ssh-agent, as with `ssh`. Host
keys are checked against known_hosts; `insecure_host_key: true` turns that off for throwaway labs.
asyncssh's errors become ProvisionError here, naming the node, the host and what to do.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from dataclasses import dataclass
from typing import Any

from lab.errors import ProvisionError

try:
    import asyncssh
except ImportError:  # a declared dependency; without it only this provider is unavailable
    asyncssh = None

CONNECT_TIMEOUT = 10.0
KEEPALIVE = 5.0  # seconds between keepalives; 3 unanswered ones drop the connection

SETTINGS = {
    "host": "the host to log into (an address or a name from ~/.ssh/config); required",
    "port": "the SSH port (default: ~/.ssh/config, else 22)",
    "user": "the login (default: ~/.ssh/config, else your user)",
    "identity": "a private key file (or a list of them); default: ~/.ssh/id_* and the ssh-agent",
    "known_hosts": "the known_hosts file to check the host key against (default ~/.ssh/known_hosts)",
    "insecure_host_key": "true: accept any host key (throwaway labs only)",
    "address": "the address other nodes reach this node on (port 15008); default: host, if an IP",
    "capture": "auto (default: explicit), explicit, or transparent (iptables; root or passwordless sudo)",
    "python": "the interpreter on the host (default python3)",
    "dir": "the folder for the lab's files on the host (default ~/.meshlab/labs)",
    "channel_port": "the port on the host's 127.0.0.1 where its agents reach the control plane (default 15012)",
}
CAPTURES = ("auto", "explicit", "transparent")


@dataclass(frozen=True)
class SshTarget:
    """How to reach one node's host, from its `ssh:` settings."""

    node: str
    host: str
    port: int | None = None
    user: str | None = None
    identity: tuple[str, ...] = ()
    known_hosts: str | None = None
    insecure_host_key: bool = False
    address: str | None = None
    capture: str = "auto"
    python: str = "python3"
    dir: str | None = None
    channel_port: int = 15012

    @property
    def key(self) -> tuple[Any, ...]:
        """Nodes with the same key share one connection."""
        return (self.host, self.port, self.user, self.identity, self.known_hosts, self.insecure_host_key)

    @property
    def where(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}{':' + str(self.port) if self.port else ''}"

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "user": self.user, "identity": list(self.identity),
                "known_hosts": self.known_hosts, "insecure_host_key": self.insecure_host_key,
                "address": self.address, "capture": self.capture, "python": self.python, "dir": self.dir,
                "channel_port": self.channel_port}


def parse_target(node: str, settings: dict[str, Any]) -> SshTarget:
    """The node's SshTarget; ProvisionError naming the node and the field for bad settings."""
    raw = settings.get("ssh")
    if not isinstance(raw, dict) or not raw.get("host"):
        raise ProvisionError(f"node {node}: an ssh node needs `ssh: {{host: ...}}` in the topology")
    unknown = sorted(set(raw) - set(SETTINGS))
    if unknown:
        raise ProvisionError(f"node {node}: unknown ssh setting(s) {', '.join(unknown)} (known: {', '.join(SETTINGS)})")

    def integer(field: str, default: int | None) -> int | None:
        value = raw.get(field, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise ProvisionError(f"node {node}: ssh.{field} must be a port number, not {value!r}")
        return value

    identity = raw.get("identity") or ()
    identity = (identity,) if isinstance(identity, str) else tuple(identity)
    if not all(isinstance(i, str) for i in identity):
        raise ProvisionError(f"node {node}: ssh.identity must be a file name or a list of them")
    capture = raw.get("capture", "auto")
    if capture not in CAPTURES:
        raise ProvisionError(f"node {node}: ssh.capture must be one of {', '.join(CAPTURES)}, not {capture!r}")
    insecure = raw.get("insecure_host_key", False)
    if not isinstance(insecure, bool):
        raise ProvisionError(f"node {node}: ssh.insecure_host_key must be true or false, not {insecure!r}")
    address = raw.get("address")
    if address is not None:
        try:
            ipaddress.IPv4Address(str(address))
        except ValueError:
            raise ProvisionError(f"node {node}: ssh.address must be an IPv4 address, not {address!r}") from None
    return SshTarget(node=node, host=str(raw["host"]), port=integer("port", None),
                     user=str(raw["user"]) if raw.get("user") else None,
                     identity=tuple(os.path.expanduser(i) for i in identity),
                     known_hosts=os.path.expanduser(str(raw["known_hosts"])) if raw.get("known_hosts") else None,
                     insecure_host_key=insecure, address=str(address) if address else None, capture=str(capture),
                     python=str(raw.get("python") or "python3"), dir=str(raw["dir"]) if raw.get("dir") else None,
                     channel_port=integer("channel_port", 15012) or 15012)


def target_from_json(node: str, doc: dict[str, Any]) -> SshTarget:
    return parse_target(node, {"ssh": {k: v for k, v in doc.items() if v not in (None, [])}})


def node_address(target: SshTarget) -> str | None:
    """Where other nodes reach the node: ssh.address, else the host when it is an IPv4 address."""
    if target.address:
        return target.address
    try:
        return str(ipaddress.IPv4Address(target.host))
    except ValueError:
        return None


def _require_asyncssh() -> None:
    if asyncssh is None:
        raise ProvisionError("the ssh provider needs the asyncssh package: `.venv/bin/pip install asyncssh`")


async def connect(target: SshTarget, timeout: float = CONNECT_TIMEOUT) -> Any:
    """A new connection to the node's host; ProvisionError saying why not."""
    _require_asyncssh()
    options: dict[str, Any] = {"connect_timeout": timeout, "keepalive_interval": KEEPALIVE,
                               "keepalive_count_max": 3}
    if target.port:
        options["port"] = target.port
    if target.user:
        options["username"] = target.user
    if target.identity:
        missing = [i for i in target.identity if not os.path.exists(i)]
        if missing:
            raise ProvisionError(f"node {target.node}: ssh.identity {', '.join(missing)} does not exist")
        options["client_keys"] = list(target.identity)
    if target.insecure_host_key:
        options["known_hosts"] = None
    elif target.known_hosts:
        if not os.path.exists(target.known_hosts):
            raise ProvisionError(f"node {target.node}: ssh.known_hosts {target.known_hosts} does not exist")
        options["known_hosts"] = target.known_hosts
    try:
        return await asyncio.wait_for(asyncssh.connect(target.host, **options), timeout + 5)
    except asyncssh.HostKeyNotVerifiable as e:
        known = target.known_hosts or "~/.ssh/known_hosts"
        port = target.port or 22
        raise ProvisionError(
            f"node {target.node}: the host key of {target.where} is not trusted ({e.reason}): it is not in {known}, "
            f"or it changed. If the host is the one you mean, add its key (`ssh-keyscan -p {port} {target.host} >> "
            f"{known}`); for a throwaway lab set `ssh: {{insecure_host_key: true}}` on the node") from None
    except asyncssh.PermissionDenied as e:
        keys = ", ".join(target.identity) or "the default keys and the ssh-agent"
        raise ProvisionError(f"node {target.node}: {target.where} refused the login ({e.reason}); tried {keys}: "
                             "check ssh.user and ssh.identity, or add the key to the host's authorized_keys") from None
    except asyncssh.Error as e:
        raise ProvisionError(f"node {target.node}: ssh to {target.where} failed: {e.reason}") from None
    except (OSError, TimeoutError) as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ProvisionError(f"node {target.node}: cannot reach ssh host {target.where}: {reason}") from None


class ConnectionPool:
    """One connection per host (per SshTarget.key), made on first use and made again once it dropped."""

    def __init__(self) -> None:
        self._conns: dict[tuple[Any, ...], Any] = {}
        self._locks: dict[tuple[Any, ...], asyncio.Lock] = {}

    async def get(self, target: SshTarget) -> Any:
        async with self._locks.setdefault(target.key, asyncio.Lock()):
            conn = self._conns.get(target.key)
            if conn is None or is_closed(conn):
                conn = await connect(target)
                self._conns[target.key] = conn
            return conn

    async def drop(self, target: SshTarget) -> None:
        conn = self._conns.pop(target.key, None)
        if conn is not None:
            await close_quietly(conn)

    async def close(self) -> None:
        for key in list(self._conns):
            await close_quietly(self._conns.pop(key))


def is_closed(conn: Any) -> bool:
    return bool(conn.is_closed())


async def close_quietly(conn: Any) -> None:
    conn.close()
    try:
        await asyncio.wait_for(conn.wait_closed(), 5)
    except (OSError, TimeoutError, asyncssh.Error if asyncssh else OSError):
        pass
