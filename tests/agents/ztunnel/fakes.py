"""Test doubles for the ztunnel suite: a control plane on the agent channel, TCP workloads, a lab topology.

The fake control plane runs on its own event loop in a thread and speaks the
channel's JSON lines (agents/common/channel.py): it checks the bootstrap token,
streams the snapshot of each node, records ACKs and NACKs, and signs CSRs with a
`LabCA` and a TTL of the test's choosing. Tests drive it with plain calls.
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from lab.ca import LabCA

ROOT = Path(__file__).resolve().parents[3]
TRUST_DOMAIN = "cluster.local"


# ---------------------------------------------------------------- control plane


class FakeControlPlane:
    """The control plane's agent channel, just enough of it: configs, ACK/NACK, certificates."""

    def __init__(self, ca: LabCA, host: str, tokens: dict[str, str], ttl: timedelta, folder: Path) -> None:
        self.ca, self.host, self.tokens, self.ttl = ca, host, tokens, ttl
        key, cert = ca.issue_server_cert([host])
        (folder / "cp-key.pem").write_bytes(key)
        (folder / "cp-cert.pem").write_bytes(cert)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(folder / "cp-cert.pem", folder / "cp-key.pem")
        self.port = 0
        self.version = 0
        self.configs: dict[str, tuple[int, dict[str, Any]]] = {}
        self.replies: dict[tuple[str, int], dict[str, Any]] = {}
        self.issued: list[tuple[str, str]] = []  # (node, identity)
        self._writers: dict[str, asyncio.StreamWriter] = {}
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-cp", daemon=True)
        self._thread.start()
        self.resume()

    def _call(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def resume(self) -> None:
        """Listen (again, on the same port)."""
        async def listen() -> int:
            self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.context)
            return int(self._server.sockets[0].getsockname()[1])
        self.port = self._call(listen())

    def pause(self) -> None:
        """Go away: stop listening and drop every agent's session."""
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers.values()):
                writer.transport.abort()
            self._writers.clear()
        self._call(stop())

    def close(self) -> None:
        self.pause()
        self._loop.call_soon_threadsafe(self._loop.stop)

    def publish(self, node: str, config: dict[str, Any]) -> int:
        """Make `config` the node's snapshot; returns its version."""
        async def push() -> int:
            self.version += 1
            self.configs[node] = (self.version, config)
            writer = self._writers.get(node)
            if writer is not None:
                self._send(writer, {"type": "config", "version": self.version, "config": config})
            return self.version
        return int(self._call(push()))

    def wait_reply(self, node: str, version: int, timeout: float = 15) -> dict[str, Any]:
        """The node's ACK or NACK of `version`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (node, version) not in self.replies:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{node} never answered config version {version}")
                self._cond.wait(left)
            return self.replies[(node, version)]

    def apply(self, node: str, config: dict[str, Any]) -> int:
        """Publish and wait for the ACK."""
        version = self.publish(node, config)
        reply = self.wait_reply(node, version)
        assert reply["type"] == "ack", reply
        return version

    @staticmethod
    def _send(writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
        writer.write(json.dumps(msg).encode() + b"\n")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        node = None
        try:
            hello = json.loads(await reader.readline())
            node = hello.get("node")
            if hello.get("agent") != "ztunnel" or self.tokens.get(node) != hello.get("token"):
                self._send(writer, {"type": "denied", "error": "bad token"})
                return
            self._writers[node] = writer
            if node in self.configs:
                version, config = self.configs[node]
                self._send(writer, {"type": "config", "version": version, "config": config})
            while line := await reader.readline():
                self._handle(node, writer, json.loads(line))
        except (ConnectionError, ssl.SSLError, json.JSONDecodeError):
            pass
        finally:
            if node is not None and self._writers.get(node) is writer:
                del self._writers[node]
            writer.close()

    def _handle(self, node: str, writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
        if msg["type"] in ("ack", "nack"):
            with self._cond:
                self.replies[(node, int(msg["version"]))] = msg
                self._cond.notify_all()
        elif msg["type"] == "csr":
            issued = self.ca.sign_csr(msg["csr"].encode(), msg["identity"], ttl=self.ttl, holder=f"ztunnel/{node}")
            self.issued.append((node, msg["identity"]))
            self._send(writer, {"type": "cert", "id": msg["id"], "leaf": issued.leaf_pem.decode(),
                                "root": issued.root_pem.decode()})


# ---------------------------------------------------------------- workloads


class TcpWorkload:
    """A plain TCP app on one address: `echo` returns what it gets; `tally` answers the byte count at EOF."""

    def __init__(self, address: str, port: int, behaviour: str = "echo") -> None:
        self.clients: list[str] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.clients.append(self.client_address[0])
                sock: socket.socket = self.request
                count = 0
                try:
                    while data := sock.recv(65536):
                        count += len(data)
                        if behaviour == "echo":
                            sock.sendall(data)
                    if behaviour == "tally":
                        sock.sendall(str(count).encode())
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        socketserver.ThreadingTCPServer.daemon_threads = True
        self.server = socketserver.ThreadingTCPServer((address, port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- topology


@dataclass
class Node:
    name: str
    index: int  # 1-based: address 127.88.<index>.1, capture range 127.88.<128+index>.0/24

    @property
    def address(self) -> str:
        return f"127.88.{self.index}.1"

    def capture(self, host: int) -> str:
        return f"127.88.{128 + self.index}.{host}"


@dataclass
class WorkloadSpec:
    name: str
    namespace: str
    service_account: str
    node: Node
    address: str
    mode: str = "ambient"
    app: str = ""
    version: str = "v1"
    ports: list[int] = field(default_factory=list)

    @property
    def identity(self) -> str:
        return f"spiffe://{TRUST_DOMAIN}/ns/{self.namespace}/sa/{self.service_account}"


@dataclass
class ServiceSpec:
    name: str
    namespace: str
    ports: list[tuple[int, int]]  # (port, targetPort)
    endpoints: list[str]


@dataclass
class Topology:
    nodes: list[Node]
    workloads: list[WorkloadSpec]
    services: list[ServiceSpec]

    def vip(self, service: str, node: Node) -> str:
        k = [s.name for s in self.services].index(service)
        return node.capture(2 + k)

    def inbound_capture(self, workload: str) -> str:
        w = next(w for w in self.workloads if w.name == workload)
        slot = [x.name for x in self.workloads if x.node is w.node].index(w.name)
        return w.node.capture(100 + slot)

    def snapshot(self, node: Node, policy: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        """The ztunnel snapshot of `node`, in the shape of docs/architecture.md."""
        workloads = [{
            "name": w.name, "namespace": w.namespace, "serviceAccount": w.service_account, "identity": w.identity,
            "address": w.address, "node": w.node.name, "nodeAddress": w.node.address, "hbonePort": 15008,
            "mode": w.mode, "labels": {"app": w.app or w.name, "version": w.version}, "app": w.app or w.name,
            "version": w.version, "ports": w.ports,
            "inboundCapture": self.inbound_capture(w.name) if w.node is node and w.mode == "ambient" else None,
        } for w in self.workloads]
        services = [{
            "name": s.name, "namespace": s.namespace, "hostname": f"{s.name}.{s.namespace}.svc.cluster.local",
            "vip": self.vip(s.name, node),
            "ports": [{"name": f"tcp-{p}", "port": p, "targetPort": t, "protocol": "tcp"} for p, t in s.ports],
            "endpoints": s.endpoints, "waypoint": None,
        } for s in self.services]
        return {"node": node.name, "trustDomain": TRUST_DOMAIN, "nodeAddress": node.address, "capture": "explicit",
                "certTtlSeconds": 3600, "workloads": workloads, "services": services,
                "policy": policy or {"peerAuthentications": [], "authorizationPolicies": []}, **extra}


# ---------------------------------------------------------------- ztunnel processes and clients


def start_ztunnel(node: Node, cp: FakeControlPlane, folder: Path) -> subprocess.Popen[bytes]:
    """A ztunnel subprocess, `python -m agents ztunnel ...`, logging into `folder`."""
    token = folder / f"{node.name}.token"
    token.write_text(cp.tokens[node.name])
    root = folder / "root.pem"
    root.write_bytes(cp.ca.root_pem)
    cmd = [sys.executable, "-m", "agents", "ztunnel", "--node", node.name, "--address", node.address,
           "--cp", f"{cp.host}:{cp.port}", "--token-file", str(token), "--root-file", str(root)]
    out = open(folder / f"{node.name}.access.log", "wb")
    err = open(folder / f"{node.name}.log", "wb")
    try:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err)
    finally:
        out.close()
        err.close()


def http_get(address: str, port: int, path: str, timeout: float = 5) -> tuple[int, bytes]:
    """(status, body) of a GET; connection failures raise OSError."""
    try:
        with urllib.request.urlopen(f"http://{address}:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(check: Any, what: str, timeout: float = 15, interval: float = 0.05) -> Any:
    """Poll `check()` until it returns something truthy; its value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as e:
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def ready_status(node: Node) -> int | None:
    try:
        return http_get(node.address, 15021, "/healthz/ready")[0]
    except OSError:
        return None


def exchange(address: str, port: int, payload: bytes, source: str, timeout: float = 10) -> bytes:
    """Connect from `source`, send `payload`, half-close, read to EOF."""
    with socket.create_connection((address, port), timeout=timeout, source_address=(source, 0)) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return read_all(s)


def read_all(s: socket.socket) -> bytes:
    parts = []
    while chunk := s.recv(65536):
        parts.append(chunk)
    return b"".join(parts)


def refused(address: str, port: int, source: str, timeout: float = 10) -> bool:
    """True when the connection is closed without an answer (EOF or reset), whether or not connect succeeded."""
    try:
        with socket.create_connection((address, port), timeout=timeout, source_address=(source, 0)) as s:
            s.sendall(b"hello?")
            s.shutdown(socket.SHUT_WR)
            return read_all(s) == b""
    except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
        return True  # refused, or reset (possibly before connect() even returned)
    except OSError as e:
        if e.errno == errno.ENOTCONN:  # closed so fast that shutdown() found no connection left
            return True
        raise


def access_log(folder: Path, node: Node) -> list[dict[str, Any]]:
    text = (folder / f"{node.name}.access.log").read_text()
    # Only whole lines: the ztunnel may be writing the last one right now.
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


def stop_all(procs: Iterable[subprocess.Popen[bytes]]) -> list[int]:
    codes = []
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            codes.append(p.wait(10))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes
