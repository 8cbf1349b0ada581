"""Security faults and root rotation without a lab: the CA's expired leaves, foreign CAs and trust bundle, and an
agent's `WorkloadCerts` following them, checked with real TLS 1.3 handshakes on loopback."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from agents.common.certs import cert_info, make_key_and_csr
from agents.common.faults import parse_faults
from agents.hbone.tls import client_context, server_context, sni_for_identity
from agents.ztunnel.certs import WorkloadCerts
from lab.ca import LabCA, foreign_ca, remove_foreign_ca

TD = "lab.local"
ECHO = f"spiffe://{TD}/ns/sec/sa/echo"
CLIENT = f"spiffe://{TD}/ns/sec/sa/client"


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[Exception | None, Exception | None]:
    """One mutual-TLS connection on 127.0.0.1 with one byte echoed; (server error, client error)."""
    errors: list[Exception | None] = [None, None]
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve() -> None:
            conn, _ = listener.accept()
            conn.settimeout(5)
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(tls.recv(1))
            except (ssl.SSLError, OSError) as e:
                errors[0] = e
        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=5) as raw, \
                    client_ctx.wrap_socket(raw) as tls:
                tls.sendall(b"x")
                if tls.recv(1) != b"x":
                    raise ConnectionError("no echo")
        except (ssl.SSLError, OSError) as e:
            errors[1] = e
        thread.join(10)
    return errors[0], errors[1]


def sign(ca: LabCA, identity: str, expired: bool = False) -> tuple[bytes, bytes]:
    key, csr = make_key_and_csr(identity)
    return key, ca.sign_csr(csr, identity, holder="test", expired=expired).leaf_pem


# ---------------------------------------------------------------- the CA


def test_an_expired_leaf_ended_a_minute_ago_and_fails_verification(tmp_path: Path) -> None:
    ca = LabCA.load_or_create(tmp_path / "ca", TD)
    key, leaf = sign(ca, ECHO, expired=True)
    info = cert_info(leaf)
    assert info.not_after < time.time() and info.not_after > time.time() - 120
    ck, cl = sign(ca, CLIENT)
    server_error, client_error = handshake(server_context(leaf, key, ca.bundle_pem),
                                           client_context(cl, ck, ca.bundle_pem))
    assert isinstance(client_error, ssl.SSLCertVerificationError) and "certificate has expired" in str(client_error)


def test_rotation_steps_persist_and_name_each_root(tmp_path: Path) -> None:
    ca = LabCA.load_or_create(tmp_path / "ca", TD)
    first = ca.root
    new = ca.prepare_root()
    assert new.subject != first.subject and ca.root == first  # trusted, not signing yet
    reloaded = LabCA.load_or_create(tmp_path / "ca", TD)
    assert reloaded.trusted == [first, new] and reloaded.pending is not None
    ca.activate_next_root()
    assert ca.root == new and ca.trusted == [new, first]
    assert x509.load_pem_x509_certificate(sign(ca, ECHO)[1]).issuer == new.subject
    assert LabCA.load_or_create(tmp_path / "ca", TD).root == new
    assert ca.drop_old_roots() == [first]
    assert LabCA.load_or_create(tmp_path / "ca", TD).trusted == [new]
    assert not (tmp_path / "ca" / "next-root-key.pem").exists()
    assert [r["signing"] for r in ca.roots()] == [True]


def test_leaves_of_old_and_new_root_meet_only_while_both_are_trusted(tmp_path: Path) -> None:
    ca = LabCA.load_or_create(tmp_path / "ca", TD)
    old_key, old_leaf = sign(ca, ECHO)
    ca.prepare_root()
    ca.activate_next_root()
    new_key, new_leaf = sign(ca, CLIENT)
    both = ca.bundle_pem
    assert handshake(server_context(old_leaf, old_key, both), client_context(new_leaf, new_key, both)) == (None, None)
    ca.drop_old_roots()
    only_new = ca.bundle_pem
    _, client_error = handshake(server_context(old_leaf, old_key, only_new),
                                client_context(new_leaf, new_key, only_new))
    assert isinstance(client_error, ssl.SSLCertVerificationError)


def test_a_foreign_ca_is_not_in_the_bundle_and_goes_with_its_fault(tmp_path: Path) -> None:
    ca = LabCA.load_or_create(tmp_path / "ca", TD)
    foreign = foreign_ca(ca.ca_dir, "f7", TD)
    assert "foreign root f7" in foreign.root.subject.rfc4514_string()
    assert foreign.root not in ca.trusted
    assert (ca.ca_dir / "foreign" / "f7" / "root-key.pem").stat().st_mode & 0o077 == 0
    remove_foreign_ca(ca.ca_dir, "f7")
    assert not (ca.ca_dir / "foreign" / "f7").exists()


# ---------------------------------------------------------------- the agent: WorkloadCerts


class FakeControlPlane:
    """Signs CSRs like the daemon does (`LiveFaults.issue`), from flags a test sets."""

    def __init__(self, ca: LabCA) -> None:
        self.ca, self.expired, self.foreign = ca, False, None
        self.requests = 0

    async def request_cert(self, identity: str, csr: bytes) -> tuple[bytes, bytes]:
        self.requests += 1
        signer = self.foreign or self.ca
        issued = signer.sign_csr(csr, identity, holder="ztunnel/node-1", expired=self.expired)
        return issued.leaf_pem, issued.root_pem


def fault(kind: str, identity: str, expires_at: float | None = None) -> Any:
    return parse_faults([{"id": "f1", "kind": kind, "layer": "l4", "params": {"identity": identity},
                          "target": {"type": "workload", "name": "echo-v1", "workloads": ["echo-v1"]},
                          "expiresAt": expires_at}])


async def settle(certs: WorkloadCerts, check: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "the certificate did not change in time"
        await asyncio.sleep(0.02)


async def test_expire_cert_presents_an_expired_leaf_until_the_fault_ends(tmp_path: Path) -> None:
    ca = LabCA.load_or_create(tmp_path / "ca", TD)
    cp = FakeControlPlane(ca)
    certs = WorkloadCerts(cp.request_cert)
    await certs.follow(ca.trust_json(), [])
    certs.want([ECHO])
    await settle(certs, lambda: ECHO in certs.certs)
    peer_key, peer_leaf = sign(ca, CLIENT)
    peer = client_context(peer_leaf, peer_key, ca.bundle_pem)
    assert handshake(certs.server_context(sni_for_identity(ECHO)), peer) == (None, None)

    cp.expired = True
    await certs.follow(ca.trust_json(), fault("expire_cert", ECHO, time.time() + 1.0))
    await settle(certs, lambda: certs.describe()[0]["expired"])
    assert certs.describe()[0]["renew_at"] == "when its fault ends"
    _, client_error = handshake(certs.server_context(sni_for_identity(ECHO)), peer)
    assert "certificate has expired" in str(client_error)

    cp.expired = False  # the fault's TTL passes: the agent renews by itself, no new config needed
    await settle(certs, lambda: not certs.describe()[0]["expired"], within=5.0)
    assert handshake(certs.server_context(sni_for_identity(ECHO)), peer) == (None, None)
    await certs.close()


async def test_foreign_ca_trusts_only_the_foreign_root(tmp_path: Path) -> None:
    ca = LabCA.load_or_create(tmp_path / "ca", TD)
    cp = FakeControlPlane(ca)
    certs = WorkloadCerts(cp.request_cert)
    await certs.follow(ca.trust_json(), [])
    certs.want([CLIENT])
    await settle(certs, lambda: CLIENT in certs.certs)
    cp.foreign = foreign_ca(ca.ca_dir, "f1", TD)
    await certs.follow(ca.trust_json(), fault("foreign_ca", CLIENT))
    await settle(certs, lambda: certs.describe()[0]["foreign"])
    lab_key, lab_leaf = sign(ca, ECHO)
    server_error, client_error = handshake(server_context(lab_leaf, lab_key, ca.bundle_pem),
                                           certs.client_context(CLIENT))
    assert isinstance(client_error, ssl.SSLCertVerificationError)  # it refuses the lab's server ...
    cp.foreign = None
    await certs.follow(ca.trust_json(), [])
    await settle(certs, lambda: not certs.describe()[0]["foreign"])
    assert handshake(server_context(lab_leaf, lab_key, ca.bundle_pem), certs.client_context(CLIENT)) == (None, None)
    await certs.close()


async def test_a_new_bundle_rebuilds_contexts_and_a_new_signer_renews(tmp_path: Path) -> None:
    ca = LabCA.load_or_create(tmp_path / "ca", TD)
    cp = FakeControlPlane(ca)
    rotated: list[str] = []
    certs = WorkloadCerts(cp.request_cert, on_rotated=rotated.append)
    await certs.follow(ca.trust_json(), [])
    certs.want([ECHO])
    await settle(certs, lambda: ECHO in certs.certs)
    first = certs.certs[ECHO]
    ca.prepare_root()
    await certs.follow(ca.trust_json(), [])  # step 1: trust both, same leaf, new contexts
    assert certs.certs[ECHO].leaf_pem == first.leaf_pem and certs.describe()[0]["trusted_roots"] == 2
    assert rotated == [ECHO]
    ca.activate_next_root()
    await certs.follow(ca.trust_json(), [])  # step 2: the signer changed: renewed at once
    await settle(certs, lambda: certs.certs[ECHO].info.issuer == ca.root.subject.rfc4514_string())
    ca.drop_old_roots()
    await certs.follow(ca.trust_json(), [])
    assert certs.describe()[0]["trusted_roots"] == 1
    peer_key, peer_leaf = sign(ca, CLIENT)
    assert handshake(certs.server_context(sni_for_identity(ECHO)),
                     client_context(peer_leaf, peer_key, ca.bundle_pem)) == (None, None)
    await certs.close()


async def test_a_malformed_trust_section_is_refused(tmp_path: Path) -> None:
    certs = WorkloadCerts(FakeControlPlane(LabCA.load_or_create(tmp_path / "ca", TD)).request_cert)
    with pytest.raises(ValueError, match="trust.roots"):
        await certs.follow({"roots": ["not a certificate"]}, [])
    with pytest.raises(ValueError, match="trust: want an object"):
        await certs.follow(["x"], [])
    assert certs.trust_roots is None  # the bad bundle was not taken
    await certs.close()
