"""Where the lab reaches an agent's HTTP ports (15020 metrics, 15021 ready): directly, or through its ssh node.

Local and docker agents listen on addresses this machine routes to, so the lab calls them directly.
An agent on an ssh node listens on the host's address (a ztunnel) or on the host's loopback (a
waypoint, a sidecar): neither needs to be reachable from the lab host. The lab's tunnel keeper holds
a SOCKS5 listener on this machine's 127.0.0.1 for every ssh node (SSH dynamic forwarding, `ssh -D`),
and a request to such an agent goes through it: the host's sshd opens the connection on the host.

`routes(state)` maps agent addresses to their node's SOCKS listener; `get(address, port, path, ...)` is
the one HTTP GET every scrape and readiness probe uses.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from lab.state import lab_dir

Routes = dict[str, str]  # agent address -> "127.0.0.1:port" of its ssh node's SOCKS listener


def node_routes(state: dict[str, Any]) -> dict[str, str]:
    """ssh node -> its SOCKS listener, as the lab's tunnel keeper holds it (`<lab dir>/ssh/tunnels.json`)."""
    if not any(n.get("provider") == "ssh" for n in state.get("nodes", {}).values()):
        return {}
    try:
        tunnels = json.loads((lab_dir(str(state["lab"])) / "ssh" / "tunnels.json").read_text())
    except (OSError, ValueError, KeyError):
        return {}
    return {node: f"127.0.0.1:{entry['socksPort']}" for node, entry in tunnels.items()
            if isinstance(entry, dict) and entry.get("socksPort") and node in state["nodes"]}


def routes(state: dict[str, Any]) -> Routes:
    """Every agent of the lab's ssh nodes (ztunnel, waypoints, sidecars) -> its node's SOCKS listener."""
    via = node_routes(state)
    if not via:
        return {}
    out = {n["address"]: via[name] for name, n in state["nodes"].items() if name in via}
    for w in (state.get("waypoints") or {}).values():
        if w.get("node") in via:
            out[w["address"]] = via[w["node"]]
    for w in state.get("workloads", {}).values():
        if w.get("node") in via and w.get("sidecarAddress"):
            out[w["sidecarAddress"]] = via[w["node"]]
    return out


def where(address: str, port: int, routes: Routes | None = None) -> str:
    """How the lab reaches `address:port`, for messages: `ADDR:PORT` or `ADDR:PORT via socks 127.0.0.1:N`."""
    via = (routes or {}).get(address)
    return f"{address}:{port}" + (f" via socks {via}" if via else "")


class _SocksConnection(http.client.HTTPConnection):
    """An HTTP connection opened through a SOCKS5 listener (no authentication, CONNECT to an IPv4 address)."""

    def __init__(self, host: str, port: int, via: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._via = via

    def connect(self) -> None:
        proxy_host, _, proxy_port = self._via.rpartition(":")
        sock = socket.create_connection((proxy_host, int(proxy_port)), self.timeout)
        try:
            sock.sendall(b"\x05\x01\x00")
            if _read(sock, 2) != b"\x05\x00":
                raise ConnectionRefusedError(f"SOCKS listener {self._via} refused the handshake")
            sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(self.host) + self.port.to_bytes(2, "big"))
            reply = _read(sock, 4)
            if reply[1] != 0:
                raise ConnectionRefusedError(f"SOCKS listener {self._via}: no connection to {self.host}:{self.port}")
            _read(sock, {1: 4, 4: 16}.get(reply[3], 4) + 2)  # the bound address, unused
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("the SOCKS listener closed the connection")
        data += chunk
    return data


def get(address: str, port: int, path: str, timeout: float, routes: Routes | None = None) -> tuple[int, bytes]:
    """GET http://address:port/path, through the agent's SOCKS route if it has one: (status, body); OSError if none."""
    via = (routes or {}).get(address)
    conn: http.client.HTTPConnection = (_SocksConnection(address, port, via, timeout) if via
                                        else http.client.HTTPConnection(address, port, timeout=timeout))
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read()
    except http.client.HTTPException as e:
        raise ConnectionError(f"{where(address, port, routes)}: {e!r}") from None
    finally:
        conn.close()
