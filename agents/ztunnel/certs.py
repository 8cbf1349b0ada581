"""Workload certificates of one ztunnel: a key, leaf and root per local identity, kept fresh.

For every identity the config says this node serves, a task makes a key and CSR
(`make_key_and_csr`, in a thread: it may run `openssl`), asks the control plane
to sign it, and builds the TLS contexts HBONE uses from the answer. It sleeps
until the certificate's half-life, then does it again; the old certificate
serves until the new one is in place, and only new handshakes see the new one
(established connections keep theirs). When the control plane is unreachable
it retries with backoff and keeps the last certificate meanwhile.

Half-life is counted from when the certificate arrived if the CA backdated its
`notBefore` (the lab CA backdates a minute for clock skew, which would make a
short TTL's half-life already past): renewal at max(renew_at(info),
received + (not_after - received) / 2).

What the contexts trust: the snapshot's `trust` section (`follow`), the lab's
roots, updatable at run time: a new bundle rebuilds every context and retires
the pooled connections made under the old one; a leaf whose issuer is not the
bundle's `signer` (a root rotation is under way) is renewed at once. Without a
`trust` section, the root the CA returned with the leaf.

Security faults (`follow` reads them from the snapshot's faults): under
`expire_cert` the identity is renewed at once and the CA's expired leaf is
accepted and presented until the fault ends, then renewed again; under
`foreign_ca` the CA answers with a leaf from a throwaway CA, and the identity's
contexts trust only that CA (a workload from another mesh). Either way idle
HBONE connections that presented the old certificate are closed, so peers
handshake again and meet the new one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from agents.common.certs import CertInfo, NoKeyTool, cert_info, make_key_and_csr, renew_at
from agents.common.channel import ChannelError
from agents.common.faults import AgentFault
from agents.hbone.tls import client_context, server_context, sni_for_identity

log = logging.getLogger("meshlab.ztunnel.certs")

RequestCert = Callable[[str, bytes], Awaitable[tuple[bytes, bytes]]]
RETRY_FIRST, RETRY_MAX = 0.5, 30.0
EXPECTED_FAILURES = (ChannelError, ConnectionError, OSError, NoKeyTool, ValueError, ssl.SSLError)
SECURITY_FAULTS = ("expire_cert", "foreign_ca")


@dataclass(frozen=True)
class IdentityCert:
    """One identity's current key, leaf and root, and the contexts made from them."""

    identity: str
    key_pem: bytes
    leaf_pem: bytes
    root_pem: bytes  # what the CA answered with the leaf
    info: CertInfo
    renew_at: float  # inf: an expired leaf kept on purpose, renewed when its fault ends
    client: ssl.SSLContext
    server: ssl.SSLContext
    trust_pem: bytes = b""  # the roots the contexts verify peers against
    foreign: bool = False  # from a foreign CA (foreign_ca fault), trusting only that CA

    def describe(self) -> dict[str, Any]:
        return {"identity": self.identity, "serial": self.info.serial, "issuer": self.info.issuer,
                "not_before": _iso(self.info.not_before), "not_after": _iso(self.info.not_after),
                "renew_at": _iso(self.renew_at) if math.isfinite(self.renew_at) else "when its fault ends",
                "expired": self.info.not_after <= time.time(), "foreign": self.foreign,
                "trusted_roots": self.trust_pem.count(b"-----BEGIN CERTIFICATE-----")}


class WorkloadCerts:
    """The certificates of the identities this node serves; also HBONE's source of TLS contexts."""

    def __init__(self, request_cert: RequestCert, on_rotated: Callable[[str], None] | None = None) -> None:
        self.request_cert = request_cert
        self.on_rotated = on_rotated
        self.certs: dict[str, IdentityCert] = {}
        self._by_sni: dict[str, IdentityCert] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self.renewals = 0
        self.failures = 0
        self.trust_roots: bytes | None = None  # the snapshot's roots; None: the CA answer's root
        self.signer: str | None = None  # the issuer name of leaves from the signing root
        self.expired_ok: set[str] = set()  # expire_cert faults: present the CA's expired leaf
        self.foreign: set[str] = set()  # foreign_ca faults: a foreign CA's leaf, trusting only it
        self.servers: list[Any] = []  # HBONE servers presenting these certificates (idle connections dropped)
        self._faults: Sequence[AgentFault] = ()
        self._fault_timer: asyncio.TimerHandle | None = None

    def want(self, identities: Iterable[str]) -> None:
        """Keep certificates for exactly these identities (start new ones, drop the others)."""
        wanted = set(identities)
        for identity in set(self._tasks) - wanted:
            self._tasks.pop(identity).cancel()
            self._wake.pop(identity, None)
            cert = self.certs.pop(identity, None)
            if cert is not None:
                self._by_sni.pop(sni_for_identity(identity), None)
            log.info("certificate for %s dropped: no workload of this node uses it any more", identity)
        for identity in sorted(wanted - set(self._tasks)):
            self._wake[identity] = asyncio.Event()
            self._tasks[identity] = asyncio.create_task(self._maintain(identity), name=f"cert {identity}")

    def renew_now(self, identity: str) -> None:
        """Fetch a new certificate for `identity` now instead of at half-life."""
        event = self._wake.get(identity)
        if event is not None:
            event.set()

    async def follow(self, trust: Any, faults: Sequence[AgentFault]) -> None:
        """Take a snapshot's `trust` section and security faults (see the module docstring); raises ValueError
        for a malformed `trust` (the config is NACKed)."""
        roots, signer = _parse_trust(trust)
        if roots != self.trust_roots:
            self.trust_roots = roots
            await self._retrust()
        self.signer = signer
        self._faults = faults
        self._follow_faults()
        if signer:
            for identity, cert in self.certs.items():
                if not cert.foreign and cert.info.issuer != signer:
                    log.info("certificate for %s is from %s, the CA now signs with %s: renewing", identity,
                             cert.info.issuer, signer)
                    self.renew_now(identity)

    def _follow_faults(self) -> None:
        """Which identities an expire_cert or foreign_ca fault holds now; renew those that changed."""
        now = time.time()
        held: dict[str, set[str]] = {k: set() for k in SECURITY_FAULTS}
        for f in self._faults:
            if f.kind in held and f.active(now) and f.params.get("identity"):
                held[f.kind].add(str(f.params["identity"]))
        changed = (held["expire_cert"] ^ self.expired_ok) | (held["foreign_ca"] ^ self.foreign)
        self.expired_ok, self.foreign = held["expire_cert"], held["foreign_ca"]
        for identity in sorted(changed & set(self._tasks)):
            log.info("certificate for %s: %s", identity, "a fault holds it" if identity in
                     self.expired_ok | self.foreign else "its fault ended, renewing")
            self.renew_now(identity)
        if self._fault_timer is not None:
            self._fault_timer.cancel()
        ends = [f.expires_at for f in self._faults if f.kind in held and f.expires_at is not None and f.active(now)]
        self._fault_timer = (asyncio.get_running_loop().call_later(max(0.0, min(ends) - now) + 0.05,
                                                                   self._follow_faults) if ends else None)

    async def _retrust(self) -> None:
        """Rebuild every lab certificate's contexts on the new roots; new tunnels use new connections."""
        for identity, cert in list(self.certs.items()):
            if cert.foreign:
                continue
            trust = self.trust_roots or cert.root_pem
            fresh = await asyncio.to_thread(_contexts, cert, trust)
            if self.certs.get(identity) is cert:  # not renewed meanwhile
                self._install(identity, fresh)
                if self.on_rotated is not None:
                    self.on_rotated(identity)
        log.info("trust bundle updated: %d root(s)", (self.trust_roots or b"").count(b"-----BEGIN CERTIFICATE-----"))

    def _install(self, identity: str, cert: IdentityCert) -> None:
        self.certs[identity] = cert
        self._by_sni[sni_for_identity(identity)] = cert

    def _drop_idle_connections(self, identity: str) -> None:
        """Close idle inbound HBONE connections that presented `identity`: peers must handshake again."""
        for server in self.servers:
            for conn in list(getattr(server, "connections", ())):
                if conn.local_identity == identity and not conn.streams:
                    conn.close()

    def missing(self) -> list[str]:
        """Identities wanted but without a certificate yet."""
        return sorted(set(self._tasks) - set(self.certs))

    def client_context(self, identity: str) -> ssl.SSLContext | None:
        """The context to dial HBONE as `identity` (HboneClient's `contexts`)."""
        cert = self.certs.get(identity)
        return cert.client if cert else None

    def server_context(self, sni: str | None) -> ssl.SSLContext | None:
        """The context that presents the identity named by SNI (HboneServer's `contexts`); None refuses."""
        cert = self._by_sni.get(sni) if sni else None
        return cert.server if cert else None

    def describe(self) -> list[dict[str, Any]]:
        return [self.certs[i].describe() for i in sorted(self.certs)]

    async def close(self) -> None:
        if self._fault_timer is not None:
            self._fault_timer.cancel()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def _maintain(self, identity: str) -> None:
        """Fetch the identity's certificate, then renew it at half-life, forever."""
        retry = RETRY_FIRST
        failed = False
        while True:
            current = self.certs.get(identity)
            if current is not None and not failed:  # after a failure: again once the backoff passed
                await self._sleep_until(identity, current.renew_at)
            try:
                fresh = await self._fetch(identity)
                failed = False
            except EXPECTED_FAILURES as e:
                failed = True
                self.failures += 1
                wait = _retry_delay(retry, current)
                log.warning("certificate for %s: %s (%s); retrying in %.1fs%s", identity,
                            "renewal failed" if current else "request failed", _reason(e), wait,
                            ", the current one stays in use" if current else "")
                retry = min(retry * 2, RETRY_MAX)
                await asyncio.sleep(wait)
                continue
            retry = RETRY_FIRST
            self._install(identity, fresh)
            if fresh.foreign or not math.isfinite(fresh.renew_at):
                log.warning("certificate for %s is now %s (serial %s, issuer %s)", identity,
                            "from a foreign CA" if fresh.foreign else "an expired one", fresh.info.serial,
                            fresh.info.issuer)
                self._drop_idle_connections(identity)
            if current is not None:
                self.renewals += 1
                log.info("certificate for %s renewed: serial %s, valid until %s, next renewal %s", identity,
                         fresh.info.serial, _iso(fresh.info.not_after), _iso(fresh.renew_at))
                if self.on_rotated is not None:
                    self.on_rotated(identity)
            else:
                log.info("certificate for %s issued: serial %s, valid until %s, renewal at %s", identity,
                         fresh.info.serial, _iso(fresh.info.not_after), _iso(fresh.renew_at))

    async def _sleep_until(self, identity: str, when: float) -> None:
        """Sleep until `when` (inf: forever), or until `renew_now(identity)`."""
        event = self._wake.setdefault(identity, asyncio.Event())
        left = when - time.time()
        if left > 0:
            try:
                await asyncio.wait_for(event.wait(), None if math.isinf(left) else left)
            except TimeoutError:
                pass
        event.clear()

    async def _fetch(self, identity: str) -> IdentityCert:
        key_pem, csr_pem = await asyncio.to_thread(make_key_and_csr, identity)
        leaf_pem, root_pem = await self.request_cert(identity, csr_pem)
        received = time.time()
        foreign = identity in self.foreign
        trust = root_pem if foreign or not self.trust_roots else self.trust_roots
        return await asyncio.to_thread(_build, identity, key_pem, leaf_pem, root_pem, received,
                                       identity in self.expired_ok, foreign, trust)


def _build(identity: str, key_pem: bytes, leaf_pem: bytes, root_pem: bytes, received: float,
           accept_expired: bool = False, foreign: bool = False, trust: bytes | None = None) -> IdentityCert:
    """Check the leaf is for `identity` and make its contexts (thread: reads temp files)."""
    info = cert_info(leaf_pem)
    if identity not in info.uris:
        raise ValueError(f"the control plane returned a certificate for {info.uris}, not {identity}")
    if info.not_after <= received:
        if not accept_expired:
            raise ValueError(f"the control plane returned an expired certificate (notAfter {_iso(info.not_after)})")
        when = math.inf  # kept on purpose until the expire_cert fault ends (renew_now)
    else:
        when = max(renew_at(info), received + (info.not_after - received) / 2)
    cert = IdentityCert(identity, key_pem, leaf_pem, root_pem, info, when, None, None,  # type: ignore[arg-type]
                        foreign=foreign)
    return _contexts(cert, trust or root_pem)


def _contexts(cert: IdentityCert, trust: bytes) -> IdentityCert:
    """`cert` with client and server contexts that verify peers against `trust` (thread: reads temp files)."""
    return replace(cert, trust_pem=trust,
                   client=client_context(cert.leaf_pem, cert.key_pem, trust, identity=cert.identity),
                   server=server_context(cert.leaf_pem, cert.key_pem, trust, identity=cert.identity))


def _parse_trust(trust: Any) -> tuple[bytes | None, str | None]:
    """(roots PEM, signer) from a snapshot's `trust` section (None: not given)."""
    if trust is None:
        return None, None
    if not isinstance(trust, dict):
        raise ValueError(f"trust: want an object with roots and signer, got {type(trust).__name__}")
    roots = trust.get("roots")
    if not isinstance(roots, list) or not roots or not all(isinstance(r, str) and "BEGIN CERTIFICATE" in r
                                                           for r in roots):
        raise ValueError("trust.roots: want a non-empty list of PEM certificates")
    signer = trust.get("signer")
    if signer is not None and not isinstance(signer, str):
        raise ValueError(f"trust.signer: want the signing root's name, got {signer!r}")
    return "".join(r if r.endswith("\n") else r + "\n" for r in roots).encode(), signer or None


def _retry_delay(retry: float, current: IdentityCert | None) -> float:
    """Backoff, but never sleep past a quarter of what is left of the current certificate."""
    if current is None:
        return retry
    left = current.info.not_after - time.time()
    return max(RETRY_FIRST, min(retry, left / 4))


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _iso(epoch: float) -> str:
    if not math.isfinite(epoch):
        return "never"
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
