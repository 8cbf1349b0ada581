"""The lab's root CA: one self-signed EC P-256 root per lab, signing SPIFFE leaves from CSRs.

Files in the CA folder: `root-key.pem` (PKCS8, mode 0600), `root-cert.pem` (the
signing root), `trust-bundle.pem` (every root agents trust; just the signing root
unless a rotation is under way; a rotation copies it onto every node as the agents'
bootstrap root file), `next-root-{key,cert}.pem` (a root made for a
rotation, not signing yet), and `issued.json` (see `registry`). The root may sign
only leaves (pathlen 0): ztunnels, waypoints and sidecars all hold leaves of their own.

Root rotation (`meshlab fault add rotate_root`) goes through three steps, each
persisted: `prepare_root` (a new root, trusted beside the old one),
`activate_next_root` (the new root signs; the old one stays trusted) and
`drop_old_roots` (only the signing root is trusted). Each root of a lab has its
own subject name, so an agent can tell from a leaf's issuer which root signed it.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agents.common.certs import parse_spiffe, spiffe_id
from lab.ca.registry import IssuedCert, IssuedRegistry
from lab.errors import CertificateRefused, LabError
from lab.state import atomic_write

DEFAULT_TTL = timedelta(hours=24)
ROOT_VALIDITY = timedelta(days=3650)
CLOCK_SKEW = timedelta(seconds=60)  # leaves are valid from a minute ago, for nodes whose clocks lag
ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1)
MIN_RSA_BITS = 2048

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
_PEM = serialization.Encoding.PEM


def renewal_time(not_before: datetime, not_after: datetime) -> datetime:
    """When a holder should renew a certificate: at half its lifetime."""
    return not_before + (not_after - not_before) / 2


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


class LabCA:
    """The root of trust of one lab: signs leaves for `spiffe://<trust_domain>/...` identities."""

    def __init__(self, ca_dir: Path, trust_domain: str, key: ec.EllipticCurvePrivateKey,
                 root: x509.Certificate, trusted: list[x509.Certificate] | None = None,
                 pending: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None) -> None:
        self.ca_dir = ca_dir
        self.trust_domain = trust_domain
        self._lock = threading.Lock()  # CSRs are signed in threads while a rotation swaps the root
        self._key = key
        self.root = root
        self.root_pem = root.public_bytes(_PEM)
        self.trusted = _with_root(root, trusted or [])
        self.pending = pending  # a root made for a rotation, trusted but not signing yet
        self.registry = IssuedRegistry(ca_dir / "issued.json")

    @classmethod
    def load_or_create(cls, ca_dir: Path, trust_domain: str, common_name: str | None = None) -> LabCA:
        """The lab's CA from `ca_dir`, made there first if the folder holds none."""
        try:
            spiffe_id(trust_domain, "default", "default")
        except ValueError:
            raise LabError(f"bad trust domain {trust_domain!r} (lowercase letters, digits, '.', '-', '_')") from None
        key_path, cert_path = ca_dir / "root-key.pem", ca_dir / "root-cert.pem"
        if key_path.exists() or cert_path.exists():
            key, root = _load_root(key_path, cert_path)
            pending = None
            if (ca_dir / "next-root-key.pem").exists():
                pending = _load_root(ca_dir / "next-root-key.pem", ca_dir / "next-root-cert.pem")
            return cls(ca_dir, trust_domain, key, root, _load_bundle(ca_dir / "trust-bundle.pem"), pending)
        ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key, root = _make_root(trust_domain, common_name)
        atomic_write(key_path, _key_pem(key), mode=0o600)
        atomic_write(cert_path, root.public_bytes(_PEM))
        return cls(ca_dir, trust_domain, key, root)

    # ---------------------------------------------------------------- trust bundle and root rotation

    @property
    def bundle_pem(self) -> bytes:
        """Every root agents trust, the signing root first (what a CSR's answer carries as `root`)."""
        return b"".join(r.public_bytes(_PEM) for r in self.trusted)

    def trust_json(self) -> dict[str, object]:
        """The `trust` section of agents' snapshots: the roots to verify peers against, and the signing
        root's name (a leaf whose issuer differs is from an older root: renew it)."""
        return {"roots": [r.public_bytes(_PEM).decode() for r in self.trusted],
                "signer": self.root.subject.rfc4514_string()}

    def roots(self) -> list[dict[str, object]]:
        """The roots of the bundle, for `meshlab certs`: name, fingerprint, validity, whether it signs."""
        return [{"subject": r.subject.rfc4514_string(), "sha256": r.fingerprint(hashes.SHA256()).hex(),
                 "notAfter": r.not_valid_after_utc.isoformat(), "signing": r == self.root,
                 "pem": r.public_bytes(_PEM).decode()} for r in self.trusted]

    def prepare_root(self) -> x509.Certificate:
        """Rotation step 1: a new root, trusted beside the current one (not signing yet)."""
        key, root = _make_root(self.trust_domain, f"meshlab root {self.trust_domain} #{secrets.token_hex(4)}")
        atomic_write(self.ca_dir / "next-root-key.pem", _key_pem(key), mode=0o600)
        atomic_write(self.ca_dir / "next-root-cert.pem", root.public_bytes(_PEM))
        with self._lock:
            self.pending = (key, root)
            self.trusted = _with_root(self.root, [*self.trusted, root])
        self._save_bundle()
        return root

    def activate_next_root(self) -> x509.Certificate:
        """Rotation step 2: the prepared root signs from now on; the old one stays trusted."""
        if self.pending is None:
            raise LabError("no new root is prepared (rotation step 1 first)")
        key, root = self.pending
        atomic_write(self.ca_dir / "root-key.pem", _key_pem(key), mode=0o600)
        atomic_write(self.ca_dir / "root-cert.pem", root.public_bytes(_PEM))
        with self._lock:
            old = self.root
            self._key, self.root, self.root_pem, self.pending = key, root, root.public_bytes(_PEM), None
            self.trusted = _with_root(root, [*self.trusted, old])
        self._save_bundle()
        for name in ("next-root-key.pem", "next-root-cert.pem"):
            (self.ca_dir / name).unlink(missing_ok=True)
        return old

    def drop_old_roots(self) -> list[x509.Certificate]:
        """Rotation step 3: trust only the signing root; returns the roots dropped."""
        with self._lock:
            dropped = [r for r in self.trusted if r != self.root and (self.pending is None or r != self.pending[1])]
            self.trusted = [r for r in self.trusted if r not in dropped]
        self._save_bundle()
        return dropped

    def bundle_file(self) -> Path:
        """`trust-bundle.pem`, holding the current bundle: what the lab writes into every node's bootstrap
        root file when the roots change."""
        path = self.ca_dir / "trust-bundle.pem"
        if not path.exists() or path.read_bytes() != self.bundle_pem:
            self._save_bundle()
        return path

    def _save_bundle(self) -> None:
        atomic_write(self.ca_dir / "trust-bundle.pem", self.bundle_pem)

    # ---------------------------------------------------------------- signing

    def sign_csr(self, csr_pem: bytes, identity: str, ttl: timedelta = DEFAULT_TTL,
                 holder: str = "", expired: bool = False) -> IssuedCert:
        """Sign a leaf for `identity` with the CSR's key, after checking the CSR; records it.

        `expired`: a leaf whose validity ended a minute ago (the `expire_cert` fault), so
        peers that verify it fail with "certificate has expired".
        """
        self._check_identity(identity)
        csr = _load_csr(csr_pem)
        try:
            asked = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            asked = x509.SubjectAlternativeName([])
        other = [u for u in asked.get_values_for_type(x509.UniformResourceIdentifier) if u != identity]
        if other:
            raise CertificateRefused(f"the CSR asks for {', '.join(other)} but the request is for {identity}")
        return self._issue_leaf(_accepted_key(csr.public_key()), identity, ttl, holder, ca_made_key=False,
                                expired=expired)

    def issue(self, identity: str, ttl: timedelta = DEFAULT_TTL, holder: str = "meshlab") -> tuple[bytes, IssuedCert]:
        """Make a key and a leaf for `identity` (for `meshlab certs issue` and hosts without a key tool)."""
        self._check_identity(identity)
        key = ec.generate_private_key(ec.SECP256R1())
        return _key_pem(key), self._issue_leaf(key.public_key(), identity, ttl, holder, ca_made_key=True)

    def issue_server_cert(self, hosts: list[str], ttl: timedelta = DEFAULT_TTL) -> tuple[bytes, bytes]:
        """A serving key and certificate for the control plane's agent channel, valid for `hosts`."""
        if not hosts:
            raise ValueError("a server certificate needs at least one host name or address")
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshlab"),
                             x509.NameAttribute(NameOID.COMMON_NAME, "meshlab control plane")])
        with self._lock:
            cert = self._sign(key.public_key(), subject, names, ttl, [ExtendedKeyUsageOID.SERVER_AUTH])
        return _key_pem(key), cert.public_bytes(_PEM)

    def record(self, issued: IssuedCert) -> None:
        """Remember an issued certificate in `issued.json`."""
        self.registry.record(issued)

    def in_use(self) -> list[IssuedCert]:
        """The latest unexpired certificate per (holder, identity)."""
        return self.registry.in_use()

    def _check_identity(self, identity: str) -> None:
        try:
            trust_domain, _, _ = parse_spiffe(identity)
        except ValueError as e:
            raise CertificateRefused(str(e)) from None
        if trust_domain != self.trust_domain:
            raise CertificateRefused(f"{identity} is not in this lab's trust domain '{self.trust_domain}'")

    def _issue_leaf(self, public_key: PublicKey, identity: str, ttl: timedelta, holder: str,
                    ca_made_key: bool, expired: bool = False) -> IssuedCert:
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshlab")])
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        with self._lock:
            cert = self._sign(public_key, subject, [x509.UniformResourceIdentifier(identity)], ttl, usages,
                              expired=expired)
            bundle = self.bundle_pem
        issued = IssuedCert(
            identity=identity, serial=format(cert.serial_number, "x"),
            not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc, holder=holder,
            leaf_pem=cert.public_bytes(_PEM), root_pem=bundle, ca_made_key=ca_made_key,
        )
        self.record(issued)
        return issued

    def _sign(self, public_key: PublicKey, subject: x509.Name, names: list[x509.GeneralName],
              ttl: timedelta, usages: list[x509.ObjectIdentifier], expired: bool = False) -> x509.Certificate:
        if ttl <= timedelta(0):
            raise ValueError(f"a certificate's TTL must be positive, not {ttl}")
        now = _now()
        not_after = min(now + ttl, self.root.not_valid_after_utc)
        if expired:  # ended a minute ago, valid for `ttl` before that
            not_after = now - CLOCK_SKEW
        root_ski = self.root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.root.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(min(now - CLOCK_SKEW, not_after - ttl))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski),
                           critical=False)
        )
        return builder.sign(self._key, hashes.SHA256())


def issuer_of(leaf_pem: bytes) -> str:
    """The issuer name of a PEM certificate (RFC 4514), or "" when it cannot be read."""
    try:
        return x509.load_pem_x509_certificate(leaf_pem).issuer.rfc4514_string()
    except ValueError:
        return ""


def _key_usage(digital_signature: bool = False, key_encipherment: bool = False,
               key_cert_sign: bool = False, crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                         key_encipherment=key_encipherment, data_encipherment=False, key_agreement=False,
                         key_cert_sign=key_cert_sign, crl_sign=crl_sign, encipher_only=False,
                         decipher_only=False)


def _make_root(trust_domain: str,
               common_name: str | None = None) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed root for a lab: EC P-256, CA with pathlen 0, ten years."""
    key = ec.generate_private_key(ec.SECP256R1())
    cn = common_name or f"meshlab root {trust_domain}"
    if len(cn) > 64:  # keep a distinguishing suffix (" #1a2b3c4d") when the trust domain is long
        head, sep, tail = cn.rpartition(" #")
        cn = f"{head[:64 - len(tail) - 2]} #{tail}" if sep else cn[:64]
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshlab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = _now()
    root = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ROOT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, root


def _load_root(key_path: Path, cert_path: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The root key and certificate from the CA folder, checked to belong together."""
    where = key_path.parent
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        root = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise LabError(f"the lab's CA in {where} is unreadable ({e}); remove the folder to make a new root") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != root.public_key():
        raise LabError(f"the lab's CA in {where}: root-key.pem does not belong to root-cert.pem")
    if root.not_valid_after_utc <= _now():
        raise LabError(f"the lab's root certificate in {where} expired on {root.not_valid_after_utc:%Y-%m-%d}")
    os.chmod(key_path, 0o600)
    return key, root


def _with_root(root: x509.Certificate, roots: list[x509.Certificate]) -> list[x509.Certificate]:
    """`roots` without duplicates, with `root` first."""
    out = [root]
    for r in roots:
        if r not in out:
            out.append(r)
    return out


def _load_bundle(path: Path) -> list[x509.Certificate]:
    """The roots of `trust-bundle.pem` (none when the file is missing)."""
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise LabError(f"the lab's trust bundle {path} is unreadable ({e}); remove it to trust only the root") from None


def _load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    """A CSR whose signature checks out, or CertificateRefused."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode() if isinstance(csr_pem, str) else csr_pem)
        valid = csr.is_signature_valid
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise CertificateRefused(f"not a valid PEM certificate signing request: {e}") from None
    if not valid:
        raise CertificateRefused("the CSR's signature does not match its key (corrupted or forged request)")
    return csr


def _accepted_key(key: object) -> PublicKey:
    """The CSR's public key if it is EC (P-256/P-384) or RSA of 2048 bits or more."""
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ACCEPTED_CURVES):
        return key
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS:
        return key
    kind = f"{type(key).__name__} {getattr(getattr(key, 'curve', None), 'name', getattr(key, 'key_size', ''))}"
    raise CertificateRefused(f"unsupported key in CSR ({kind.strip()}): want EC P-256/P-384 or RSA >= {MIN_RSA_BITS}")
