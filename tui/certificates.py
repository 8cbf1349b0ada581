"""A workload's certificate as the lab's CA reports it: SAN, serial, expiry and the time to rotation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

CA_BACKDATE_S = 60.0  # the lab CA backdates notBefore a minute for clock skew (see agents/ztunnel/certs.py)


@dataclass(frozen=True)
class WorkloadCertificate:
    """A leaf certificate in use by an agent for one identity."""

    identity: str  # the URI SAN
    serial: str
    not_before: float
    not_after: float
    holder: str
    key_made_by: str

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> WorkloadCertificate:
        return cls(doc["identity"], doc.get("serial", ""), datetime.fromisoformat(doc["notBefore"]).timestamp(),
                   datetime.fromisoformat(doc["notAfter"]).timestamp(), doc.get("holder", ""),
                   doc.get("keyMadeBy", ""))

    @property
    def rotation_at(self) -> float:
        """When the agent renews it: at half-life, counted from arrival when the CA backdated `notBefore`."""
        arrived = self.not_before + min(CA_BACKDATE_S, self.lifetime / 10)
        return max(self.not_before + self.lifetime / 2, arrived + (self.not_after - arrived) / 2)

    @property
    def lifetime(self) -> float:
        return self.not_after - self.not_before


def certificates_for(certs: dict[str, Any], identity: str, node: str = "") -> list[WorkloadCertificate]:
    """The certificates of `identity` in a `/v1/certs` answer; the one held by `node`'s agent first."""
    found = [WorkloadCertificate.from_json(c) for c in certs.get("certificates", []) if c.get("identity") == identity]
    return sorted(found, key=lambda c: (not c.holder.endswith("/" + node), -c.not_after))


def iso(ts: float) -> str:
    """A UTC timestamp, to the second."""
    return datetime.utcfromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S UTC")
