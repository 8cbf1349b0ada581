"""Agent-side certificate helpers with real crypto: keys and CSRs, cert_info, SPIFFE IDs over mutual TLS 1.3."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agents.common import certs
from agents.common.certs import (CertInfo, NoKeyTool, cert_info, make_key_and_csr, parse_spiffe, renew_at, spiffe_id,
                                 spiffe_id_of_peer)
from lab.ca import LabCA

ROOT = Path(__file__).resolve().parents[2]
TD = "lab.local"
PRODUCTPAGE = f"spiffe://{TD}/ns/bookinfo/sa/bookinfo-productpage"
REVIEWS = f"spiffe://{TD}/ns/bookinfo/sa/bookinfo-reviews"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    return LabCA.load_or_create(tmp_path_factory.mktemp("lab") / "ca", TD)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    return LabCA.load_or_create(tmp_path_factory.mktemp("other-lab") / "ca", TD)


# --- SPIFFE IDs ----------------------------------------------------------------------------------------------

def test_parse_spiffe() -> None:
    assert parse_spiffe(PRODUCTPAGE) == (TD, "bookinfo", "bookinfo-productpage")
    assert parse_spiffe("spiffe://cluster.local/ns/default/sa/default") == ("cluster.local", "default", "default")


def test_spiffe_id_builds_and_checks() -> None:
    assert spiffe_id(TD, "bookinfo", "bookinfo-productpage") == PRODUCTPAGE
    with pytest.raises(ValueError):
        spiffe_id(TD, "book/info", "x")


@pytest.mark.parametrize("bad", [
    "", "spiffe://lab.local", "spiffe://lab.local/ns/a", "spiffe://lab.local/ns/a/sa/", "https://lab.local/ns/a/sa/b",
    "spiffe://Lab.Local/ns/a/sa/b", "spiffe://lab.local/ns/a/sa/b/extra", "spiffe://lab.local/ns/../sa/b",
    "spiffe://lab.local/sa/b/ns/a", "spiffe://lab local/ns/a/sa/b", " spiffe://lab.local/ns/a/sa/b",
])
def test_parse_spiffe_refuses_what_is_not_a_workload_identity(bad: str) -> None:
    with pytest.raises(ValueError, match="not a SPIFFE workload identity"):
        parse_spiffe(bad)


# --- keys and CSRs ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["auto", "cryptography", "openssl"])
def test_make_key_and_csr(backend: str) -> None:
    key_pem, csr_pem = make_key_and_csr(PRODUCTPAGE, backend=backend)  # type: ignore[arg-type]
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid and csr.public_key() == key.public_key()
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(PRODUCTPAGE)]


def test_make_key_and_csr_wants_a_spiffe_id() -> None:
    with pytest.raises(ValueError):
        make_key_and_csr("reviews")


def test_without_cryptography_openssl_makes_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(certs, "_cryptography", lambda: None)
    _, csr_pem = make_key_and_csr(PRODUCTPAGE)
    assert x509.load_pem_x509_csr(csr_pem).is_signature_valid
    with pytest.raises(NoKeyTool, match="cryptography"):
        make_key_and_csr(PRODUCTPAGE, backend="cryptography")


def test_with_no_key_tool_the_node_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no openssl there
    with pytest.raises(NoKeyTool, match="openssl"):
        make_key_and_csr(PRODUCTPAGE, backend="openssl")
    monkeypatch.setattr(certs, "_cryptography", lambda: None)
    with pytest.raises(NoKeyTool, match="neither"):
        make_key_and_csr(PRODUCTPAGE)


def test_a_failing_openssl_is_no_key_tool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "openssl"
    fake.write_text("#!/bin/sh\necho 'unknown option -addext' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NoKeyTool, match="unknown option"):
        make_key_and_csr(PRODUCTPAGE, backend="openssl")


# --- cert_info -----------------------------------------------------------------------------------------------

def test_cert_info_of_a_leaf_on_the_stdlib_path(ca: LabCA) -> None:
    _, issued = ca.issue(PRODUCTPAGE, timedelta(minutes=10))
    info = cert_info(issued.leaf_pem, backend="stdlib")
    assert info == CertInfo(serial=issued.serial, not_before=issued.not_before.timestamp(),
                            not_after=issued.not_after.timestamp(), uris=[PRODUCTPAGE],
                            issuer=f"CN=meshlab root {TD},O=meshlab")
    assert cert_info(issued.leaf_pem + issued.root_pem) == info  # a chain: the leaf comes first


def test_cert_info_stdlib_matches_cryptography(ca: LabCA) -> None:
    server_pem = ca.issue_server_cert(["127.0.0.1", "localhost"])[1]
    for pem in (ca.issue(REVIEWS)[1].leaf_pem, ca.root_pem, server_pem):
        assert cert_info(pem, backend="stdlib") == cert_info(pem, backend="cryptography")
    assert cert_info(server_pem, backend="stdlib").uris == []


def test_cert_info_issuer_escapes_like_rfc4514() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, " a,b+c=\\d "),
                      x509.NameAttribute(NameOID.COMMON_NAME, "#x;<y>")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    assert cert_info(pem, backend="stdlib").issuer == cert_info(pem, backend="cryptography").issuer
    assert cert_info(pem, backend="stdlib").serial == "1"


BROKEN_PEM = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize("backend", ["stdlib", "cryptography"])
def test_cert_info_refuses_garbage(backend: str) -> None:
    with pytest.raises(ValueError):
        cert_info(b"garbage", backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a certificate"):
        cert_info(BROKEN_PEM, backend=backend)  # type: ignore[arg-type]


def test_renew_at_half_life() -> None:
    info = CertInfo(serial="1", not_before=1000.0, not_after=1000.0 + 86400, uris=[], issuer="")
    assert renew_at(info) == 1000.0 + 43200


# --- mutual TLS 1.3 with lab leaves ---------------------------------------------------------------------------

@dataclass
class Handshake:
    server_saw: str | None = None
    client_saw: str | None = None
    echoed: bytes = b""
    server_error: BaseException | None = None
    client_error: BaseException | None = None


def tls_context(server_side: bool, key_pem: bytes, cert_pem: bytes, trusted_root: bytes, tmp: Path) -> ssl.SSLContext:
    """What a mesh proxy builds: TLS 1.3, a certificate required from the peer, no host names."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=trusted_root.decode())
    side = "server" if server_side else "client"
    (tmp / f"{side}-key.pem").write_bytes(key_pem)
    (tmp / f"{side}-cert.pem").write_bytes(cert_pem)
    ctx.load_cert_chain(tmp / f"{side}-cert.pem", tmp / f"{side}-key.pem")
    return ctx


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Handshake:
    """One connection on 127.0.0.1: handshake, then the client sends a byte the server echoes."""
    result = Handshake()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve() -> None:
            conn, _ = listener.accept()
            conn.settimeout(5)
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    result.server_saw = spiffe_id_of_peer(tls)
                    tls.sendall(tls.recv(1))
            except (ssl.SSLError, OSError) as e:
                result.server_error = e

        server = threading.Thread(target=serve)
        server.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=5) as raw, client_ctx.wrap_socket(raw) as tls:
                assert tls.version() == "TLSv1.3"
                result.client_saw = spiffe_id_of_peer(tls)
                tls.sendall(b"x")
                result.echoed = tls.recv(1)
        except (ssl.SSLError, OSError) as e:
            result.client_error = e
        server.join(10)
    return result


def signed_leaf(ca: LabCA, identity: str, backend: str) -> tuple[bytes, bytes]:
    """A key and leaf made the way a node makes them: its own key, a CSR, the CA's signature."""
    key_pem, csr_pem = make_key_and_csr(identity, backend=backend)  # type: ignore[arg-type]
    return key_pem, ca.sign_csr(csr_pem, identity, holder="node-1").leaf_pem


def test_mutual_tls_with_lab_leaves(ca: LabCA, tmp_path: Path) -> None:
    server = tls_context(True, *signed_leaf(ca, REVIEWS, "openssl"), ca.root_pem, tmp_path)
    client = tls_context(False, *signed_leaf(ca, PRODUCTPAGE, "cryptography"), ca.root_pem, tmp_path)
    result = handshake(server, client)
    assert (result.server_error, result.client_error) == (None, None)
    assert result.echoed == b"x"
    assert (result.server_saw, result.client_saw) == (PRODUCTPAGE, REVIEWS)


def test_mutual_tls_with_a_ca_made_key(ca: LabCA, tmp_path: Path) -> None:
    key_pem, issued = ca.issue(PRODUCTPAGE)
    server = tls_context(True, *signed_leaf(ca, REVIEWS, "auto"), ca.root_pem, tmp_path)
    client = tls_context(False, key_pem, issued.leaf_pem, ca.root_pem, tmp_path)
    assert handshake(server, client).server_saw == PRODUCTPAGE


def test_a_client_leaf_from_another_ca_is_refused(ca: LabCA, other_ca: LabCA, tmp_path: Path) -> None:
    server = tls_context(True, *signed_leaf(ca, REVIEWS, "auto"), ca.root_pem, tmp_path)
    client = tls_context(False, *signed_leaf(other_ca, PRODUCTPAGE, "auto"), ca.root_pem, tmp_path)
    result = handshake(server, client)
    assert isinstance(result.server_error, ssl.SSLCertVerificationError)
    assert result.server_saw is None and result.echoed == b""


def test_a_server_leaf_from_another_ca_is_refused(ca: LabCA, other_ca: LabCA, tmp_path: Path) -> None:
    server = tls_context(True, *signed_leaf(other_ca, REVIEWS, "auto"), ca.root_pem, tmp_path)
    client = tls_context(False, *signed_leaf(ca, PRODUCTPAGE, "auto"), ca.root_pem, tmp_path)
    result = handshake(server, client)
    assert isinstance(result.client_error, ssl.SSLCertVerificationError)
    assert result.client_saw is None


def test_a_peer_without_a_spiffe_id(ca: LabCA, tmp_path: Path) -> None:
    server = tls_context(True, *ca.issue_server_cert(["127.0.0.1"]), ca.root_pem, tmp_path)
    client = tls_context(False, *signed_leaf(ca, PRODUCTPAGE, "auto"), ca.root_pem, tmp_path)
    result = handshake(server, client)
    assert result.echoed == b"x" and result.client_saw is None and result.server_saw == PRODUCTPAGE


# --- a node without cryptography ------------------------------------------------------------------------------

def test_a_bare_interpreter_makes_keys_with_openssl_and_reads_certs(ca: LabCA) -> None:
    """`python -I -S` has no site-packages: keys come from openssl, cert_info from the standard library."""
    leaf = ca.issue(PRODUCTPAGE)[1].leaf_pem
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1])\n"
        "from agents.common import certs\n"
        "assert certs._cryptography() is None\n"
        "key, csr = certs.make_key_and_csr(sys.argv[2])\n"
        "info = certs.cert_info(sys.argv[3].encode())\n"
        "print(json.dumps({'csr': csr.decode(), 'info': info.__dict__}))\n"
    )
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(ROOT), REVIEWS, leaf.decode()],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert CertInfo(**out["info"]) == cert_info(leaf, backend="cryptography")
    issued = ca.sign_csr(out["csr"].encode(), REVIEWS, holder="node-3")
    assert cert_info(issued.leaf_pem).uris == [REVIEWS]
