"""Agent-side certificate helpers: make a key and CSR, read a certificate, find a peer's SPIFFE ID.

A node makes its own key with what it has: the `cryptography` package when it
is importable, else the `openssl` command. With neither, `make_key_and_csr`
raises `NoKeyTool` and the lab falls back to a key made by its CA. Reading a
certificate needs only the standard library. `cryptography` is loaded through
`importlib` so that the agent zipapp never depends on it.
"""

from __future__ import annotations

import functools
import importlib
import re
import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

KeyBackend = Literal["auto", "cryptography", "openssl"]
InfoBackend = Literal["auto", "stdlib", "cryptography"]

_SEGMENT = r"[A-Za-z0-9._-]+"
_SPIFFE = re.compile(rf"spiffe://(?P<td>[a-z0-9._-]+)/ns/(?P<ns>{_SEGMENT})/sa/(?P<sa>{_SEGMENT})")
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*", re.S)
_OPENSSL_CONFIG = "[req]\ndistinguished_name = dn\n[dn]\n"
# RFC 4514 short names for the attributes the standard library spells out.
_SHORT_NAMES = {
    "commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
    "localityName": "L", "stateOrProvinceName": "ST", "streetAddress": "STREET",
    "domainComponent": "DC", "userId": "UID",
}


class NoKeyTool(Exception):
    """Neither `cryptography` nor the `openssl` command is available to make a key."""


@dataclass(frozen=True)
class CertInfo:
    """What an agent needs to know about a certificate: serial, validity, URI SANs, issuer."""

    serial: str  # lowercase hex, no leading zeros
    not_before: float  # epoch seconds
    not_after: float
    uris: list[str]
    issuer: str  # RFC 4514, as cryptography's `Name.rfc4514_string()`


def parse_spiffe(identity: str) -> tuple[str, str, str]:
    """Split `spiffe://<td>/ns/<ns>/sa/<sa>` into (trust domain, namespace, service account)."""
    m = _SPIFFE.fullmatch(identity) if isinstance(identity, str) else None
    if m is None or {".", ".."} & {m["ns"], m["sa"]}:
        raise ValueError(f"not a SPIFFE workload identity (want spiffe://<td>/ns/<ns>/sa/<sa>): {identity!r}")
    return m["td"], m["ns"], m["sa"]


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """The SPIFFE ID of a workload, checked: `spiffe://<td>/ns/<ns>/sa/<sa>`."""
    identity = f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
    parse_spiffe(identity)
    return identity


@functools.cache
def _cryptography() -> SimpleNamespace | None:
    """The `cryptography` modules this file uses, or None on a node without them."""
    try:
        return SimpleNamespace(
            x509=importlib.import_module("cryptography.x509"),
            ec=importlib.import_module("cryptography.hazmat.primitives.asymmetric.ec"),
            hashes=importlib.import_module("cryptography.hazmat.primitives.hashes"),
            serialization=importlib.import_module("cryptography.hazmat.primitives.serialization"),
            oid=importlib.import_module("cryptography.x509.oid"),
        )
    except ImportError:
        return None


def _openssl() -> str | None:
    return shutil.which("openssl")


def make_key_and_csr(identity: str, backend: KeyBackend = "auto") -> tuple[bytes, bytes]:
    """An EC P-256 key (PKCS8 PEM) and a CSR (PEM) asking for the URI SAN `identity`."""
    parse_spiffe(identity)
    if backend in ("auto", "cryptography") and (crypto := _cryptography()) is not None:
        return _key_and_csr_cryptography(crypto, identity)
    if backend == "cryptography":
        raise NoKeyTool("the cryptography package is not importable")
    if (openssl := _openssl()) is not None:
        return _key_and_csr_openssl(openssl, identity)
    raise NoKeyTool("no key tool on this node: neither the cryptography package nor the openssl command")


def _key_and_csr_cryptography(crypto: SimpleNamespace, identity: str) -> tuple[bytes, bytes]:
    x509, ser = crypto.x509, crypto.serialization
    key = crypto.ec.generate_private_key(crypto.ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(crypto.oid.NameOID.ORGANIZATION_NAME, "meshlab")]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=False)
        .sign(key, crypto.hashes.SHA256())
    )
    key_pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    return key_pem, csr.public_bytes(ser.Encoding.PEM)


def _key_and_csr_openssl(openssl: str, identity: str) -> tuple[bytes, bytes]:
    with tempfile.TemporaryDirectory(prefix="meshlab-key-") as tmp:  # mode 0700
        d = Path(tmp)
        (d / "req.cnf").write_text(_OPENSSL_CONFIG)
        cmd = [openssl, "req", "-new", "-config", str(d / "req.cnf"),
               "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
               "-subj", "/O=meshlab", "-addext", f"subjectAltName=URI:{identity}",
               "-keyout", str(d / "key.pem"), "-out", str(d / "csr.pem")]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise NoKeyTool(f"openssl could not make a key: {e}") from None
        if done.returncode != 0:
            raise NoKeyTool(f"openssl could not make a key: {done.stderr.strip()}")
        return (d / "key.pem").read_bytes(), (d / "csr.pem").read_bytes()


def first_certificate(pem: bytes) -> bytes:
    """The first PEM certificate block of `pem` (a leaf before its chain)."""
    m = _PEM_CERT.search(pem)
    if m is None:
        raise ValueError("no PEM certificate found")
    return m.group(0)


def cert_info(pem: bytes, backend: InfoBackend = "auto") -> CertInfo:
    """Serial, validity, URI SANs and issuer of the first certificate in `pem`."""
    pem = first_certificate(pem)
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if backend == "stdlib" or (backend == "auto" and decode is not None):
        if decode is None:
            raise RuntimeError("this Python cannot decode certificates (no ssl._ssl._test_decode_cert)")
        return _cert_info_stdlib(decode, pem)
    crypto = _cryptography()
    if crypto is None:
        raise RuntimeError("no way to decode a certificate: no ssl._ssl._test_decode_cert and no cryptography")
    return _cert_info_cryptography(crypto, pem)


def _cert_info_stdlib(decode: Any, pem: bytes) -> CertInfo:
    with tempfile.TemporaryDirectory(prefix="meshlab-cert-") as tmp:
        path = Path(tmp) / "cert.pem"
        path.write_bytes(pem)
        try:
            d = decode(str(path))
        except ssl.SSLError as e:
            raise ValueError(f"not a certificate: {e}") from None
    return CertInfo(
        serial=format(int(d["serialNumber"], 16), "x"),
        not_before=float(ssl.cert_time_to_seconds(d["notBefore"])),
        not_after=float(ssl.cert_time_to_seconds(d["notAfter"])),
        uris=[value for kind, value in d.get("subjectAltName", ()) if kind == "URI"],
        issuer=_rfc4514(d.get("issuer", ())),
    )


def _rfc4514(rdns: tuple[tuple[tuple[str, str], ...], ...]) -> str:
    """The RFC 4514 string of a name as `ssl` decodes it (most specific RDN first)."""
    parts = ["+".join(f"{_SHORT_NAMES.get(k, k)}={_escape(v)}" for k, v in rdn) for rdn in reversed(rdns)]
    return ",".join(parts)


def _escape(value: str) -> str:
    value = re.sub(r'([\\,+"<>;])', r"\\\1", value)
    if value[:1] in ("#", " "):
        value = "\\" + value
    if value.endswith(" "):
        value = value[:-1] + "\\ "
    return value


def _cert_info_cryptography(crypto: SimpleNamespace, pem: bytes) -> CertInfo:
    x509 = crypto.x509
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise ValueError(f"not a certificate: {e}") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    return CertInfo(
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        uris=list(uris),
        issuer=cert.issuer.rfc4514_string(),
    )


def spiffe_id_of_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    """The peer's SPIFFE ID: the first `spiffe://` URI SAN of its verified certificate."""
    cert = ssl_object.getpeercert()
    for kind, value in (cert or {}).get("subjectAltName", ()):
        if kind == "URI" and value.startswith("spiffe://"):
            return str(value)
    return None


def renew_at(info: CertInfo) -> float:
    """When to renew a certificate (epoch seconds): at half its lifetime."""
    return info.not_before + (info.not_after - info.not_before) / 2
