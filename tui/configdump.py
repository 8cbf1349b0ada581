"""An agent's config dump (its admin `/config_dump`, through the lab's `/v1/config-dump`) as the agent view shows it.

ztunnels, waypoints and sidecars dump the same core — the version applied, a rejected version, the
channel, the snapshot — and each adds its own part (capture sockets; identity and engine; listeners).
The summary reads what is there and skips what is not, so one table serves all three.
"""

from __future__ import annotations

import json
from typing import Any

from rich.table import Table
from rich.text import Text

PEM_BEGIN = "-----BEGIN "


def _count(n: int, what: str, plural: str = "") -> str:
    return f"{n} {what if n == 1 else plural or what + 's'}"


def _elide_pem(value: Any) -> Any:
    """The dump with each PEM block cut to its first line: the certificates are in the certificate view."""
    if isinstance(value, dict):
        return {k: _elide_pem(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_elide_pem(v) for v in value]
    if isinstance(value, str) and value.startswith(PEM_BEGIN):
        return f"{value.splitlines()[0]} … ({len(value)} bytes)"
    return value


def dump_text(dump: dict[str, Any]) -> str:
    """The whole dump as indented JSON, certificates elided."""
    return json.dumps(_elide_pem(dump), indent=2, ensure_ascii=False)


def dump_summary(dump: dict[str, Any]) -> Table:
    """What the agent runs with: the version it applied, what it serves and listens on, what its snapshot holds."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    snapshot = dump.get("snapshot") or {}
    applied = f"v{dump.get('version')}" if snapshot else "no config yet"
    table.add_row("applied", applied)
    rejected = dump.get("rejected")
    if rejected:
        table.add_row("rejected", Text(f"v{rejected.get('version')}: {rejected.get('error')}", style="red"))
    proxy = dump.get("proxy") or {}
    if proxy.get("kind") == "waypoint":
        serves = f"service {proxy['service']}" if proxy.get("service") else f"namespace {proxy.get('namespace')}"
        table.add_row("serves", f"{serves} as {proxy.get('identity')}")
    elif dump.get("workload"):
        table.add_row("serves", f"workload {dump['workload']}")
    sockets = dump.get("capture_sockets") or dump.get("listeners") or []
    listens = [f"HBONE {dump['hbone']}"] if dump.get("hbone") else []
    kinds = sorted({str(s.get("kind")) for s in sockets})
    if sockets:  # a ztunnel has one per workload and service: count them (the whole list is in the dump)
        listens.append("capture " + ", ".join(
            f"{sum(1 for s in sockets if s.get('kind') == k)} {k}" for k in kinds))
    if listens:
        table.add_row("listens", "; ".join(listens))
    if snapshot:
        policy = snapshot.get("policy") or {}
        knows = [_count(len(snapshot.get("workloads") or []), "workload"),
                 _count(len(snapshot.get("services") or []), "service")]
        for key, what, plural in (("peerAuthentications", "PeerAuthentication", ""),
                                  ("authorizationPolicies", "AuthorizationPolicy", "AuthorizationPolicies"),
                                  ("routeTables", "route table", ""), ("destinationRules", "DestinationRule", "")):
            if policy.get(key):  # only the kinds of mesh config in force
                knows.append(_count(len(policy[key]), what, plural))
        table.add_row("snapshot", ", ".join(knows))
        faults = snapshot.get("faults") or []
        if faults:
            table.add_row("faults", Text(", ".join(f"{f.get('kind')} {f.get('id', '')}".strip() for f in faults),
                                         style="yellow"))
        roots = (snapshot.get("trust") or {}).get("roots") or []
        table.add_row("trust", f"{_count(len(roots), 'root')} · capture {snapshot.get('capture', '-')}")
    cp = dump.get("control_plane") or {}
    if cp:
        state = Text("connected", style="green") if cp.get("connected") else Text("not connected", style="red")
        table.add_row("channel", Text.assemble(state, f" to {cp.get('address')}, {cp.get('reconnects', 0)} reconnects"))
    return table
