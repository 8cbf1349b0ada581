"""The tunnel keeper of a lab with ssh nodes: keeps the forwards between the lab and its ssh nodes up.

Agents on an ssh node reach the control plane at `127.0.0.1:<channel_port>` on their host. That
port is a reverse forward over an SSH connection the lab holds: no inbound port is opened on
the lab host. The other way, the lab reaches the agents' metrics and ready ports (15020, 15021)
through a SOCKS5 listener per node on this machine's 127.0.0.1 (SSH dynamic forwarding, `ssh -D`;
`lab.controlplane.reach` is its client): the host's sshd opens those connections on the host, so
neither the host's address nor its loopback (where waypoints and sidecars listen) needs to be
reachable from here. Its port is chosen once per node and kept across reconnections. `meshlab up` exits, so the connections live in this small process, one per lab,
started by the ssh provider and tagged like every lab process (`MESHLAB_NODE=ssh-tunnels`), so
`down` and `clean` find it. It reconnects with backoff when a connection drops (the nodes keep
serving meanwhile: agents keep their last config and reconnect on their own).

Files in `<lab dir>/ssh/`: `tunnels.json` (what to keep up, written by the provider, re-read
every half second), `status.json` (per node: connected/connecting, since, reconnects, last error;
`meshlab status` shows it) and `keeper.pid`.

`python -m lab.providers.sshtunnel --lab LAB --dir LAB_DIR`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lab.errors import ProvisionError
from lab.providers import proctags
from lab.providers.sshconn import SshTarget, asyncssh, close_quietly, connect, target_from_json
from lab.state import atomic_write

KEEPER_NODE = "ssh-tunnels"
AGENT_CHANNEL_PORT = 15012  # the control plane's agent channel (lab.controlplane.bootstrap)
CONNECT_WAIT = 20.0  # how long `up` waits for a node's forward before it reports why not
BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)
REPO = Path(__file__).resolve().parents[2]


def _folder(lab_dir: Path) -> Path:
    return lab_dir / "ssh"


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def connection_state(lab_dir: Path, node: str) -> dict[str, Any] | None:
    """The keeper's word on the node's connection, None when the node has no tunnel."""
    entry = _read(_folder(lab_dir) / "status.json").get(node)
    if entry is None:
        return None
    if _keeper_pid(lab_dir) is None:
        return {**entry, "state": "down", "error": "the lab's tunnel keeper is not running (`meshlab up` restarts it)"}
    return dict(entry)


# -- the provider's side ---------------------------------------------------------------------------------

def _channel_address(lab_dir: Path) -> str | None:
    """The control plane's address for agents of non-docker nodes, from the lab's state (None: no lab)."""
    from lab.controlplane.bootstrap import channel_address

    state = _read(lab_dir / "state.json")
    return channel_address(state) if state.get("block") else None


async def add_node(lab: str, lab_dir: Path, node: str, target: SshTarget) -> None:
    """Keep a reverse forward for `node` up (a lab without a control plane needs none)."""
    destination = _channel_address(lab_dir)
    if destination is None:
        return
    tunnels = _read(_folder(lab_dir) / "tunnels.json")
    socks_port = (tunnels.get(node) or {}).get("socksPort") or _free_port()
    tunnels[node] = {"target": target.to_json(), "remotePort": target.channel_port,
                     "destination": [destination, AGENT_CHANNEL_PORT], "socksPort": socks_port}
    atomic_write(_folder(lab_dir) / "tunnels.json", json.dumps(tunnels, indent=1), mode=0o600)
    if _keeper_pid(lab_dir) is None:
        _spawn(lab, lab_dir)
    deadline = time.monotonic() + CONNECT_WAIT
    while True:
        state = _read(_folder(lab_dir) / "status.json").get(node) or {}
        if (state.get("state") == "connected" and state.get("remotePort") == target.channel_port
                and state.get("socksPort") == socks_port):
            return
        if time.monotonic() > deadline:
            raise ProvisionError(f"node {node}: no reverse forward to the control plane on {target.where} "
                                 f"within {CONNECT_WAIT:g}s: {state.get('error') or 'the tunnel keeper did not report'}"
                                 f" (log: {_folder(lab_dir) / 'keeper.log'})")
        await asyncio.sleep(0.1)


async def remove_node(lab: str, lab_dir: Path, node: str) -> None:
    """Drop the node's forward; the lab's last ssh node takes the keeper with it."""
    path = _folder(lab_dir) / "tunnels.json"
    tunnels = _read(path)
    if tunnels.pop(node, None) is not None:
        atomic_write(path, json.dumps(tunnels, indent=1), mode=0o600)
    if not tunnels:
        await asyncio.to_thread(proctags.kill_tagged, lab, KEEPER_NODE)
        for name in ("tunnels.json", "status.json", "keeper.pid"):
            (_folder(lab_dir) / name).unlink(missing_ok=True)


def socks_address(lab_dir: Path, node: str) -> str | None:
    """Where the lab reaches the node's agents (a SOCKS5 listener on 127.0.0.1), None without a tunnel."""
    port = (_read(_folder(lab_dir) / "tunnels.json").get(node) or {}).get("socksPort")
    return f"127.0.0.1:{port}" if port else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keeper_pid(lab_dir: Path) -> int | None:
    try:
        pid = int((_folder(lab_dir) / "keeper.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    tags = proctags.tags_of(pid)
    return pid if tags is not None and tags[1] == KEEPER_NODE and tags[2] == proctags.home_tag() else None


def _spawn(lab: str, lab_dir: Path) -> None:
    folder = _folder(lab_dir)
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MESHLAB_LAB": lab, "MESHLAB_NODE": KEEPER_NODE, "MESHLAB_HOME": proctags.home_tag(),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(folder / "keeper.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lab.providers.sshtunnel", "--lab", lab, "--dir", str(lab_dir)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env,
                                cwd=folder, start_new_session=True)
    (folder / "keeper.pid").write_text(f"{proc.pid}\n")


# -- the keeper ---------------------------------------------------------------------------------------------

def _say(message: str) -> None:
    print(f"[meshlab ssh-tunnels {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Keeper:
    """One task per host: connect, forward, wait for the connection to drop, connect again."""

    def __init__(self, lab: str, lab_dir: Path) -> None:
        self.lab, self.folder = lab, _folder(lab_dir)
        self.status: dict[str, dict[str, Any]] = _read(self.folder / "status.json")
        self.hosts: dict[str, tuple[str, asyncio.Task[None]]] = {}  # host key -> (its config, task)

    def _set(self, nodes: list[str], **fields: Any) -> None:
        for node in nodes:
            self.status[node] = {**self.status.get(node, {}), **fields}
        atomic_write(self.folder / "status.json", json.dumps(self.status, indent=1))

    async def run(self) -> None:
        idle_since: float | None = None
        while True:
            tunnels = _read(self.folder / "tunnels.json")
            if not tunnels:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 5:
                    break
            else:
                idle_since = None
            self._reconcile(tunnels)
            await asyncio.sleep(0.5)
        for _, task in self.hosts.values():
            task.cancel()

    def _reconcile(self, tunnels: dict[str, Any]) -> None:
        groups: dict[str, dict[str, Any]] = {}
        for node, entry in sorted(tunnels.items()):
            key = json.dumps({k: v for k, v in entry["target"].items()
                              if k in ("host", "port", "user", "identity", "known_hosts", "insecure_host_key")},
                             sort_keys=True)
            groups.setdefault(key, {})[node] = entry
        for key in list(self.hosts):
            if key not in groups:
                self.hosts.pop(key)[1].cancel()
        for key, nodes in groups.items():
            config = json.dumps(nodes, sort_keys=True)
            if key in self.hosts and self.hosts[key][0] == config:
                continue
            if key in self.hosts:
                self.hosts[key][1].cancel()
            self.hosts[key] = (config, asyncio.create_task(self._host(nodes)))
        for node in [n for n in self.status if n not in tunnels]:
            del self.status[node]
            atomic_write(self.folder / "status.json", json.dumps(self.status, indent=1))

    async def _host(self, nodes: dict[str, Any]) -> None:
        names = sorted(nodes)
        first = next(iter(nodes.values()))
        target = target_from_json(names[0], first["target"])
        forwards = {(e["remotePort"], tuple(e["destination"])) for e in nodes.values()}
        failures = 0
        while True:
            self._set(names, state="connecting", host=target.where)
            conn = None
            try:
                conn = await connect(target)
                for remote_port, (dest_host, dest_port) in sorted(forwards):
                    await self._forward(conn, remote_port, dest_host, dest_port)
                for node in names:
                    if nodes[node].get("socksPort"):
                        await self._socks(conn, int(nodes[node]["socksPort"]))
                for node in names:
                    previous = self.status.get(node, {})
                    reconnects = previous.get("reconnects", -1) + 1 if previous.get("connectedAt") else 0
                    self._set([node], state="connected", since=time.time(), connectedAt=time.time(),
                              reconnects=reconnects, error=None, remotePort=nodes[node]["remotePort"],
                              socksPort=nodes[node].get("socksPort"))
                _say(f"{target.where}: connected, forwarding {sorted(forwards)} for {', '.join(names)}")
                failures = 0
                await conn.wait_closed()
                _say(f"{target.where}: connection lost; reconnecting")
                self._set(names, state="reconnecting", since=time.time(), error="connection lost")
            except asyncio.CancelledError:
                if conn is not None:
                    await close_quietly(conn)
                raise
            except (ProvisionError, asyncssh.Error, OSError) as e:
                reason = str(getattr(e, "reason", None) or e)
                _say(f"{target.where}: {reason}")
                self._set(names, state="reconnecting", error=reason)
                if conn is not None:
                    await close_quietly(conn)
            await asyncio.sleep(BACKOFF[min(failures, len(BACKOFF) - 1)])
            failures += 1

    async def _socks(self, conn: Any, port: int) -> None:
        """The node's SOCKS listener on 127.0.0.1:port; its previous one may still be closing: retry a while."""
        for delay in (0.1, 0.2, 0.5, 1.0, 2.0, None):
            try:
                await conn.forward_socks("127.0.0.1", port)
                return
            except OSError as e:
                if delay is None:
                    raise ProvisionError(f"cannot listen on 127.0.0.1:{port} on the lab host for the node's "
                                         f"agent ports: {e.strerror or e}") from None
                await asyncio.sleep(delay)

    async def _forward(self, conn: Any, remote_port: int, dest_host: str, dest_port: int) -> None:
        # A listener of the dropped session may linger on the host until sshd notices: retry a while.
        for delay in (0.2, 0.5, 1.0, 2.0, 3.0, None):
            try:
                await conn.forward_remote_port("127.0.0.1", remote_port, dest_host, dest_port)
                return
            except asyncssh.ChannelListenError as e:
                if delay is None:
                    raise ProvisionError(f"cannot listen on 127.0.0.1:{remote_port} there ({e.reason}): is another "
                                         "lab using that host? give this node another ssh.channel_port") from None
                await asyncio.sleep(delay)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.providers.sshtunnel")
    parser.add_argument("--lab", required=True)
    parser.add_argument("--dir", required=True, type=Path)
    args = parser.parse_args(argv)
    keeper = Keeper(args.lab, args.dir)
    (keeper.folder / "keeper.pid").write_text(f"{os.getpid()}\n")
    _say(f"tunnel keeper of lab {args.lab} pid {os.getpid()}")
    try:
        asyncio.run(keeper.run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
