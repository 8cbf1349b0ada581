"""What each node is told about the mesh, computed from the lab's state (pure, no I/O).

Two views of one state document (`state.json`, written by `meshlab up`):
the mesh resolver's table for a node's supervisor, and the config snapshot the
control plane streams to a node's ztunnel (docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

HBONE_PORT = 15008


def _mode(state: dict[str, Any], namespace: str) -> str:
    return str(state["namespaces"].get(namespace, {}).get("mode", "none"))


def _endpoint(state: dict[str, Any], name: str, node: str) -> dict[str, Any]:
    w = state["workloads"][name]
    mode = _mode(state, w["namespace"])
    return {"workload": name, "node": w["node"], "address": w["address"], "labels": dict(w["labels"]),
            "mode": mode, "inboundCapture": w["inboundCapture"] if mode == "ambient" else None}


def endpoints_of(state: dict[str, Any], service_key: str) -> list[str]:
    s = state["services"][service_key]
    return [name for name, w in state["workloads"].items()
            if w.get("service") == s["name"] and w["namespace"] == s["namespace"]]


def resolver_table(state: dict[str, Any], node: str) -> dict[str, Any]:
    """The resolver table for `node`: every service, its endpoints, and this node's VIP of it."""
    services = []
    for key, s in state["services"].items():
        services.append({"name": s["name"], "namespace": s["namespace"], "ports": s["ports"],
                         "vip": s["vips"].get(node),
                         "endpoints": [_endpoint(state, w, node) for w in endpoints_of(state, key)]})
    return {"services": services,
            "namespaces": {ns: {"mode": v["mode"]} for ns, v in state["namespaces"].items()}}


def ztunnel_snapshot(state: dict[str, Any], node: str, policy: dict[str, Any],
                     cert_ttl_seconds: int) -> dict[str, Any]:
    """The config snapshot of `node`'s ztunnel."""
    workloads = []
    for name, w in state["workloads"].items():
        mode = _mode(state, w["namespace"])
        owner = state["nodes"][w["node"]]
        workloads.append({
            "name": name, "namespace": w["namespace"], "serviceAccount": w["serviceAccount"],
            "identity": w["identity"], "address": w["address"], "node": w["node"],
            "nodeAddress": owner["address"], "hbonePort": HBONE_PORT, "mode": mode,
            "labels": dict(w["labels"]), "app": w["app"], "version": w["version"], "ports": list(w["ports"]),
            "inboundCapture": w["inboundCapture"] if mode == "ambient" and w["node"] == node else None,
        })
    services = [{"name": s["name"], "namespace": s["namespace"], "hostname": s["hostname"],
                 "vip": s["vips"].get(node), "ports": s["ports"], "endpoints": endpoints_of(state, key),
                 "waypoint": None}
                for key, s in state["services"].items()]
    return {"node": node, "trustDomain": state["trustDomain"], "nodeAddress": state["nodes"][node]["address"],
            "capture": "explicit", "certTtlSeconds": cert_ttl_seconds, "workloads": workloads,
            "services": services, "policy": policy}


def node_identities(state: dict[str, Any]) -> dict[str, set[str]]:
    """node -> identities of the workloads scheduled there (what the CA lets its ztunnel ask for)."""
    out: dict[str, set[str]] = {n: set() for n in state["nodes"]}
    for w in state["workloads"].values():
        out[w["node"]].add(w["identity"])
    return out
