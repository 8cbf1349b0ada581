"""The lab CA with real crypto: roots, leaves from every key path, refusals, registry, node authorization."""

from __future__ import annotations

import json
import logging
import stat
import subprocess
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agents.common.certs import make_key_and_csr
from lab.ca import DEFAULT_TTL, IssuedRegistry, LabCA, NodeAuthorizer, renewal_time
from lab.errors import CertificateRefused, LabError

TD = "lab.local"
PRODUCTPAGE = f"spiffe://{TD}/ns/bookinfo/sa/bookinfo-productpage"
DETAILS = f"spiffe://{TD}/ns/bookinfo/sa/bookinfo-details"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LabCA:
    return LabCA.load_or_create(tmp_path_factory.mktemp("lab") / "ca", TD)


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=30)


def leaf_from(ca: LabCA, path: str, identity: str = PRODUCTPAGE, ttl: timedelta = DEFAULT_TTL) -> bytes:
    """A leaf for `identity` made along one of the three key paths."""
    if path == "ca":
        return ca.issue(identity, ttl, holder="meshlab")[1].leaf_pem
    _, csr = make_key_and_csr(identity, backend=path)  # type: ignore[arg-type]
    return ca.sign_csr(csr, identity, ttl, holder="node-1").leaf_pem


def rsa_csr(identity: str, bits: int = 2048) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


# --- the root -------------------------------------------------------------------------------------------

def test_root_is_a_p256_ca_for_leaves_only(ca: LabCA) -> None:
    root = x509.load_pem_x509_certificate((ca.ca_dir / "root-cert.pem").read_bytes())
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp256r1"
    assert root.subject == root.issuer
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "meshlab"
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"meshlab root {TD}"
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    lifetime = root.not_valid_after_utc - root.not_valid_before_utc
    assert timedelta(days=3649) < lifetime < timedelta(days=3652)
    assert openssl("verify", "-x509_strict", "-CAfile", ca.ca_dir / "root-cert.pem",
                   ca.ca_dir / "root-cert.pem").returncode == 0


def test_root_key_is_private(ca: LabCA) -> None:
    assert stat.S_IMODE((ca.ca_dir / "root-key.pem").stat().st_mode) == 0o600
    assert (ca.ca_dir / "root-key.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_load_or_create_reuses_the_root(tmp_path: Path) -> None:
    first = LabCA.load_or_create(tmp_path / "ca", TD)
    key_before = (tmp_path / "ca" / "root-key.pem").read_bytes()
    again = LabCA.load_or_create(tmp_path / "ca", TD)
    assert again.root_pem == first.root_pem
    assert (tmp_path / "ca" / "root-key.pem").read_bytes() == key_before
    # A leaf signed by the reloaded CA chains to the first root.
    leaf = again.issue(PRODUCTPAGE)[1].leaf_pem
    (tmp_path / "leaf.pem").write_bytes(leaf)
    (tmp_path / "root.pem").write_bytes(first.root_pem)
    assert openssl("verify", "-CAfile", tmp_path / "root.pem", tmp_path / "leaf.pem").returncode == 0


@pytest.mark.parametrize("bad", ["", "Lab.Local", "odd,td", "a/b"])
def test_a_bad_trust_domain_is_an_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(LabError, match="bad trust domain"):
        LabCA.load_or_create(tmp_path / "ca", bad)
    assert not (tmp_path / "ca").exists()


def test_a_half_written_ca_folder_is_an_error(tmp_path: Path) -> None:
    LabCA.load_or_create(tmp_path / "ca", TD)
    (tmp_path / "ca" / "root-cert.pem").unlink()
    with pytest.raises(LabError, match="unreadable"):
        LabCA.load_or_create(tmp_path / "ca", TD)


def test_a_root_key_from_elsewhere_is_an_error(tmp_path: Path) -> None:
    LabCA.load_or_create(tmp_path / "a", TD)
    LabCA.load_or_create(tmp_path / "b", TD)
    (tmp_path / "a" / "root-key.pem").write_bytes((tmp_path / "b" / "root-key.pem").read_bytes())
    with pytest.raises(LabError, match="does not belong"):
        LabCA.load_or_create(tmp_path / "a", TD)


# --- leaves -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["cryptography", "openssl", "ca"])
def test_every_key_path_gives_a_leaf_openssl_accepts(ca: LabCA, path: str, tmp_path: Path) -> None:
    (tmp_path / "root.pem").write_bytes(ca.root_pem)
    (tmp_path / "leaf.pem").write_bytes(leaf_from(ca, path))
    for purpose in ("sslclient", "sslserver"):
        done = openssl("verify", "-x509_strict", "-purpose", purpose, "-CAfile", tmp_path / "root.pem",
                       tmp_path / "leaf.pem")
        assert done.returncode == 0 and "leaf.pem: OK" in done.stdout, done.stderr
    text = openssl("x509", "-noout", "-text", "-in", tmp_path / "leaf.pem").stdout
    assert f"URI:{PRODUCTPAGE}" in text


@pytest.mark.parametrize("path", ["cryptography", "openssl", "ca"])
def test_leaf_extensions(ca: LabCA, path: str) -> None:
    leaf = x509.load_pem_x509_certificate(leaf_from(ca, path))
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(PRODUCTPAGE)]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and not ku.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    root_ski = ca.root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest
    assert leaf.issuer == ca.root.subject


def test_serials_are_random(ca: LabCA) -> None:
    serials = {ca.issue(PRODUCTPAGE)[1].serial for _ in range(5)}
    assert len(serials) == 5 and all(len(s) > 30 for s in serials)


def test_ttl_is_honoured_with_a_minute_of_clock_skew(ca: LabCA) -> None:
    _, csr = make_key_and_csr(DETAILS)
    now = datetime.now(timezone.utc)
    issued = ca.sign_csr(csr, DETAILS, timedelta(minutes=2), holder="node-2")
    assert abs(issued.not_before - (now - timedelta(seconds=60))) < timedelta(seconds=2)
    assert abs(issued.not_after - (now + timedelta(minutes=2))) < timedelta(seconds=2)
    leaf = x509.load_pem_x509_certificate(issued.leaf_pem)
    assert (leaf.not_valid_before_utc, leaf.not_valid_after_utc) == (issued.not_before, issued.not_after)
    assert int(issued.serial, 16) == leaf.serial_number
    assert issued.holder == "node-2" and issued.identity == DETAILS and issued.root_pem == ca.root_pem


def test_default_ttl_and_renewal_at_half_life() -> None:
    assert DEFAULT_TTL == timedelta(hours=24)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert renewal_time(start, start + DEFAULT_TTL) == start + timedelta(hours=12)


def test_a_csr_without_a_san_gets_the_requested_identity(ca: LabCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    issued = ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM), DETAILS, holder="node-1")
    san = x509.load_pem_x509_certificate(issued.leaf_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(DETAILS)]


def test_rsa_keys_are_accepted(ca: LabCA, tmp_path: Path) -> None:
    issued = ca.sign_csr(rsa_csr(DETAILS), DETAILS, holder="node-1")
    (tmp_path / "root.pem").write_bytes(ca.root_pem)
    (tmp_path / "leaf.pem").write_bytes(issued.leaf_pem)
    assert openssl("verify", "-CAfile", tmp_path / "root.pem", tmp_path / "leaf.pem").returncode == 0


def tampered(csr_pem: bytes) -> bytes:
    """The same CSR with one byte of its signed content changed."""
    der = x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER)
    assert der.count(b"meshlab") == 1
    bad = x509.load_der_x509_csr(der.replace(b"meshlab", b"meshlax"))
    return bad.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("make_csr", "identity", "message"),
    [
        (lambda: make_key_and_csr(DETAILS)[1], PRODUCTPAGE, f"asks for {DETAILS} but the request is for {PRODUCTPAGE}"),
        (lambda: make_key_and_csr("spiffe://other.org/ns/bookinfo/sa/x")[1], "spiffe://other.org/ns/bookinfo/sa/x",
         f"not in this lab's trust domain '{TD}'"),
        (lambda: make_key_and_csr(DETAILS)[1], "spiffe://lab.local/bookinfo", "not a SPIFFE workload identity"),
        (lambda: tampered(make_key_and_csr(DETAILS)[1]), DETAILS, "signature does not match"),
        (lambda: b"garbage", DETAILS, "not a valid PEM certificate signing request"),
        (lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", DETAILS,
         "not a valid PEM certificate signing request"),
        (lambda: rsa_csr(DETAILS, bits=1024), DETAILS, "unsupported key in CSR"),
    ],
    ids=["wrong-identity", "foreign-trust-domain", "not-spiffe", "bad-signature", "garbage", "bad-der", "small-rsa"],
)
def test_bad_csrs_are_refused(ca: LabCA, make_csr, identity: str, message: str) -> None:  # type: ignore[no-untyped-def]
    before = len(ca.in_use())
    with pytest.raises(CertificateRefused, match=message):
        ca.sign_csr(make_csr(), identity, holder="node-1")
    assert len(ca.in_use()) == before


def test_the_ca_issues_only_in_its_trust_domain(ca: LabCA) -> None:
    with pytest.raises(CertificateRefused, match="trust domain"):
        ca.issue("spiffe://other.org/ns/a/sa/b")


def test_a_ttl_must_be_positive(ca: LabCA) -> None:
    with pytest.raises(ValueError, match="positive"):
        ca.issue(DETAILS, timedelta(0))


# --- the control plane's serving certificate ----------------------------------------------------------------

def test_server_cert_has_ip_and_dns_sans(ca: LabCA, tmp_path: Path) -> None:
    key_pem, cert_pem = ca.issue_server_cert(["127.101.0.1", "localhost", "::1"], timedelta(days=30))
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.101.0.1", "::1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    (tmp_path / "root.pem").write_bytes(ca.root_pem)
    (tmp_path / "server.pem").write_bytes(cert_pem)
    for check in (["-verify_ip", "127.101.0.1"], ["-verify_hostname", "localhost"]):
        done = openssl("verify", "-x509_strict", "-purpose", "sslserver", *check, "-CAfile", tmp_path / "root.pem",
                       tmp_path / "server.pem")
        assert done.returncode == 0, done.stderr
    wrong = openssl("verify", "-verify_ip", "127.101.0.2", "-CAfile", tmp_path / "root.pem", tmp_path / "server.pem")
    assert wrong.returncode != 0


def test_server_cert_needs_a_host(ca: LabCA) -> None:
    with pytest.raises(ValueError):
        ca.issue_server_cert([])


# --- the registry of issued certificates -------------------------------------------------------------------

def test_registry_persists_and_lists_the_latest_cert_per_holder_and_identity(tmp_path: Path) -> None:
    ca = LabCA.load_or_create(tmp_path / "ca", TD)
    _, csr = make_key_and_csr(PRODUCTPAGE)
    first = ca.sign_csr(csr, PRODUCTPAGE, holder="node-1")
    rotated = ca.sign_csr(make_key_and_csr(PRODUCTPAGE)[1], PRODUCTPAGE, holder="node-1")
    other_node = ca.sign_csr(csr, PRODUCTPAGE, holder="node-2")
    _, by_ca = ca.issue(DETAILS, holder="meshlab")
    assert stat.S_IMODE((tmp_path / "ca" / "issued.json").stat().st_mode) == 0o644

    reloaded = LabCA.load_or_create(tmp_path / "ca", TD)
    in_use = reloaded.in_use()
    assert [(c.holder, c.identity) for c in in_use] == [("meshlab", DETAILS), ("node-1", PRODUCTPAGE),
                                                        ("node-2", PRODUCTPAGE)]
    assert first.serial not in {c.serial for c in in_use}
    assert in_use[1] == rotated and in_use[2] == other_node and in_use[0] == by_ca
    assert in_use[0].ca_made_key and not in_use[1].ca_made_key


def test_expired_certs_are_not_in_use_and_are_dropped_on_the_next_write(tmp_path: Path) -> None:
    ca = LabCA.load_or_create(tmp_path / "ca", TD)
    short = ca.issue(PRODUCTPAGE, timedelta(seconds=30), holder="node-1")[1]
    ca.issue(DETAILS, timedelta(hours=1), holder="node-1")
    later = datetime.now(timezone.utc) + timedelta(minutes=5)
    assert [c.identity for c in ca.registry.in_use(now=later)] == [DETAILS]

    registry = IssuedRegistry(tmp_path / "ca" / "issued.json")
    registry.record(replace(short, serial="ff", holder="node-2", not_after=later + DEFAULT_TTL), now=later)
    stored = json.loads((tmp_path / "ca" / "issued.json").read_text())["issued"]
    assert [(c["holder"], c["identity"]) for c in stored] == [("node-1", DETAILS), ("node-2", PRODUCTPAGE)]


def test_a_corrupt_registry_is_a_lab_error(tmp_path: Path) -> None:
    LabCA.load_or_create(tmp_path / "ca", TD)
    (tmp_path / "ca" / "issued.json").write_text("{not json")
    with pytest.raises(LabError, match="issued certificates"):
        LabCA.load_or_create(tmp_path / "ca", TD)


# --- node authorization ------------------------------------------------------------------------------------

WAYPOINT = f"spiffe://{TD}/ns/bookinfo/sa/waypoint"


@pytest.fixture
def authorizer() -> NodeAuthorizer:
    return NodeAuthorizer({"node-1": {PRODUCTPAGE}, "node-2": [DETAILS]}, extra={"node-2": {WAYPOINT}})


def test_a_node_gets_the_identities_scheduled_there(authorizer: NodeAuthorizer) -> None:
    authorizer.check("node-1", PRODUCTPAGE)
    authorizer.check("node-2", DETAILS)
    authorizer.check("node-2", WAYPOINT)
    assert authorizer.allowed("node-2") == {DETAILS, WAYPOINT}


@pytest.mark.parametrize(("node", "identity", "reason"), [
    ("node-1", DETAILS, "no workload with identity"),
    ("node-1", WAYPOINT, "no workload with identity"),
    ("node-9", PRODUCTPAGE, "not part of the lab"),
])
def test_other_identities_are_refused_and_logged(authorizer: NodeAuthorizer, caplog: pytest.LogCaptureFixture,
                                                 node: str, identity: str, reason: str) -> None:
    with caplog.at_level(logging.WARNING, logger="meshlab.ca"), pytest.raises(CertificateRefused) as refused:
        authorizer.check(node, identity)
    assert f"node '{node}'" in str(refused.value) and identity in str(refused.value) and reason in str(refused.value)
    [record] = [r for r in caplog.records if r.name == "meshlab.ca"]
    assert record.levelno == logging.WARNING
    assert node in record.getMessage() and identity in record.getMessage()
