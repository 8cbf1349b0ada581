"""Mutual TLS 1.3 for HBONE: contexts from PEM, peer identity, and SNI names for identities.

Every HBONE connection is TLS 1.3 only, ALPN ``h2``, with a certificate required
on both sides and verified against the lab root. There is no hostname check: a
workload's identity is the ``spiffe://`` URI SAN of its certificate, read with
`peer_identity` after the handshake and checked by the caller.

Which certificate the server presents (SNI)
-------------------------------------------
A TLS server presents one certificate per handshake, and HBONE's destination
side must present the *destination workload's* certificate. Istio's ztunnel
finds the destination from the connection's original destination address; in
the lab every workload of a node shares the ztunnel's port 15008, so the client
names the identity it expects in SNI and the server picks that identity's
context in its `sni_callback`:

* ``spiffe://<td>/ns/<ns>/sa/<sa>`` → ``<sa>.<ns>.<td>.spiffe`` when <ns> and
  <sa> are DNS labels and <td> a DNS name (the usual case; readable in a packet
  capture, which is the point of a lab), for example
  ``reviews.bookinfo.cluster.local.spiffe``;
* anything else → ``<sha256(identity)[:32] hex>.sha256.spiffe``.

A decodable name always has at least three labels before ``.spiffe``; a hashed
one exactly two, so the two forms never collide. `identity_from_sni` reverses
the first form. The client still checks the presented identity: SNI selects,
the certificate proves.

`CertSource` is what a ztunnel hands to HBONE: one client context per source
identity, one server context per local identity (selected by SNI).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import ssl
import tempfile
import threading
from typing import Any, Protocol

ALPN = "h2"
SNI_SUFFIX = ".spiffe"
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_LABEL_RE = re.compile(rf"^{_LABEL}$")
_DNS_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_SPIFFE_RE = re.compile(r"^spiffe://([^/]+)/ns/([^/]+)/sa/([^/]+)$")
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


class IdentityContext(ssl.SSLContext):
    """An SSLContext that remembers the SPIFFE identity of the certificate it presents."""

    identity: str | None = None


def _context(server: bool, cert_pem: bytes, key_pem: bytes, root_pem: bytes,
             identity: str | None) -> IdentityContext:
    ctx = IdentityContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols([ALPN])
    if server:
        # No session tickets: HBONE connections are long-lived and pooled, resumption buys nothing.
        ctx.num_tickets = 0
    ctx.load_verify_locations(cadata=_text(root_pem))
    tmp = tempfile.mkdtemp(prefix="hbone-tls-")  # mode 0700
    try:
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for path, data in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(_bytes(data))
        ctx.load_cert_chain(cert_path, key_path)
        ctx.identity = identity or _cert_identity(cert_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ctx


def server_context(cert_pem: bytes | str, key_pem: bytes | str, root_pem: bytes | str,
                   *, identity: str | None = None) -> IdentityContext:
    """A server context: TLS 1.3, ALPN h2, client certificate required against `root_pem`."""
    return _context(True, _bytes(cert_pem), _bytes(key_pem), _bytes(root_pem), identity)


def client_context(cert_pem: bytes | str, key_pem: bytes | str, root_pem: bytes | str,
                   *, identity: str | None = None) -> IdentityContext:
    """A client context: TLS 1.3, ALPN h2, server certificate verified against `root_pem`, no hostname check."""
    return _context(False, _bytes(cert_pem), _bytes(key_pem), _bytes(root_pem), identity)


def bare_server_context() -> ssl.SSLContext:
    """A server context without a certificate: the base when only SNI can pick one."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols([ALPN])
    ctx.num_tickets = 0
    return ctx


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | TlsChannel) -> str | None:
    """The first ``spiffe://`` URI SAN of the verified peer certificate, or None."""
    try:
        cert = ssl_object.getpeercert()
    except (ValueError, ssl.SSLError):
        return None
    return _spiffe_uri(cert or {})


def context_identity(ctx: ssl.SSLContext | None) -> str | None:
    """The identity a context presents, when it was made here."""
    return getattr(ctx, "identity", None)


def sni_for_identity(identity: str) -> str:
    """The SNI name a client sends to ask for `identity`'s certificate (see the module docstring)."""
    m = _SPIFFE_RE.match(identity)
    if m:
        td, ns, sa = m.groups()
        name = f"{sa}.{ns}.{td}{SNI_SUFFIX}"
        if _LABEL_RE.match(sa) and _LABEL_RE.match(ns) and _DNS_RE.match(td) and len(name) <= 253:
            return name
    return hashlib.sha256(identity.encode()).hexdigest()[:32] + ".sha256" + SNI_SUFFIX


def identity_from_sni(sni: str | None) -> str | None:
    """The identity a readable SNI name stands for; None for hashed or foreign names."""
    if not sni or not sni.endswith(SNI_SUFFIX):
        return None
    labels = sni[: -len(SNI_SUFFIX)].split(".")
    if len(labels) < 3:
        return None
    sa, ns, td = labels[0], labels[1], ".".join(labels[2:])
    return f"spiffe://{td}/ns/{ns}/sa/{sa}"


class TlsChannel:
    """TLS over a blocking socket with OpenSSL working in memory (`ssl.MemoryBIO`).

    A socket-BIO `SSLSocket` makes two `read()` calls per TLS record (header, then
    body) and one `write()` per 16 KB record; here the socket is read and written in
    large blocks and OpenSSL encrypts and decrypts in memory, for one extra memcpy.
    On loopback that is ~15-25% less CPU per GB (see lab/bench/l4.py).

    One reader thread calls `recv_into`; writers serialise `send` among themselves
    (the connection's send lock). Every call into the TLS object holds `_tls_lock`,
    so reads and writes never touch OpenSSL's state at the same time; whatever
    OpenSSL writes while reading (a KeyUpdate answer, an alert) waits in the
    outgoing BIO and leaves with the next `send`.
    """

    RAW_BLOCK = 256 << 10

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None) -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                server_hostname=server_hostname)
        self._tls_lock = threading.Lock()
        self._raw = bytearray(self.RAW_BLOCK)
        self._raw_view = memoryview(self._raw)
        self._eof = False
        self._backlog = b""  # ciphertext a non-blocking send left over; goes out before anything else

    def handshake(self, timeout: float) -> None:
        """The TLS handshake, blocking, within `timeout` seconds (OSError/ssl.SSLError on failure)."""
        self.sock.settimeout(timeout)
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush_output()
                data = self.sock.recv(self.RAW_BLOCK)
                if not data:
                    raise ConnectionResetError("connection closed during the TLS handshake") from None
                self._incoming.write(data)
            except ssl.SSLError:
                try:
                    self._flush_output()  # the alert, so the peer learns why
                except OSError:
                    pass
                raise
        self._flush_output()
        self.sock.settimeout(None)

    @property
    def context(self) -> ssl.SSLContext:
        return self.obj.context

    @property
    def sni(self) -> str | None:
        """The SNI name the client sent (server side; recorded by the server's sni_callback)."""
        return getattr(self.obj, "hbone_sni", None)

    def recv_into(self, view: memoryview) -> int:
        """Decrypt into `view`, blocking until at least one byte (0: the peer closed)."""
        obj, incoming, size = self.obj, self._incoming, len(view)
        while True:
            got = 0
            # Only the reader touches the incoming side, so these checks need no lock; calling
            # OpenSSL with nothing to decrypt would cost an exception and a GIL round trip.
            if incoming.pending or obj.pending():
                with self._tls_lock:
                    try:
                        while got < size and (incoming.pending or obj.pending()):
                            got += obj.read(size - got, view[got:])
                    except ssl.SSLWantReadError:
                        pass  # a partial record: more bytes needed
                    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                        self._eof = True
            if got or self._eof:
                return got
            n = self.sock.recv_into(self._raw)
            if not n:
                return 0
            incoming.write(self._raw_view[:n])

    def send(self, *chunks: bytes | memoryview) -> None:
        """Encrypt `chunks` and write them (after any backlog) with one socket send; blocks.

        Callers serialise `send` and `try_send` (the connection's send lock).
        """
        self.sock.sendall(self._encrypt(chunks))

    def try_send(self, *chunks: bytes | memoryview) -> bool:
        """As `send`, without blocking: what the socket does not take waits as backlog (False)."""
        data = self._encrypt(chunks)
        try:
            sent = self.sock.send(data, _DONTWAIT) if _DONTWAIT else 0
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self._backlog = data[sent:]
            return False
        return True

    @property
    def backlog(self) -> bool:
        return bool(self._backlog)

    def _encrypt(self, chunks: tuple[bytes | memoryview, ...]) -> bytes:
        with self._tls_lock:
            for chunk in chunks:
                self.obj.write(chunk)
            data = self._outgoing.read()
        if self._backlog:
            data, self._backlog = self._backlog + data, b""
        return data

    def _flush_output(self) -> None:
        if self._outgoing.pending:
            self.sock.sendall(self._outgoing.read())

    def getpeercert(self) -> dict[str, Any] | None:
        return self.obj.getpeercert()  # type: ignore[return-value]

    def selected_alpn_protocol(self) -> str | None:
        return self.obj.selected_alpn_protocol()

    def getpeername(self) -> Any:
        return self.sock.getpeername()

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()


class CertSource(Protocol):
    """Where HBONE gets its TLS contexts: the ztunnel implements this from its certificates."""

    def client_context(self, identity: str) -> ssl.SSLContext | None:
        """The context to connect as `identity` (a source workload), or None if it has no certificate."""

    def server_context(self, sni: str | None) -> ssl.SSLContext | None:
        """The context to present for an SNI name (None: no SNI sent), or None to refuse the handshake."""


class StaticCertSource:
    """A CertSource over a fixed set of identities (tests, the benchmark, simple agents)."""

    def __init__(self) -> None:
        self._client: dict[str, ssl.SSLContext] = {}
        self._server: dict[str, ssl.SSLContext] = {}
        self.default: ssl.SSLContext | None = None

    def add(self, cert_pem: bytes | str, key_pem: bytes | str, root_pem: bytes | str,
            identity: str | None = None) -> str:
        """Add one identity's certificate; returns the identity (read from the certificate if not given)."""
        server = server_context(cert_pem, key_pem, root_pem, identity=identity)
        ident = server.identity
        if not ident:
            raise ValueError("certificate has no spiffe:// URI SAN; pass identity=")
        self._server[sni_for_identity(ident)] = server
        self._client[ident] = client_context(cert_pem, key_pem, root_pem, identity=ident)
        return ident

    def client_context(self, identity: str) -> ssl.SSLContext | None:
        return self._client.get(identity)

    def server_context(self, sni: str | None) -> ssl.SSLContext | None:
        if sni is None:
            return self.default
        return self._server.get(sni, None)


def _cert_identity(path: str) -> str | None:
    try:  # the ssl module's own certificate decoder; private, hence the fallback
        return _spiffe_uri(ssl._ssl._test_decode_cert(path))  # type: ignore[attr-defined]
    except Exception:
        return None


def _spiffe_uri(cert: dict[str, Any]) -> str | None:
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "URI" and value.startswith("spiffe://"):
            return value
    return None


def _bytes(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _text(data: bytes | str) -> str:
    return data.decode() if isinstance(data, bytes) else data
