"""The control plane's side of live faults: add, remove, expire, and what agents and the CA are told.

Every change is saved first (faults.json), then published as a new config version,
so a fault survives a control-plane restart and agents see it at once. An expiry
timer runs in the daemon: expired faults are reverted with no client attached.
Agents drop a fault at its `expiresAt` on their own too.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from lab.ca import IssuedCert, LabCA, foreign_ca, remove_foreign_ca
from lab.errors import CertificateRefused, LabError
from lab.faults import actions
from lab.faults.rotation import rotate_root
from lab.faults.catalogue import KINDS
from lab.faults.store import Fault, FaultStore, new_fault
from lab.faults.targets import describe

if TYPE_CHECKING:
    from lab.controlplane.daemon import ControlPlane

log = logging.getLogger("meshlab.controlplane.faults")
EXPIRY_TICK = 0.25


class LiveFaults:
    """The lab's faults, owned by the control plane."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.store = FaultStore(cp.dir / "faults.json")
        self._lock = asyncio.Lock()
        self._foreign: dict[str, LabCA] = {}  # foreign_ca fault id -> its throwaway CA
        self._foreign_lock = threading.Lock()

    def for_agents(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        return self.store.for_agents(state)

    def check_identity(self, identity: str) -> None:
        """The CA's check: a revoked identity gets no certificate."""
        for f in self.store.list():
            if f.kind == "revoke" and not f.expired() and f.effect.get("identity") == identity:
                raise CertificateRefused(f"{identity} is revoked (fault {f.id}; `meshlab fault rm {f.id}` restores it)")

    def issue(self, csr: bytes, identity: str, ttl: timedelta, holder: str) -> IssuedCert:
        """Sign a CSR as the security faults on `identity` say: refused (revoke), expired (expire_cert), from a
        throwaway CA (foreign_ca), else by the lab CA. Runs in a thread of the agent channel."""
        self.check_identity(identity)
        ca, expired = self.cp.ca, False
        for f in self.store.list():
            if f.expired() or f.effect.get("identity") != identity:
                continue
            if f.kind == "expire_cert":
                expired = True
            elif f.kind == "foreign_ca":
                ca = self._foreign_ca(f.id)
        issued = ca.sign_csr(csr, identity, ttl, holder, expired=expired)
        if ca is not self.cp.ca:
            self.cp.ca.record(issued)  # `meshlab certs` lists it, with its foreign root
        return issued

    def _foreign_ca(self, fault_id: str) -> LabCA:
        with self._foreign_lock:
            if fault_id not in self._foreign:
                self._foreign[fault_id] = foreign_ca(self.cp.ca.ca_dir, fault_id, self.cp.ca.trust_domain)
            return self._foreign[fault_id]

    def list(self) -> list[dict[str, Any]]:
        now = time.time()
        return [{**f.to_json(), "expiresIn": None if f.expires is None else max(0.0, f.expires - now)}
                for f in self.store.list()]

    async def add(self, request: dict[str, Any]) -> dict[str, Any]:
        from lab.handle import Lab

        async with self._lock:
            state = self.cp.state_file.load()
            self.cp.state = state
            fault = new_fault(f"f{self.store.next_id}", request, state)
            kind = KINDS[fault.kind]
            if fault.kind == "rotate_root":  # needs the control plane itself: its CA, channel and agents
                rotation = await rotate_root(self.cp, bool(fault.params.get("overlap", True)))
                fault.effect = {"rotation": rotation}
                fault.note = (f"new root {rotation['newRoot']} in {rotation['seconds']:.1f}s, "
                              f"{'with' if rotation['overlap'] else 'without'} overlap; "
                              f"{rotation['failedRequests']} failed requests")
                if rotation["bundleNotDelivered"]:  # those nodes' agents rejoin after the next `meshlab up`
                    fault.note += f"; trust bundle not written to {', '.join(rotation['bundleNotDelivered'])}"
            else:
                lab = Lab(self.cp.lab)
                try:
                    await actions.apply(lab, state, fault)
                finally:
                    await lab.close()
            self.store.allocate_id()
            what = f"fault {fault.id} {fault.kind} on {describe(fault.target)}"
            if kind.one_shot:
                self.store.save()
                self.cp.event(f"{what} done once ({fault.note})")
                return {**fault.to_json(), "oneShot": True, "version": self.cp.channel.version}
            self.store.add(fault)
            version = self.cp.config_changed(f"{what} added") if kind.agent else self.cp.channel.version
            if not kind.agent:
                self.cp.event(f"{what} added ({fault.note})")
        return {**fault.to_json(), "version": version}

    async def remove(self, fid: str | None, everything: bool = False, why: str = "removed") -> dict[str, Any]:
        async with self._lock:
            faults = self.store.list() if everything else [self.store.remove(fid or "")]
            errors = []
            for fault in faults:
                self.store.faults.pop(fault.id, None)
                try:
                    await self._revert(fault)
                except LabError as e:
                    errors.append(f"{fault.id}: {e}")
                    self.cp.event(f"fault {fault.id}: revert failed: {e}")
            self.store.save()
            version = self.cp.channel.version
            if any(KINDS[f.kind].agent for f in faults):
                version = self.cp.config_changed(f"{len(faults)} fault(s) {why}: "
                                                 f"{', '.join(f.id for f in faults)}")
            elif faults:
                self.cp.event(f"fault(s) {why}: {', '.join(f.id for f in faults)}")
        return {"removed": [f.id for f in faults], "version": version, "errors": errors}

    async def _revert(self, fault: Fault) -> None:
        from lab.handle import Lab

        lab = Lab(self.cp.lab)
        try:
            await actions.revert(lab, self.cp.state, fault)
            if fault.kind == "stop_node":  # a node that comes back is still cut off where a partition says so
                await actions.restore_partitions(lab, self.cp.state, fault.target["name"],  # type: ignore[index]
                                                 self.store.list())
        finally:
            await lab.close()
            if fault.kind == "foreign_ca":  # its throwaway CA goes with it
                with self._foreign_lock:
                    self._foreign.pop(fault.id, None)
                remove_foreign_ca(self.cp.ca.ca_dir, fault.id)

    async def expire_forever(self) -> None:
        """The daemon's timer: revert faults whose TTL ran out, whether or not a client is attached."""
        while True:
            await asyncio.sleep(EXPIRY_TICK)
            for fault in self.store.expired():
                if fault.id not in self.store.faults:
                    continue
                try:
                    await self._remove_expired(fault)
                except Exception:  # the timer must outlive any one fault
                    log.exception("expiring fault %s failed", fault.id)

    async def _remove_expired(self, fault: Fault) -> None:
        async with self._lock:
            if self.store.faults.pop(fault.id, None) is None:
                return
            self.store.save()
            try:
                await self._revert(fault)
            except LabError as e:
                self.cp.event(f"fault {fault.id} expired; revert failed: {e}")
            if KINDS[fault.kind].agent:
                self.cp.config_changed(f"fault {fault.id} {fault.kind} expired")
            else:
                self.cp.event(f"fault {fault.id} {fault.kind} expired")
