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
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agents.common.certs import CertInfo, NoKeyTool, cert_info, make_key_and_csr, renew_at
from agents.common.channel import ChannelError
from agents.hbone.tls import client_context, server_context, sni_for_identity

log = logging.getLogger("meshlab.ztunnel.certs")

RequestCert = Callable[[str, bytes], Awaitable[tuple[bytes, bytes]]]
RETRY_FIRST, RETRY_MAX = 0.5, 30.0
EXPECTED_FAILURES = (ChannelError, ConnectionError, OSError, NoKeyTool, ValueError, ssl.SSLError)


@dataclass(frozen=True)
class IdentityCert:
    """One identity's current key, leaf and root, and the contexts made from them."""

    identity: str
    key_pem: bytes
    leaf_pem: bytes
    root_pem: bytes
    info: CertInfo
    renew_at: float
    client: ssl.SSLContext
    server: ssl.SSLContext

    def describe(self) -> dict[str, Any]:
        return {"identity": self.identity, "serial": self.info.serial, "issuer": self.info.issuer,
                "not_before": _iso(self.info.not_before), "not_after": _iso(self.info.not_after),
                "renew_at": _iso(self.renew_at)}


class WorkloadCerts:
    """The certificates of the identities this node serves; also HBONE's source of TLS contexts."""

    def __init__(self, request_cert: RequestCert, on_rotated: Callable[[str], None] | None = None) -> None:
        self.request_cert = request_cert
        self.on_rotated = on_rotated
        self.certs: dict[str, IdentityCert] = {}
        self._by_sni: dict[str, IdentityCert] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.renewals = 0
        self.failures = 0

    def want(self, identities: Iterable[str]) -> None:
        """Keep certificates for exactly these identities (start new ones, drop the others)."""
        wanted = set(identities)
        for identity in set(self._tasks) - wanted:
            self._tasks.pop(identity).cancel()
            cert = self.certs.pop(identity, None)
            if cert is not None:
                self._by_sni.pop(sni_for_identity(identity), None)
            log.info("certificate for %s dropped: no workload of this node uses it any more", identity)
        for identity in sorted(wanted - set(self._tasks)):
            self._tasks[identity] = asyncio.create_task(self._maintain(identity), name=f"cert {identity}")

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
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def _maintain(self, identity: str) -> None:
        """Fetch the identity's certificate, then renew it at half-life, forever."""
        retry = RETRY_FIRST
        while True:
            current = self.certs.get(identity)
            if current is not None:
                await asyncio.sleep(max(0.0, current.renew_at - time.time()))
            try:
                fresh = await self._fetch(identity)
            except EXPECTED_FAILURES as e:
                self.failures += 1
                wait = _retry_delay(retry, current)
                log.warning("certificate for %s: %s (%s); retrying in %.1fs%s", identity,
                            "renewal failed" if current else "request failed", _reason(e), wait,
                            ", the current one stays in use" if current else "")
                retry = min(retry * 2, RETRY_MAX)
                await asyncio.sleep(wait)
                continue
            retry = RETRY_FIRST
            self.certs[identity] = fresh
            self._by_sni[sni_for_identity(identity)] = fresh
            if current is not None:
                self.renewals += 1
                log.info("certificate for %s renewed: serial %s, valid until %s, next renewal %s", identity,
                         fresh.info.serial, _iso(fresh.info.not_after), _iso(fresh.renew_at))
                if self.on_rotated is not None:
                    self.on_rotated(identity)
            else:
                log.info("certificate for %s issued: serial %s, valid until %s, renewal at %s", identity,
                         fresh.info.serial, _iso(fresh.info.not_after), _iso(fresh.renew_at))

    async def _fetch(self, identity: str) -> IdentityCert:
        key_pem, csr_pem = await asyncio.to_thread(make_key_and_csr, identity)
        leaf_pem, root_pem = await self.request_cert(identity, csr_pem)
        received = time.time()
        return await asyncio.to_thread(_build, identity, key_pem, leaf_pem, root_pem, received)


def _build(identity: str, key_pem: bytes, leaf_pem: bytes, root_pem: bytes, received: float) -> IdentityCert:
    """Check the leaf is for `identity` and make its contexts (thread: reads temp files)."""
    info = cert_info(leaf_pem)
    if identity not in info.uris:
        raise ValueError(f"the control plane returned a certificate for {info.uris}, not {identity}")
    if info.not_after <= received:
        raise ValueError(f"the control plane returned an expired certificate (notAfter {_iso(info.not_after)})")
    when = max(renew_at(info), received + (info.not_after - received) / 2)
    return IdentityCert(identity, key_pem, leaf_pem, root_pem, info, when,
                        client_context(leaf_pem, key_pem, root_pem, identity=identity),
                        server_context(leaf_pem, key_pem, root_pem, identity=identity))


def _retry_delay(retry: float, current: IdentityCert | None) -> float:
    """Backoff, but never sleep past a quarter of what is left of the current certificate."""
    if current is None:
        return retry
    left = current.info.not_after - time.time()
    return max(RETRY_FIRST, min(retry, left / 4))


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
