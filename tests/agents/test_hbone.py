"""HBONE: HTTP/2 CONNECT over mutual TLS 1.3 — framing against hyperframe, then real TLS on 127.0.0.1.

Certificates come from a throwaway CA made here with `cryptography`; the h2 package
(driven by hand over blocking sockets) and Node.js's http2 module are the reference
peers the fast path must interoperate with.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import os
import random
import select
import shutil
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hyperframe.frame as hf
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agents.hbone import (
    ConnectDecision,
    ConnectRequest,
    HboneClient,
    HboneError,
    HboneServer,
    StaticCertSource,
    client_context,
    identity_from_sni,
    pipe_socket,
    server_context,
    sni_for_identity,
    split_authority,
)
from agents.hbone import frames as fr

CLIENT_ID = "spiffe://test.local/ns/apps/sa/client"
SERVER_ID = "spiffe://test.local/ns/apps/sa/server"
OTHER_ID = "spiffe://test.local/ns/db/sa/other"

# ---------------------------------------------------------------- framing (sans-IO), against hyperframe


def _split_all(data: bytes, chunking: list[int], **kwargs: Any) -> list[tuple]:
    """Feed `data` to a FrameSplitter in chunks, as the reader does; copy views out as they come."""
    splitter = fr.FrameSplitter(max_frame_size=fr.MAX_FRAME_LIMIT, **kwargs)
    buf = bytearray(len(data))
    view = memoryview(buf)
    pos = end = 0
    out: list[tuple] = []
    sizes = iter(chunking)
    while end < len(data):
        n = min(next(sizes, len(data)), len(data) - end)
        buf[end:end + n] = data[end:end + n]
        end += n
        pos, events = splitter.split(view, pos, end)
        for ev in events:
            out.append(tuple(bytes(x) if isinstance(x, memoryview) else x for x in ev))
    assert pos == end
    return out


def _random_frames(rng: random.Random) -> tuple[list[hf.Frame], bytes]:
    frames: list[hf.Frame] = []
    for _ in range(60):
        kind = rng.choice(["data", "data", "data", "padded", "empty", "window", "settings", "ping", "rst", "headers"])
        sid = rng.choice([1, 3, 5])
        if kind in ("data", "padded", "empty"):
            f = hf.DataFrame(sid, b"" if kind == "empty" else rng.randbytes(rng.choice([1, 100, 5000, 70000])))
            if kind == "padded":
                f.flags.add("PADDED")
                f.pad_length = rng.choice([0, 1, 255])
            if rng.random() < 0.2:
                f.flags.add("END_STREAM")
        elif kind == "window":
            f = hf.WindowUpdateFrame(rng.choice([0, sid]), window_increment=rng.randint(1, 2**31 - 1))
        elif kind == "settings":
            f = hf.SettingsFrame(0, settings={hf.SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 20})
        elif kind == "ping":
            f = hf.PingFrame(0, opaque_data=b"12345678")
        elif kind == "rst":
            f = hf.RstStreamFrame(sid, error_code=8)
        else:
            f = hf.HeadersFrame(sid, data=b"\x82\x84")
            f.flags.add("END_HEADERS")
        frames.append(f)
    return frames, b"".join(f.serialize() for f in frames)


@pytest.mark.parametrize("seed", range(6))
def test_splitter_agrees_with_hyperframe(seed: int) -> None:
    rng = random.Random(seed)
    frames, wire = _random_frames(rng)
    chunking = [rng.choice([1, 7, 9, 13, 1000, 16384, 100000]) for _ in range(len(wire))]
    events = _split_all(wire, chunking, min_piece=rng.choice([1, 4096, 65536]))
    # DATA: payload per stream, END_STREAM and flow-controlled length per frame
    data_frames = [f for f in frames if isinstance(f, hf.DataFrame)]
    pieces = [e for e in events if e[0] == fr.EV_DATA]
    per_frame: list[tuple[int, bytes, bool, int]] = []
    acc, flow = b"", 0
    for _, sid, payload, last, end_stream, piece_flow in pieces:
        acc, flow = acc + payload, flow + piece_flow
        if last:
            per_frame.append((sid, acc, end_stream, flow))
            acc, flow = b"", 0
    assert per_frame == [(f.stream_id, f.data, "END_STREAM" in f.flags, f.flow_controlled_length)
                         for f in data_frames]
    windows = [(e[1], e[2]) for e in events if e[0] == fr.EV_WINDOW]
    assert windows == [(f.stream_id, f.window_increment) for f in frames if isinstance(f, hf.WindowUpdateFrame)]
    raw = b"".join(e[1] for e in events if e[0] == fr.EV_RAW)
    assert raw == b"".join(f.serialize() for f in frames if not isinstance(f, (hf.DataFrame, hf.WindowUpdateFrame)))


def test_splitter_hands_on_big_frames_in_pieces_and_passes_the_preface_to_h2() -> None:
    payload = os.urandom(1 << 20)
    wire = fr.PREFACE + hf.DataFrame(1, payload).serialize()
    events = _split_all(wire, [16384] * 200, expect_preface=True, min_piece=128 << 10)
    assert events[0] == (fr.EV_RAW, fr.PREFACE)
    data = [e for e in events if e[0] == fr.EV_DATA]
    assert 4 <= len(data) <= 9 and all(len(e[2]) >= 128 << 10 for e in data[:-1])
    assert b"".join(e[2] for e in data) == payload and data[-1][3] and not any(e[3] for e in data[:-1])


def test_splitter_gives_everything_to_h2_inside_a_header_block() -> None:
    headers = hf.HeadersFrame(1, data=b"\x82")  # no END_HEADERS: CONTINUATION must follow
    wire = headers.serialize() + hf.DataFrame(1, b"x").serialize()
    events = _split_all(wire, [len(wire)])
    assert [e[0] for e in events] == [fr.EV_RAW] and events[0][1] == wire


@pytest.mark.parametrize("wire, code", [
    (hf.DataFrame(1, b"x").serialize()[:5] + b"\0\0\0\0", fr.PROTOCOL_ERROR),          # DATA on stream 0
    (fr.frame_header(0, fr.DATA, fr.PADDED, 1), fr.PROTOCOL_ERROR),                     # no pad length
    (fr.frame_header(2, fr.DATA, fr.PADDED, 1) + b"\x05x", fr.PROTOCOL_ERROR),          # padding > frame
    (fr.frame_header(5, fr.WINDOW_UPDATE, 0, 0) + b"\0" * 5, fr.FRAME_SIZE_ERROR),
])
def test_splitter_rejects_broken_frames(wire: bytes, code: int) -> None:
    with pytest.raises(fr.ConnectionError_) as err:
        _split_all(wire + b"\0" * 16, [len(wire) + 16])
    assert err.value.code == code


def test_splitter_rejects_frames_above_our_max_frame_size() -> None:
    splitter = fr.FrameSplitter(max_frame_size=16384)
    wire = bytearray(hf.DataFrame(1, b"x" * 16385).serialize())
    with pytest.raises(fr.ConnectionError_) as err:
        splitter.split(memoryview(wire), 0, len(wire))
    assert err.value.code == fr.FRAME_SIZE_ERROR


def test_frames_written_by_hand_are_what_hyperframe_writes() -> None:
    buf = bytearray(9 + 5)
    buf[9:] = b"hello"
    fr.pack_data_header(buf, 0, 5, 7)
    assert bytes(buf) == hf.DataFrame(7, b"hello").serialize()
    end = hf.DataFrame(7, b"hello")
    end.flags.add("END_STREAM")
    assert fr.data_frame(7, b"hello", end_stream=True) == end.serialize()
    assert fr.window_update(3, 12345) == hf.WindowUpdateFrame(3, window_increment=12345).serialize()
    empty = hf.DataFrame(9, b"")
    empty.flags.add("END_STREAM")
    assert fr.empty_data(9, True) == empty.serialize()


def test_inbound_window_batches_updates_and_catches_overruns() -> None:
    window = fr.InboundWindow(1000)
    window.received(600)
    assert window.consumed(300) == 0 and window.consumed(200) == 500  # half the window
    window.received(900)
    with pytest.raises(fr.ConnectionError_):
        window.received(1)


# ---------------------------------------------------------------- SNI names


def test_sni_names_identities_readably_and_round_trips() -> None:
    assert sni_for_identity("spiffe://cluster.local/ns/bookinfo/sa/reviews") == "reviews.bookinfo.cluster.local.spiffe"
    assert identity_from_sni("reviews.bookinfo.cluster.local.spiffe") == "spiffe://cluster.local/ns/bookinfo/sa/reviews"
    for odd in ("spiffe://td/ns/a.b/sa/c", "spiffe://TD/ns/a/sa/b", "spiffe://td/ns/a/sa/" + "x" * 64,
                "spiffe://td/workload/42", "spiffe://under_score.td/ns/a/sa/b"):
        name = sni_for_identity(odd)
        assert name.endswith(".sha256.spiffe") and len(name.split(".")) == 3
        assert identity_from_sni(name) is None
    assert sni_for_identity("spiffe://td/ns/a.b/sa/c") != sni_for_identity("spiffe://td/ns/a/sa/b.c")
    assert identity_from_sni("example.com") is None and identity_from_sni(None) is None


def test_split_authority() -> None:
    assert split_authority("10.1.2.3:9080") == ("10.1.2.3", 9080)
    assert split_authority("[::1]:80") == ("::1", 80)
    assert split_authority("reviews.bookinfo:9080") == ("reviews.bookinfo", 9080)
    for bad in ("", "10.1.2.3", "10.1.2.3:0", "10.1.2.3:99999", ":80", "::1:80", "host:http"):
        assert split_authority(bad) is None, bad


# ---------------------------------------------------------------- certificates


@dataclass
class Pki:
    root: bytes
    leaves: dict[str, tuple[bytes, bytes]]          # identity -> (cert, key)
    foreign_root: bytes
    foreign_leaves: dict[str, tuple[bytes, bytes]]

    def source(self, *identities: str) -> StaticCertSource:
        src = StaticCertSource()
        for ident in identities:
            src.add(*self.leaves[ident], self.root)
        return src


def _ca(name: str) -> tuple[Any, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(ca: tuple[Any, Any], identity: str) -> tuple[bytes, bytes]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca, foreign = _ca("hbone test root"), _ca("some other root")
    pem = serialization.Encoding.PEM
    return Pki(root=ca[0].public_bytes(pem), leaves={i: _leaf(ca, i) for i in (CLIENT_ID, SERVER_ID, OTHER_ID)},
               foreign_root=foreign[0].public_bytes(pem), foreign_leaves={CLIENT_ID: _leaf(foreign, CLIENT_ID),
                                                                          SERVER_ID: _leaf(foreign, SERVER_ID)})


# ---------------------------------------------------------------- targets and the server under test


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _digest_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads to EOF (the client's half-close), then answers with what it got, then closes."""
    data = await reader.read()
    writer.write(f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode())
    await writer.drain()
    writer.close()


async def _greet_then_half_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-closes first (greeting + FIN), then keeps reading and logs what arrives to stdout-less memory."""
    writer.write(b"hello")
    writer.write_eof()
    data = await reader.read()
    _greet_then_half_close.received = data  # type: ignore[attr-defined]
    writer.close()


SLOW_TARGET_GATE: dict[str, asyncio.Event] = {}


async def _slow_digest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads nothing until the test opens the gate (so the tunnel's window fills up; at most 10 s), then digests
    like `_digest_after_eof`. A gate, not a sleep: on a busy machine a fixed sleep can end before the test looks."""
    gate = SLOW_TARGET_GATE.setdefault("slow", asyncio.Event())
    try:
        await asyncio.wait_for(gate.wait(), 10)
    except asyncio.TimeoutError:
        pass
    await _digest_after_eof(reader, writer)


async def _stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Never reads: holds the connection until the test ends."""
    await asyncio.sleep(30)


async def _reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class Lab:
    """The server under test, its targets (by name → port), what it saw, and the client."""

    server: HboneServer
    client: HboneClient
    targets: dict[str, int]
    requests: list[ConnectRequest] = field(default_factory=list)
    completions: list[tuple[int, int, str | None]] = field(default_factory=list)
    deny: set[str] = field(default_factory=set)
    target_kind: str = "socket"

    async def connect(self, target: str = "echo", *, dst: str = SERVER_ID, headers: dict[str, str] | None = None,
                      authority: str | None = None) -> Any:
        return await self.client.connect(self.server.address, authority or f"127.0.0.1:{self.targets[target]}",
                                         CLIENT_ID, dst, headers)


def _tracked(handler: Callable[..., Any], writers: set[asyncio.StreamWriter]) -> Callable[..., Any]:
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
    return run


@pytest.fixture
async def lab(pki: Pki) -> AsyncIterator[Lab]:
    writers: set[asyncio.StreamWriter] = set()
    servers = {name: await asyncio.start_server(_tracked(handler, writers), "127.0.0.1", 0) for name, handler in
               (("echo", _echo), ("digest", _digest_after_eof), ("greet", _greet_then_half_close), ("reset", _reset),
                ("slow", _slow_digest), ("stall", _stall))}
    targets = {name: s.sockets[0].getsockname()[1] for name, s in servers.items()}
    targets["closed"] = _closed_port()
    state: dict[str, Lab] = {}

    async def on_connect(request: ConnectRequest) -> ConnectDecision:
        lab = state["lab"]
        lab.requests.append(request)
        if request.peer_identity in lab.deny:
            return ConnectDecision.refuse(401, f"denied: {request.peer_identity}")
        try:
            if lab.target_kind == "streams":
                target: Any = await asyncio.open_connection(request.host, request.port)
            else:
                target = socket.socket()
                target.setblocking(False)
                await asyncio.get_running_loop().sock_connect(target, (request.host, request.port))
        except OSError as exc:
            if lab.target_kind == "socket":
                target.close()
            return ConnectDecision.refuse(503, f"no upstream: {exc}")
        return ConnectDecision.accept(target, on_complete=lambda i, o, e: lab.completions.append((i, o, e)))

    server_certs = pki.source(SERVER_ID, OTHER_ID)
    server = HboneServer("127.0.0.1", 0, server_certs.server_context, on_connect)
    await server.start()
    client = HboneClient(pki.source(CLIENT_ID).client_context, connect_timeout=5)
    state["lab"] = Lab(server, client, targets)
    yield state["lab"]
    await client.aclose()
    await server.close()
    for s in servers.values():
        s.close()
    for writer in writers:
        writer.close()
    await asyncio.sleep(0.01)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    assert check()


# ---------------------------------------------------------------- tunnels


async def test_tunnel_echoes_and_the_server_sees_who_and_what(lab: Lab) -> None:
    headers = {"Forwarded": 'for="127.0.0.1:4000";host=echo.apps.svc.cluster.local',
               "baggage": "k8s.namespace.name=apps,app.name=client", "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
    tunnel = await lab.connect(headers=headers)
    await tunnel.write(b"ping")
    assert await tunnel.readexactly(4) == b"ping"
    tunnel.write_eof()
    assert await tunnel.read() == b""
    request = lab.requests[0]
    assert request.authority == f"127.0.0.1:{lab.targets['echo']}"
    assert request.headers == {k.lower(): v for k, v in headers.items()}
    assert request.peer_identity == CLIENT_ID and request.local_identity == SERVER_ID
    assert request.sni == sni_for_identity(SERVER_ID) and request.peer_addr[0] == "127.0.0.1"
    await _eventually(lambda: lab.completions == [(4, 4, None)])


@pytest.mark.parametrize("target_kind", ["socket", "streams"])
async def test_bulk_10mb_both_ways_intact(lab: Lab, target_kind: str) -> None:
    lab.target_kind = target_kind
    data = os.urandom(10 << 20)
    tunnel = await lab.connect()

    async def send() -> None:
        view = memoryview(data)
        for start in range(0, len(data), 1 << 20):
            await tunnel.write(view[start:start + (1 << 20)])
        tunnel.write_eof()

    sender = asyncio.ensure_future(send())
    got = hashlib.sha256()
    total = 0
    while chunk := await tunnel.read():
        got.update(chunk)
        total += len(chunk)
    await sender
    assert total == len(data) and got.hexdigest() == hashlib.sha256(data).hexdigest()
    await _eventually(lambda: lab.completions == [(len(data), len(data), None)])


async def test_half_close_from_the_client_still_gets_the_answer(lab: Lab) -> None:
    tunnel = await lab.connect("digest")
    payload = os.urandom(300_000)
    await tunnel.write(payload)
    tunnel.write_eof()
    answer = b""
    while chunk := await tunnel.read():
        answer += chunk
    assert answer.decode() == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"


async def test_half_close_from_the_target_leaves_the_other_direction_open(lab: Lab) -> None:
    tunnel = await lab.connect("greet")
    assert await tunnel.readexactly(5) == b"hello"
    assert await tunnel.read() == b""          # the target's FIN arrived as END_STREAM
    await tunnel.write(b"still talking")        # ... and we can still send
    tunnel.write_eof()
    await _eventually(lambda: getattr(_greet_then_half_close, "received", None) == b"still talking")


async def test_a_target_reset_resets_the_stream(lab: Lab) -> None:
    tunnel = await lab.connect("reset")
    await tunnel.write(b"x")
    with pytest.raises(HboneError):
        while await tunnel.read():
            pass
    await _eventually(lambda: bool(lab.completions) and lab.completions[0][2] is not None)


async def test_a_slow_target_holds_the_sender_back_without_losing_or_stalling(lab: Lab) -> None:
    from agents.hbone.connection import STREAM_WINDOW

    SLOW_TARGET_GATE["slow"] = asyncio.Event()
    tunnel = await lab.connect("slow")
    payload = os.urandom(3 * STREAM_WINDOW)
    writing = asyncio.ensure_future(tunnel.write(payload))
    await asyncio.sleep(0.3)  # the target has not read yet: flow control stops us at about one window
    assert not writing.done() and tunnel.bytes_sent <= STREAM_WINDOW + (16 << 20)
    SLOW_TARGET_GATE["slow"].set()
    await asyncio.wait_for(writing, 30)
    tunnel.write_eof()
    answer = b""
    while chunk := await tunnel.read():
        answer += chunk
    assert answer.decode() == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"


async def test_concurrent_bulk_streams_share_the_connection_window(lab: Lab) -> None:
    from agents.hbone.connection import CONNECTION_WINDOW

    size = CONNECTION_WINDOW // 4

    async def one(i: int) -> None:
        tunnel = await lab.connect()
        data = random.Random(i).randbytes(size)

        async def send() -> None:
            await tunnel.write(data)
            tunnel.write_eof()

        sender = asyncio.ensure_future(send())
        got = hashlib.sha256()
        while chunk := await tunnel.read():
            got.update(chunk)
        await sender
        assert got.digest() == hashlib.sha256(data).digest()

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(6))), 60)  # 1.5 windows each way
    assert lab.client.connections_opened == 1


async def test_a_client_abort_resets_the_target_connection(lab: Lab) -> None:
    tunnel = await lab.connect()
    await tunnel.write(b"hello")
    assert await tunnel.read() == b"hello"
    tunnel.abort()
    await _eventually(lambda: bool(lab.completions))
    assert lab.completions[0][:2] == (5, 5) and "reset by peer" in (lab.completions[0][2] or "")


async def test_a_peer_that_overruns_the_stream_window_gets_a_flow_control_reset(pki: Pki, lab: Lab) -> None:
    def overrun() -> set[int]:
        ctx = client_context(*pki.leaves[CLIENT_ID], pki.root)
        sock = ctx.wrap_socket(socket.create_connection(lab.server.address), server_hostname=sni_for_identity(SERVER_ID))
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "CONNECT"), (":authority", f"127.0.0.1:{lab.targets['stall']}")])
        sock.sendall(conn.data_to_send())
        codes: set[int] = set()
        sent, chunk = 0, os.urandom(1 << 20)
        sock.settimeout(10)
        while not codes and sent < 64 << 20:  # DATA written by hand: h2 would respect the window
            sock.sendall(b"".join(hf.DataFrame(1, chunk[i:i + 16384]).serialize() for i in range(0, len(chunk), 16384)))
            sent += len(chunk)
            while select.select([sock], [], [], 0)[0] or sock.pending():
                data = sock.recv(65536)
                if not data:
                    return codes
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    events = []  # h2's own window bookkeeping objects to our DATA; we only want the reset
                codes |= {e.error_code for e in events
                          if isinstance(e, (h2.events.StreamReset, h2.events.ConnectionTerminated))}
        sock.close()
        return codes

    codes = await asyncio.to_thread(overrun)
    assert fr.FLOW_CONTROL_ERROR in codes


async def test_many_concurrent_streams_share_one_pooled_connection(lab: Lab) -> None:
    async def one(i: int) -> bytes:
        tunnel = await lab.connect()
        message = f"stream {i} ".encode() * 1000
        await tunnel.write(message)
        tunnel.write_eof()
        got = b""
        while chunk := await tunnel.read():
            got += chunk
        assert got == message
        return got

    await asyncio.gather(*(one(i) for i in range(50)))
    assert lab.client.connections_opened == 1 and len(lab.server.connections) == 1
    await one(99)  # and it is reused afterwards
    assert lab.client.connections_opened == 1


async def test_a_full_connection_makes_the_pool_open_another(pki: Pki, lab: Lab) -> None:
    lab.server.max_concurrent_streams = 3  # applies to connections made from now on
    tunnels = [await lab.connect() for _ in range(5)]
    assert lab.client.connections_opened == 2 and len(lab.client.pooled()) == 2
    for t in tunnels:
        await t.write(b"a")
        assert await t.read() == b"a"
        t.close()


async def test_dead_connections_leave_the_pool(lab: Lab) -> None:
    tunnel = await lab.connect()
    for conn in list(lab.server.connections):
        conn.close()
    with pytest.raises(HboneError):
        while await tunnel.read():
            pass
    await _eventually(lambda: not lab.client.pooled())
    again = await lab.connect()
    await again.write(b"z")
    assert await again.read() == b"z"
    assert lab.client.connections_opened == 2


async def test_policy_denial_is_401_with_the_reason(lab: Lab) -> None:
    lab.deny.add(CLIENT_ID)
    with pytest.raises(HboneError) as err:
        await lab.connect()
    assert err.value.status == 401 and err.value.reason == f"denied: {CLIENT_ID}"


async def test_no_upstream_is_503(lab: Lab) -> None:
    with pytest.raises(HboneError) as err:
        await lab.connect("closed")
    assert err.value.status == 503 and "no upstream" in err.value.reason
    tunnel = await lab.connect()  # the connection survives refusals
    await tunnel.write(b"ok")
    assert await tunnel.read() == b"ok" and lab.client.connections_opened == 1


async def test_a_bad_destination_is_400(lab: Lab) -> None:
    with pytest.raises(HboneError) as err:
        await lab.connect(authority="not-an-address")
    assert err.value.status == 400 and not lab.requests


# ---------------------------------------------------------------- TLS


async def test_plaintext_to_the_port_fails_the_handshake(lab: Lab) -> None:
    for hello in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", fr.PREFACE):
        reader, writer = await asyncio.open_connection(*lab.server.address)
        writer.write(hello)
        try:
            answer = await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:
            answer = b""
        assert answer == b"" or answer.startswith(b"\x15")  # closed, at most a TLS alert record
        writer.close()
    await _eventually(lambda: lab.server.handshake_failures == 2)
    assert not lab.server.connections and not lab.requests


async def test_a_client_certificate_from_another_ca_fails_the_handshake(pki: Pki, lab: Lab) -> None:
    foreign = StaticCertSource()
    foreign.add(*pki.foreign_leaves[CLIENT_ID], pki.root)  # trusts our root, presents a foreign leaf
    client = HboneClient(foreign.client_context, connect_timeout=5)
    with pytest.raises(HboneError) as err:
        await client.connect(lab.server.address, f"127.0.0.1:{lab.targets['echo']}", CLIENT_ID, SERVER_ID)
    assert err.value.status is None
    await _eventually(lambda: lab.server.handshake_failures == 1)
    assert not lab.requests
    await client.aclose()


async def test_a_server_certificate_from_another_ca_is_refused_by_the_client(pki: Pki) -> None:
    rogue = StaticCertSource()
    rogue.add(*pki.foreign_leaves[SERVER_ID], pki.foreign_root)
    server = HboneServer("127.0.0.1", 0, rogue.server_context, _never_called)
    await server.start()
    client = HboneClient(pki.source(CLIENT_ID).client_context, connect_timeout=5)
    with pytest.raises(HboneError) as err:
        await client.connect(server.address, "127.0.0.1:1", CLIENT_ID, SERVER_ID)
    assert "handshake" in err.value.reason
    await client.aclose()
    await server.close()


async def test_sni_picks_the_certificate_of_the_destination_identity(pki: Pki, lab: Lab) -> None:
    for dst in (OTHER_ID, SERVER_ID):
        tunnel = await lab.connect(dst=dst)
        await tunnel.write(b"?")
        assert await tunnel.read() == b"?"
        assert tunnel.conn.peer_identity == dst and lab.requests[-1].local_identity == dst
    assert lab.client.connections_opened == 2  # one per destination identity
    with pytest.raises(HboneError) as err:  # a destination the server has no certificate for
        await lab.connect(dst="spiffe://test.local/ns/apps/sa/nobody")
    assert err.value.status is None


async def test_the_client_checks_the_identity_it_got(pki: Pki, lab: Lab) -> None:
    fixed = pki.source(SERVER_ID)
    only = fixed.server_context(sni_for_identity(SERVER_ID))
    server = HboneServer("127.0.0.1", 0, lambda sni: only, _never_called)  # ignores SNI
    await server.start()
    with pytest.raises(HboneError) as err:
        await lab.client.connect(server.address, "127.0.0.1:1", CLIENT_ID, OTHER_ID)
    assert f"presented {SERVER_ID}, expected {OTHER_ID}" in err.value.reason
    await server.close()


async def _never_called(request: ConnectRequest) -> ConnectDecision:
    raise AssertionError("on_connect must not run")


def test_contexts_are_tls13_h2_mutual(pki: Pki) -> None:
    server = server_context(*pki.leaves[SERVER_ID], pki.root)
    client = client_context(*pki.leaves[CLIENT_ID], pki.root)
    for ctx in (server, client):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3 and ctx.verify_mode == ssl.CERT_REQUIRED
    assert server.identity == SERVER_ID and client.identity == CLIENT_ID and not client.check_hostname


# ---------------------------------------------------------------- reference peers: h2 by hand, Node.js


def _h2_reference_request(address: tuple[str, int], ctx: ssl.SSLContext, sni: str, headers: list[tuple[str, str]],
                          payload: bytes = b"", pad: int = 0) -> tuple[int, bytes]:
    """A plain h2 client (blocking, one stream): status and the bytes echoed back. Sends padded DATA."""
    sock = ctx.wrap_socket(socket.create_connection(address, timeout=10), server_hostname=sni)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, headers, end_stream=headers[0][1] != "CONNECT")
    sock.sendall(conn.data_to_send())
    status, received, ended, sent = 0, bytearray(), False, 0
    try:
        while not ended:
            if status == 200 and sent < len(payload):
                room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size - pad - 1,
                           len(payload) - sent)
                if room > 0:
                    conn.send_data(sid, payload[sent:sent + room], pad_length=pad or None)
                    sent += room
                    if sent == len(payload):
                        conn.end_stream(sid)
                    sock.sendall(conn.data_to_send())
                    if select.select([sock], [], [], 0)[0] == [] and not sock.pending():
                        continue
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    received += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    ended = True
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    return status, bytes(received)


async def test_a_plain_h2_client_with_padded_frames_gets_through(pki: Pki, lab: Lab) -> None:
    ctx = client_context(*pki.leaves[CLIENT_ID], pki.root)
    payload = os.urandom(400_000)
    status, echoed = await asyncio.to_thread(
        _h2_reference_request, lab.server.address, ctx, sni_for_identity(SERVER_ID),
        [(":method", "CONNECT"), (":authority", f"127.0.0.1:{lab.targets['echo']}")], payload, 17)
    assert status == 200 and echoed == payload


async def test_a_non_connect_request_is_400(pki: Pki, lab: Lab) -> None:
    ctx = client_context(*pki.leaves[CLIENT_ID], pki.root)
    status, _ = await asyncio.to_thread(
        _h2_reference_request, lab.server.address, ctx, sni_for_identity(SERVER_ID),
        [(":method", "GET"), (":scheme", "https"), (":authority", "x:1"), (":path", "/")])
    assert status == 400 and not lab.requests


def _h2_reference_server(listener: socket.socket, ctx: ssl.SSLContext, stop: threading.Event,
                         refuse: frozenset[int] = frozenset()) -> None:
    """A plain h2 CONNECT server (blocking, one connection): answers 200 and echoes with padded DATA.

    Streams in `refuse` get RST_STREAM(REFUSED_STREAM) instead.
    """
    raw, _ = listener.accept()
    sock = ctx.wrap_socket(raw, server_side=True)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    pending: dict[int, bytearray] = {}
    ended: set[int] = set()
    while not stop.is_set():
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived) and event.stream_id in refuse:
                conn.reset_stream(event.stream_id, fr.REFUSED_STREAM)
            elif isinstance(event, h2.events.RequestReceived):
                conn.send_headers(event.stream_id, [(":status", "200")])
                pending[event.stream_id] = bytearray()
            elif isinstance(event, h2.events.DataReceived) and event.stream_id in pending:
                pending[event.stream_id] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                ended.add(event.stream_id)
        for sid, buf in pending.items():
            while buf:
                room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size - 9, len(buf))
                if room <= 0:
                    break
                conn.send_data(sid, bytes(buf[:room]), pad_length=8)
                del buf[:room]
            if sid in ended and not buf:
                conn.end_stream(sid)
                ended.discard(sid)
        sock.sendall(conn.data_to_send())
    sock.close()


async def test_our_client_against_a_plain_h2_server(pki: Pki) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=_h2_reference_server,
                              args=(listener, server_context(*pki.leaves[SERVER_ID], pki.root), stop), daemon=True)
    thread.start()
    client = HboneClient(pki.source(CLIENT_ID).client_context)
    tunnel = await client.connect(listener.getsockname(), "10.0.0.1:80", CLIENT_ID, SERVER_ID)
    payload = os.urandom(300_000)

    async def send() -> None:
        await tunnel.write(payload)
        tunnel.write_eof()

    sender = asyncio.ensure_future(send())
    got = bytearray()
    while chunk := await tunnel.read():
        got += chunk
    await sender
    assert bytes(got) == payload
    stop.set()
    await client.aclose()
    listener.close()


async def test_a_refused_stream_is_retried(pki: Pki) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    ctx = server_context(*pki.leaves[SERVER_ID], pki.root)
    threading.Thread(target=_h2_reference_server, args=(listener, ctx, stop, frozenset({1})), daemon=True).start()
    client = HboneClient(pki.source(CLIENT_ID).client_context)
    tunnel = await client.connect(listener.getsockname(), "10.0.0.1:80", CLIENT_ID, SERVER_ID)
    assert tunnel.stream_id == 3 and client.connections_opened == 1
    await tunnel.write(b"again")
    assert await tunnel.readexactly(5) == b"again"
    stop.set()
    await client.aclose()
    listener.close()


NODE_CLIENT = r"""
const http2 = require('http2'), crypto = require('crypto'), fs = require('fs');
const [url, authority, sni, dir, size] = process.argv.slice(2);
const read = (n) => fs.readFileSync(dir + '/' + n);
const session = http2.connect(url, {ca: read('root.pem'), cert: read('cert.pem'), key: read('key.pem'),
  servername: sni, minVersion: 'TLSv1.3', checkServerIdentity: () => undefined});
session.on('error', (e) => { console.log(JSON.stringify({error: String(e)})); process.exit(1); });
const req = session.request({':method': 'CONNECT', ':authority': authority, 'baggage': 'from=node'});
const payload = crypto.randomBytes(Number(size)), hash = crypto.createHash('sha256');
let got = 0, status = 0;
req.on('response', (h) => { status = h[':status']; req.end(payload); });
req.on('data', (d) => { got += d.length; hash.update(d); });
req.on('end', () => {
  console.log(JSON.stringify({status, got, echoed: hash.digest('hex'),
    sent: crypto.createHash('sha256').update(payload).digest('hex')}));
  session.close();
});
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js (apt-get install nodejs)")
async def test_nodejs_http2_connect_interoperates(pki: Pki, lab: Lab, tmp_path: Path) -> None:
    (tmp_path / "client.js").write_text(NODE_CLIENT)
    (tmp_path / "root.pem").write_bytes(pki.root)
    (tmp_path / "cert.pem").write_bytes(pki.leaves[CLIENT_ID][0])
    (tmp_path / "key.pem").write_bytes(pki.leaves[CLIENT_ID][1])
    host, port = lab.server.address
    proc = await asyncio.create_subprocess_exec(
        "node", str(tmp_path / "client.js"), f"https://{host}:{port}", f"127.0.0.1:{lab.targets['echo']}",
        sni_for_identity(SERVER_ID), str(tmp_path), str(3 << 20), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["status"] == 200 and result["got"] == 3 << 20 and result["echoed"] == result["sent"]
    assert lab.requests[0].peer_identity == CLIENT_ID and lab.requests[0].headers["baggage"] == "from=node"


async def test_pipe_socket_moves_bytes_between_a_socket_and_a_tunnel(lab: Lab) -> None:
    tunnel = await lab.connect("digest")
    left, right = socket.socketpair()
    piped = asyncio.ensure_future(pipe_socket(tunnel, right))
    payload = os.urandom(2 << 20)
    await asyncio.to_thread(left.sendall, payload)
    left.shutdown(socket.SHUT_WR)
    answer = await asyncio.to_thread(left.recv, 1000)
    assert answer.decode() == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"
    assert await asyncio.wait_for(piped, 10) == (len(payload), len(answer))
    left.close()
