"""Istio security YAML applied with `meshlab apply` to an ambient lab, checked with real traffic and real certs."""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agents.hbone.client import HboneClient
from agents.hbone.stream import HboneError
from agents.hbone.tls import client_context
from tests.support import meshlab

ROOT = Path(__file__).resolve().parents[2]
ECHO = ROOT / "topologies" / "echo.yaml"
TD = "spiffe://cluster.local/ns/echo/sa/"

pytestmark = pytest.mark.slow

ALLOW_ONLY_CLIENT = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: echo-from-client
  namespace: echo
spec:
  selector:
    matchLabels:
      app: echo
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/echo/sa/client"]
"""

STRICT = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: echo
spec:
  mtls:
    mode: STRICT
"""


@pytest.fixture(scope="module")
def echo_lab():
    meshlab("up", str(ECHO))
    meshlab("mode", "echo", "ambient")
    state = json.loads(meshlab("status", "echo", "--json").stdout)
    yield state
    meshlab("down", "echo", check=False)


def load(n: int = 20) -> dict:
    return json.loads(meshlab("load", "echo:8080/", "-n", str(n), "--from", "client", "--json", "--lab", "echo").stdout)


def issued(tmp_path: Path, sa: str) -> ssl.SSLContext:
    out = tmp_path / sa
    meshlab("certs", "issue", TD + sa, "--out", str(out), "--lab", "echo")
    return client_context((out / "cert.pem").read_bytes(), (out / "key.pem").read_bytes(),
                          (out / "root-cert.pem").read_bytes())


async def connect_as(ctx: ssl.SSLContext, state: dict) -> bytes:
    """Open an HBONE tunnel to echo-v1 through its ztunnel and send one HTTP request."""
    w = state["workloads"]["echo-v1"]
    node = state["nodes"][w["node"]]["address"]
    client = HboneClient(lambda identity: ctx)
    try:
        tunnel = await client.connect((node, 15008), f"{w['address']}:{w['port']}", TD + "poke", TD + "echo")
        await tunnel.write(b"GET /headers HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n")
        return await asyncio.wait_for(tunnel.read(), 10)
    finally:
        await client.aclose()


def test_a_lab_issued_cert_reaches_a_workload_over_hbone(echo_lab, tmp_path: Path) -> None:
    answer = asyncio.run(connect_as(issued(tmp_path, "poke"), echo_lab))
    assert answer.startswith(b"HTTP/1.1 200")


def test_authorization_policy_denies_other_identities_with_401(echo_lab, tmp_path: Path) -> None:
    policy = tmp_path / "allow.yaml"
    policy.write_text(ALLOW_ONLY_CLIENT)
    out = meshlab("apply", "-f", str(policy), "--lab", "echo")
    assert "authorizationpolicy/echo/echo-from-client created" in out.stdout
    try:
        assert load()["codes"] == {"200": 20}  # the client is allowed
        with pytest.raises(HboneError) as e:
            asyncio.run(connect_as(issued(tmp_path, "poke"), echo_lab))
        assert e.value.status == 401 and "echo-from-client" in str(e.value)
    finally:
        meshlab("delete", "-f", str(policy), "--lab", "echo")
    assert asyncio.run(connect_as(issued(tmp_path, "poke"), echo_lab)).startswith(b"HTTP/1.1 200")


def test_strict_mtls_refuses_plaintext_callers(echo_lab, tmp_path: Path) -> None:
    w = echo_lab["workloads"]["echo-v1"]
    capture = w["inboundCapture"]

    def plaintext() -> bytes:
        with socket.create_connection((capture, w["port"]), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n")
            try:
                return s.recv(100)
            except ConnectionResetError:
                return b""

    assert plaintext().startswith(b"HTTP/1.1 200")  # PERMISSIVE by default
    meshlab("apply", "-f", "-", "--lab", "echo", input=STRICT)
    try:
        assert plaintext() == b""  # closed by the ztunnel
        assert load()["codes"] == {"200": 20}  # in-mesh traffic is mTLS and unaffected
    finally:
        meshlab("delete", "peerauthentication", "default", "-n", "echo", "--lab", "echo")


def test_plaintext_and_foreign_certificates_fail_at_15008(echo_lab, tmp_path: Path) -> None:
    node = echo_lab["nodes"]["node-1"]["address"]
    with socket.create_connection((node, 15008), timeout=5) as s:  # not TLS at all
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        s.settimeout(5)
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "elsewhere")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(TD + "client")]), False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    foreign = client_context(pem, key_pem, pem)  # trusts only itself: the lab's server cert fails too
    with pytest.raises(HboneError) as e:
        asyncio.run(connect_as(foreign, echo_lab))
    assert e.value.status is None  # no HTTP answer: the handshake failed
