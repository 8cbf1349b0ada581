"""The CA's record of issued certificates (`<ca>/issued.json`), for `meshlab certs` and the UI."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.state import atomic_write


@dataclass(frozen=True)
class IssuedCert:
    """A leaf the CA signed: who it names, who holds it, when it expires."""

    identity: str
    serial: str  # lowercase hex
    not_before: datetime
    not_after: datetime
    holder: str  # the agent that asked (a node's ztunnel, a waypoint, `meshlab certs issue`)
    leaf_pem: bytes
    root_pem: bytes
    ca_made_key: bool = False  # the CA made the key (a bare host without a key tool)

    def expired(self, now: datetime) -> bool:
        return self.not_after <= now

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(not_before=self.not_before.isoformat(), not_after=self.not_after.isoformat(),
                 leaf_pem=self.leaf_pem.decode(), root_pem=self.root_pem.decode())
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> IssuedCert:
        return cls(
            identity=d["identity"], serial=d["serial"], holder=d["holder"],
            not_before=datetime.fromisoformat(d["not_before"]), not_after=datetime.fromisoformat(d["not_after"]),
            leaf_pem=d["leaf_pem"].encode(), root_pem=d["root_pem"].encode(),
            ca_made_key=bool(d.get("ca_made_key", False)),
        )


class IssuedRegistry:
    """Issued certificates persisted as one JSON file; expired ones are dropped on each write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._certs: list[IssuedCert] = self._load()

    def _load(self) -> list[IssuedCert]:
        try:
            doc = json.loads(self.path.read_text())
            return [IssuedCert.from_json(d) for d in doc["issued"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LabError(f"cannot read the CA's registry of issued certificates ({self.path}): {e}") from None

    def record(self, issued: IssuedCert, now: datetime | None = None) -> None:
        """Add a newly issued certificate and persist the registry."""
        now = now or datetime.now(timezone.utc)
        self._certs = [c for c in self._certs if not c.expired(now)] + [issued]
        doc = {"issued": [c.to_json() for c in self._certs]}
        atomic_write(self.path, json.dumps(doc, indent=1) + "\n")

    def in_use(self, now: datetime | None = None) -> list[IssuedCert]:
        """The latest unexpired certificate per (holder, identity), sorted by holder then identity."""
        now = now or datetime.now(timezone.utc)
        latest: dict[tuple[str, str], IssuedCert] = {}
        for c in self._certs:
            key = (c.holder, c.identity)
            if not c.expired(now) and (key not in latest or c.not_before >= latest[key].not_before):
                latest[key] = c
        return [latest[k] for k in sorted(latest)]
