"""Node authorization: a node's agents get certificates only for identities that run there."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from lab.errors import CertificateRefused

log = logging.getLogger("meshlab.ca")


class NodeAuthorizer:
    """Which identities each node may hold: its scheduled workloads' plus extras (a waypoint's)."""

    def __init__(
        self,
        workloads: Mapping[str, Iterable[str]],
        extra: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        allowed: dict[str, set[str]] = {node: set(ids) for node, ids in workloads.items()}
        for node, ids in (extra or {}).items():
            allowed.setdefault(node, set()).update(ids)
        self._allowed = {node: frozenset(ids) for node, ids in allowed.items()}

    def allowed(self, node: str) -> frozenset[str]:
        """The identities `node` may obtain certificates for."""
        return self._allowed.get(node, frozenset())

    def check(self, node: str, identity: str) -> None:
        """Return if `node` may hold `identity`; else log the refusal and raise CertificateRefused."""
        if identity in self.allowed(node):
            return
        if node not in self._allowed:
            reason = f"node '{node}' is not part of the lab"
        else:
            reason = f"no workload with identity {identity} is scheduled on node '{node}'"
        log.warning("refused a certificate for %s to node '%s': %s", identity, node, reason)
        raise CertificateRefused(f"node '{node}' may not obtain a certificate for {identity}: {reason}")
