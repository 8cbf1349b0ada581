"""Fault targets: from what a user types to what is stored, and to what agents match on.

Typed: `reviews` / `reviews.bookinfo` / `service/reviews` (a service), `reviews-v1` /
`workload/reviews-v1` (a workload), `node-1` / `node/node-1` (a node), or an edge `SRC->DST`
between two of them. Stored: `{"type", "name", "namespace"?}` or `{"type": "edge", "source",
"destination"}`, checked against the lab's state. For agents each end also carries the
workloads, nodes and services it covers, resolved from the state of the moment (a reconcile
that adds workloads is picked up at the next snapshot).
"""

from __future__ import annotations

from typing import Any

from lab.faults.catalogue import FaultError, Kind

PREFIXES = ("service", "workload", "node")


def parse_target(text: str | None, kind: Kind, state: dict[str, Any]) -> dict[str, Any] | None:
    """The stored form of a typed target; raises FaultError naming what is wrong."""
    if not text:
        if kind.targets:
            raise FaultError(f"target: {kind.name} needs a target ({', '.join(kind.targets)})")
        return None
    if "->" in text:
        if "edge" not in kind.targets:
            raise FaultError(f"target {text!r}: {kind.name} does not take an edge (targets: {', '.join(kind.targets)})")
        src, _, dst = text.partition("->")
        source, destination = _end(src.strip(), state, text), _end(dst.strip(), state, text)
        if kind.name == "partition" and (source["type"] != "node" or destination["type"] != "node"):
            raise FaultError(f"target {text!r}: a partition is between two nodes (node-1->node-2)")
        return {"type": "edge", "source": source, "destination": destination}
    end = _end(text.strip(), state, text)
    if end["type"] not in kind.targets:
        raise FaultError(f"target {text!r} is a {end['type']}; {kind.name} targets: {', '.join(kind.targets)}")
    return end


def _end(text: str, state: dict[str, Any], whole: str) -> dict[str, Any]:
    if not text:
        raise FaultError(f"target {whole!r}: an edge needs both ends (SRC->DST)")
    prefix, sep, rest = text.partition("/")
    if sep and prefix in PREFIXES:
        found = _lookup(prefix, rest, state)
        if found is None:
            raise FaultError(f"target {text!r}: no {prefix} named {rest!r} in the lab ({_known(prefix, state)})")
        return found
    matches = [m for m in (_lookup(p, text, state) for p in PREFIXES) if m is not None]
    if not matches:
        raise FaultError(f"target {text!r}: no service, workload or node of that name "
                         f"(services: {_known('service', state)}; workloads: {_known('workload', state)}; "
                         f"nodes: {_known('node', state)})")
    if len(matches) > 1:
        kinds = ", ".join(f"{m['type']}/{text}" for m in matches)
        raise FaultError(f"target {text!r} is ambiguous: say which ({kinds})")
    return matches[0]


def _lookup(kind: str, name: str, state: dict[str, Any]) -> dict[str, Any] | None:
    if kind == "node":
        return {"type": "node", "name": name} if name in state["nodes"] else None
    if kind == "workload":
        w = state["workloads"].get(name)
        return {"type": "workload", "name": name, "namespace": w["namespace"]} if w else None
    services = state["services"]
    if name in services:  # "name.namespace", the state's key
        s = services[name]
        return {"type": "service", "name": s["name"], "namespace": s["namespace"]}
    short = [s for s in services.values() if s["name"] == name]
    if len(short) == 1:
        return {"type": "service", "name": short[0]["name"], "namespace": short[0]["namespace"]}
    if len(short) > 1:
        raise FaultError(f"service {name!r} exists in several namespaces: say which "
                         f"({', '.join(s['name'] + '.' + s['namespace'] for s in short)})")
    return None


def _known(kind: str, state: dict[str, Any]) -> str:
    names = {"node": list(state["nodes"]), "workload": list(state["workloads"]),
             "service": [f"{s['name']}.{s['namespace']}" for s in state["services"].values()]}[kind]
    return ", ".join(names) or "none"


def describe(target: dict[str, Any] | None) -> str:
    """The target as a user would type it."""
    if target is None:
        return "-"
    if target["type"] == "edge":
        return f"{describe(target['source'])}->{describe(target['destination'])}"
    if target["type"] == "service":
        return f"{target['name']}.{target['namespace']}"
    return str(target["name"])


def resolve_for_agents(target: dict[str, Any] | None, state: dict[str, Any]) -> dict[str, Any]:
    """The agent-facing target: each end with the workloads, nodes and services it covers now."""
    if target is None:
        return {"type": "node", "name": "*", "workloads": [], "nodes": [], "services": []}
    if target["type"] == "edge":
        return {"type": "edge", "source": resolve_for_agents(target["source"], state),
                "destination": resolve_for_agents(target["destination"], state)}
    workloads = state["workloads"]
    if target["type"] == "node":
        names = [n for n, w in workloads.items() if w["node"] == target["name"]]
    elif target["type"] == "workload":
        names = [target["name"]] if target["name"] in workloads else []
    else:
        names = [n for n, w in workloads.items()
                 if w.get("service") == target["name"] and w["namespace"] == target["namespace"]]
    nodes = sorted({workloads[n]["node"] for n in names} | ({target["name"]} if target["type"] == "node" else set()))
    services = sorted({f"{workloads[n]['service']}.{workloads[n]['namespace']}" for n in names
                       if workloads[n].get("service")})
    if target["type"] == "service":
        services = [f"{target['name']}.{target['namespace']}"]
    out = {**target, "workloads": sorted(names), "nodes": nodes, "services": services}
    return out
