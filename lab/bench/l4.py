"""L4 benchmark: the ztunnel data path (an HBONE forwarder pair) against direct TCP and an stunnel pair.

One run on loopback measures, per path:
* bulk throughput of one TCP stream (a Python sender with 1 MB `sendall`s, a sink
  process with 1 MB `recv_into`s; `direct` shows what they reach on their own),
  and the CPU seconds the path's proxies spent per GB moved (robust to a busy box);
* request/response latency (p50/p99) of small messages over one connection.

Paths: ``direct`` (sender → sink); ``hbone`` (sender → source forwarder →
HBONE (mTLS 1.3, HTTP/2 CONNECT) → destination forwarder → sink, the ztunnel pair
without its control plane, each forwarder its own process); ``stunnel`` (the same
shape with Debian's stunnel4 in client and server mode, mutual TLS 1.3). Certificates
come from a throwaway CA. `python -m lab.bench.l4 [--duration S] [--json]`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
TRUST_DOMAIN = "bench.local"
SOURCE_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/source"
DEST_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/dest"
BLOCK = 1 << 20


# ---------------------------------------------------------------- certificates


def make_certs(folder: Path) -> None:
    """A throwaway root and two leaves (source, dest) with SPIFFE URI SANs, as PEM files in `folder`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshlab bench root")])
    root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid[0]).not_valid_after(valid[1])
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(root_key, hashes.SHA256()))
    (folder / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    for name, identity in (("source", SOURCE_ID), ("dest", DEST_ID)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(root_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(valid[0]).not_valid_after(valid[1])
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(root_key, hashes.SHA256()))
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path = folder / f"{name}.key"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)


# ---------------------------------------------------------------- processes of the bench


def _serve_sink(port: int, host: str = "127.0.0.1") -> None:
    """Sink process: first byte b"D" = discard (reports bytes and seconds on stdout), b"E" = echo."""
    listener = socket.create_server((host, port), backlog=64)
    print(json.dumps({"port": listener.getsockname()[1]}), flush=True)

    def serve(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(BLOCK)
        mode = conn.recv(1)
        total, first, last = 0, 0.0, 0.0
        while n := conn.recv_into(buf):
            if mode == b"E":
                conn.sendall(memoryview(buf)[:n])
            else:
                last = time.perf_counter()
                first = first or last
                total += n
        if mode == b"D":
            print(json.dumps({"bytes": total, "seconds": last - first}), flush=True)
        conn.close()

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


async def _serve_hbone_dest(certs: Path) -> None:
    """Destination forwarder: HBONE server on a free port; dials each request's authority."""
    from agents.hbone import ConnectDecision, HboneServer, StaticCertSource

    source = StaticCertSource()
    source.add(*(certs.joinpath(n).read_bytes() for n in ("dest.pem", "dest.key", "root.pem")))

    async def on_connect(request: Any) -> Any:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (request.host, request.port))
        except OSError as exc:
            sock.close()
            return ConnectDecision.refuse(503, str(exc))
        return ConnectDecision.accept(sock)

    server = HboneServer("127.0.0.1", 0, source.server_context, on_connect)
    await server.start()
    print(json.dumps({"port": server.port}), flush=True)
    await asyncio.Event().wait()


async def _serve_hbone_source(certs: Path, hbone_port: int, target: str) -> None:
    """Source forwarder: plain TCP listener; every connection becomes a CONNECT to `target`."""
    from agents.hbone import HboneClient, StaticCertSource, pipe

    source = StaticCertSource()
    source.add(*(certs.joinpath(n).read_bytes() for n in ("source.pem", "source.key", "root.pem")))
    client = HboneClient(source.client_context)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        tunnel = await client.connect(("127.0.0.1", hbone_port), target, SOURCE_ID, DEST_ID,
                                      {"forwarded": f'for="{peer[0]}:{peer[1]}"'})
        await pipe(tunnel, reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await server.serve_forever()


def _spawn(stack: ExitStack, args: list[str]) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "lab.bench.l4", *args], stdout=subprocess.PIPE, text=True, env=env)
    stack.callback(_stop, proc)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        raise RuntimeError(f"bench helper {args[0]} did not start")
    return proc, int(json.loads(line)["port"])


def _stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def stunnel_binary() -> str | None:
    return shutil.which("stunnel4") or shutil.which("stunnel")


def _start_stunnel_pair(stack: ExitStack, certs: Path, sink_port: int,
                        sink_host: str = "127.0.0.1") -> tuple[list[int], int]:
    """stunnel in server and client mode (mTLS 1.3) in front of the sink; (server pid, client pid), entry port."""
    binary = stunnel_binary()
    assert binary is not None
    server_port, client_port = _free_port(), _free_port()
    common = ("foreground = yes\npid =\ndebug = 3\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n")
    sides = {
        "server": (f"[dest]\naccept = 127.0.0.1:{server_port}\nconnect = {sink_host}:{sink_port}\n"
                   f"cert = {certs}/dest.pem\nkey = {certs}/dest.key\n", server_port),
        "client": (f"[source]\nclient = yes\naccept = 127.0.0.1:{client_port}\nconnect = 127.0.0.1:{server_port}\n"
                   f"cert = {certs}/source.pem\nkey = {certs}/source.key\n", client_port),
    }
    pids = []
    for name, (section, port) in sides.items():
        conf = certs / f"stunnel-{name}.conf"
        conf.write_text(common + section + f"CAfile = {certs}/root.pem\nverifyChain = yes\n"
                        "sslVersionMin = TLSv1.3\n")
        log = open(certs / f"stunnel-{name}.log", "w")
        stack.callback(log.close)
        proc = subprocess.Popen([binary, str(conf)], stdout=log, stderr=subprocess.STDOUT)
        stack.callback(_stop, proc)
        _wait_port(port)
        pids.append(proc.pid)
    return pids, client_port


# ---------------------------------------------------------------- measurements


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


Address = tuple[str, int]


def _connect(target: Address | int, source: Address | None) -> socket.socket:
    """A connection to the path's entry (a loopback port, or a service VIP from a workload's address)."""
    addr = ("127.0.0.1", target) if isinstance(target, int) else target
    return socket.create_connection(addr, source_address=source)


def measure_throughput(port: Address | int, duration_s: float, sink: subprocess.Popen[str], pids: list[int],
                       source: Address | None = None) -> dict[str, Any]:
    """One stream for `duration_s`: Gbit/s at the sink, and CPU seconds per GB of the proxies in `pids`."""
    block = memoryview(os.urandom(BLOCK))
    cpu0 = _cpu_seconds(pids)
    with _connect(port, source) as sock:
        sock.sendall(b"D")
        deadline = time.perf_counter() + duration_s
        while time.perf_counter() < deadline:
            sock.sendall(block)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # the far side closes once the sink saw EOF
    assert sink.stdout is not None
    report = json.loads(sink.stdout.readline())
    cpu = _cpu_seconds(pids) - cpu0
    seconds = max(report["seconds"], 1e-9)
    out = {"gbit_s": round(report["bytes"] * 8 / seconds / 1e9, 3), "bytes": report["bytes"]}
    if pids:
        out["proxy_cpu_s_per_gb"] = round(cpu / (report["bytes"] / 1e9), 3) if report["bytes"] else None
    return out


def measure_latency(port: Address | int, size: int, duration_s: float, max_rounds: int = 50_000,
                    source: Address | None = None) -> dict[str, Any]:
    """Round trips of `size`-byte messages over one connection: p50/p99/mean in microseconds."""
    message = os.urandom(size)
    buf = bytearray(size)
    view = memoryview(buf)
    samples: list[int] = []
    with _connect(port, source) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"E")
        end = time.perf_counter() + duration_s
        clock = time.perf_counter_ns
        while len(samples) < max_rounds:
            t0 = clock()
            sock.sendall(message)
            got = 0
            while got < size:
                n = sock.recv_into(view[got:])
                if not n:
                    raise ConnectionError("echo closed early")
                got += n
            samples.append(clock() - t0)
            if len(samples) % 64 == 0 and time.perf_counter() > end:
                break
    warm = sorted(samples[min(len(samples) // 10, 100):])
    return {"rounds": len(samples), "p50_us": round(warm[len(warm) // 2] / 1e3, 1),
            "p99_us": round(warm[int(len(warm) * 0.99)] / 1e3, 1),
            "mean_us": round(sum(warm) / len(warm) / 1e3, 1)}


BENCH_TOPOLOGY = """
name: bench-l4
addressBlock: {block}
nodes: [{{name: source}}, {{name: destination}}]
namespaces: [{{name: bench, mode: ambient}}]
services:
  - name: sink
    namespace: bench
    ports: [{{port: {port}, protocol: tcp}}]
    workloads:
      - {{name: sink-v1, node: destination, serviceAccount: sink, run: {{demo: sleep}}}}
workloads:
  - {{name: sender, namespace: bench, node: source, serviceAccount: sender, run: {{demo: sleep}}}}
"""
SINK_PORT = 5201


def _start_ztunnel_lab(stack: ExitStack) -> tuple[subprocess.Popen[str], list[int], Address, Address]:
    """A two-node ambient lab in a throwaway MESHLAB_HOME: the bench talks through its real ztunnel pair.

    The sender connects from the `sender` workload's address to the sink service's VIP on its node,
    as a workload would; the sink listens on the `sink-v1` workload's address. Returns the sink,
    the two ztunnels' pids, the VIP and the sender's source address.
    """
    from lab import orchestrator
    from lab.addressing import allocate_block, workload_address
    from lab.topology.loader import parse_topology

    home = stack.enter_context(tempfile.TemporaryDirectory(prefix="meshlab-bench-home-"))
    old_home = os.environ.get("MESHLAB_HOME")
    os.environ["MESHLAB_HOME"] = home
    stack.callback(lambda: os.environ.__setitem__("MESHLAB_HOME", old_home) if old_home is not None
                   else os.environ.pop("MESHLAB_HOME", None))
    block = allocate_block(set(), orchestrator._block_taken)
    sink_host = workload_address(block, 1, 0)
    sink, _ = _spawn(stack, ["sink", sink_host, str(SINK_PORT)])
    topo = parse_topology(BENCH_TOPOLOGY.format(block=block, port=SINK_PORT), "bench-l4.yaml")
    stack.callback(lambda: asyncio.run(orchestrator.down("bench-l4")))
    state = asyncio.run(orchestrator.up(topo))
    status = asyncio.run(orchestrator.status("bench-l4"))
    pids = [p["pid"] for n in status["nodes"].values() for p in n["processes"] if p["name"] == "ztunnel"]
    vip = state["services"]["sink.bench"]["vips"]["source"]
    return sink, pids, (vip, SINK_PORT), (state["workloads"]["sender"]["address"], 0)


def run_l4_bench(duration_s: float = 5.0, sizes: tuple[int, ...] = (64, 4096),
                 paths: tuple[str, ...] = ("direct", "ztunnel", "hbone", "stunnel")) -> dict[str, Any]:
    """Measure every path in one run; see the module docstring. Returns a dict (`format_table` prints it)."""
    result: dict[str, Any] = {
        "suite": "l4", "duration_s": duration_s, "cpus": os.cpu_count(), "python": sys.version.split()[0],
        "openssl": ssl.OPENSSL_VERSION, "loadavg_before": _loadavg(), "paths": {}}
    latency_s = max(0.5, duration_s / 4)
    with ExitStack() as stack:
        certs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meshlab-bench-")))
        make_certs(certs)
        sink, sink_port = _spawn(stack, ["sink"])
        for path in paths:
            with ExitStack() as path_stack:
                if path == "direct":
                    pids, port = [], sink_port
                elif path == "hbone":
                    dest, dest_port = _spawn(path_stack, ["hbone-dest", str(certs)])
                    src, port = _spawn(path_stack, ["hbone-source", str(certs), str(dest_port),
                                                    f"127.0.0.1:{sink_port}"])
                    pids = [src.pid, dest.pid]
                elif path == "stunnel":
                    if stunnel_binary() is None:
                        result["paths"][path] = {"skipped": "stunnel not installed (scripts/install-bench-tools.sh)"}
                        continue
                    pids, port = _start_stunnel_pair(path_stack, certs, sink_port)
                elif path == "ztunnel":
                    lab_sink, pids, port, source = _start_ztunnel_lab(path_stack)
                    entry = {"throughput": measure_throughput(port, duration_s, lab_sink, pids, source)}
                    entry["latency"] = {str(size): measure_latency(port, size, latency_s, source=source)
                                        for size in sizes}
                    result["paths"][path] = entry
                    continue
                else:
                    raise ValueError(f"unknown path {path!r}")
                entry = {"throughput": measure_throughput(port, duration_s, sink, pids)}
                entry["latency"] = {str(size): measure_latency(port, size, latency_s) for size in sizes}
                result["paths"][path] = entry
    result["loadavg_after"] = _loadavg()
    result["ratios"] = _ratios(result["paths"], sizes)
    return result


def _ratios(paths: dict[str, Any], sizes: tuple[int, ...]) -> dict[str, Any]:
    """The targets' ratios: the ztunnel pair (or, without it, the bare HBONE forwarder pair) over stunnel."""
    name = "ztunnel" if "throughput" in paths.get("ztunnel", {}) else "hbone"
    mesh, st, direct = paths.get(name, {}), paths.get("stunnel", {}), paths.get("direct", {})
    if "throughput" not in mesh or "throughput" not in st:
        return {}
    out: dict[str, Any] = {
        f"throughput_{name}_over_stunnel": _div(mesh["throughput"]["gbit_s"], st["throughput"]["gbit_s"]),
        f"cpu_per_gb_{name}_over_stunnel": _div(mesh["throughput"].get("proxy_cpu_s_per_gb"),
                                                st["throughput"].get("proxy_cpu_s_per_gb"))}
    if "latency" in direct:
        for size in sizes:
            for q in ("p50_us", "p99_us"):
                key, base = str(size), direct["latency"][str(size)][q]
                added_mesh = mesh["latency"][key][q] - base
                added_st = st["latency"][key][q] - base
                out[f"added_{q}_{size}B"] = {name: round(added_mesh, 1), "stunnel": round(added_st, 1),
                                             f"{name}_over_stunnel": _div(added_mesh, added_st)}
    return out


def _div(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def format_table(result: dict[str, Any]) -> str:
    """The result as a text table."""
    sizes = sorted({s for p in result["paths"].values() for s in p.get("latency", {})}, key=int)
    head = f"{'path':<9} {'Gbit/s':>7} {'CPU s/GB':>9}" + "".join(f" {'p50/p99 us ' + s + 'B':>20}" for s in sizes)
    lines = [f"L4 bench: {result['duration_s']} s per stream, {result['cpus']} CPUs, Python {result['python']}, "
             f"{result['openssl']}, load {result['loadavg_before']}→{result['loadavg_after']}", head]
    for name, p in result["paths"].items():
        if "skipped" in p:
            lines.append(f"{name:<9} skipped: {p['skipped']}")
            continue
        t = p["throughput"]
        cpu = t.get("proxy_cpu_s_per_gb")
        row = f"{name:<9} {t['gbit_s']:>7.2f} {('-' if cpu is None else f'{cpu:.2f}'):>9}"
        for s in sizes:
            lat = p["latency"][s]
            row += f" {str(lat['p50_us']) + ' / ' + str(lat['p99_us']):>20}"
        lines.append(row)
    for key, value in result.get("ratios", {}).items():
        lines.append(f"{key}: {value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "sink":
        _serve_sink(int(args[2]) if len(args) > 2 else 0, args[1] if len(args) > 1 else "127.0.0.1")
    elif args and args[0] == "hbone-dest":
        asyncio.run(_serve_hbone_dest(Path(args[1])))
    elif args and args[0] == "hbone-source":
        asyncio.run(_serve_hbone_source(Path(args[1]), int(args[2]), args[3]))
    else:
        parser = argparse.ArgumentParser(prog="python -m lab.bench.l4", description=__doc__.split("\n")[0])
        parser.add_argument("--duration", type=float, default=5.0, help="seconds of bulk transfer per path")
        parser.add_argument("--paths", default="direct,ztunnel,hbone,stunnel")
        parser.add_argument("--json", action="store_true", help="print the result as JSON too")
        opts = parser.parse_args(args)
        result = run_l4_bench(opts.duration, paths=tuple(opts.paths.split(",")))
        print(format_table(result))
        if opts.json:
            print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
