"""What each node is told about the mesh, computed from the lab's state (pure, no I/O).

Two views of one state document (`state.json`, written by `meshlab up`):
the mesh resolver's table for a node's supervisor, and the config snapshot the
control plane streams to a node's ztunnel (docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

from lab.capture import node_capture
from lab.dataplane import sidecar_workloads, waypoint_of, waypoints

HBONE_PORT = 15008
IN_MESH_INBOUND = ("ambient", "sidecar")  # modes whose workloads plaintext callers reach through a proxy


def _mode(state: dict[str, Any], namespace: str) -> str:
    return str(state["namespaces"].get(namespace, {}).get("mode", "none"))


def _endpoint(state: dict[str, Any], name: str, node: str) -> dict[str, Any]:
    w = state["workloads"][name]
    mode = _mode(state, w["namespace"])
    return {"workload": name, "node": w["node"], "address": w["address"], "labels": dict(w["labels"]),
            "mode": mode, "inboundCapture": (w["inboundCapture"] or None) if mode in IN_MESH_INBOUND else None}


def endpoints_of(state: dict[str, Any], service_key: str) -> list[str]:
    """The workloads behind a service: its own, or those its selector's labels pick in its namespace."""
    s = state["services"][service_key]
    selector = s.get("selector")
    if selector:
        return [name for name, w in state["workloads"].items() if w["namespace"] == s["namespace"]
                and all(w["labels"].get(k) == v for k, v in selector.items())]
    return [name for name, w in state["workloads"].items()
            if w.get("service") == s["name"] and w["namespace"] == s["namespace"]]


def resolver_table(state: dict[str, Any], node: str) -> dict[str, Any]:
    """The resolver table for `node`: every service, its endpoints, and this node's VIP of it."""
    services = []
    for key, s in state["services"].items():
        services.append({"name": s["name"], "namespace": s["namespace"], "ports": s["ports"],
                         "vip": s["vips"].get(node),
                         "endpoints": [_endpoint(state, w, node) for w in endpoints_of(state, key)]})
    capture = node_capture(state, node)
    # Explicit capture hands a sidecar workload its sidecar's address; transparent capture the service VIP
    # (iptables takes the connection to the sidecar).
    sidecars = {state["workloads"][w]["address"]: state["workloads"][w]["sidecarAddress"]
                for w in sidecar_workloads(state, node)} if capture == "explicit" else {}
    return {"services": services, "sidecars": sidecars, "capture": capture,
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
            # HBONE reaches an ambient workload at its node's ztunnel, a sidecar workload at its own sidecar
            "nodeAddress": owner["address"], "hbonePort": HBONE_PORT, "mode": mode,
            "hboneAddress": w["address"] if mode == "sidecar" else owner["address"],
            "labels": dict(w["labels"]), "app": w["app"], "version": w["version"], "ports": list(w["ports"]),
            "inboundCapture": (w["inboundCapture"] or None) if mode == "ambient" and w["node"] == node else None,
        })
    services = [{"name": s["name"], "namespace": s["namespace"], "hostname": s["hostname"],
                 "vip": s["vips"].get(node), "ports": s["ports"], "endpoints": endpoints_of(state, key),
                 "waypoint": _waypoint_ref(state, key)}
                for key, s in state["services"].items()]
    return {"node": node, "trustDomain": state["trustDomain"], "nodeAddress": state["nodes"][node]["address"],
            "capture": node_capture(state, node), "certTtlSeconds": cert_ttl_seconds, "workloads": workloads,
            "services": services, "policy": policy}


def _waypoint_ref(state: dict[str, Any], service_key: str) -> dict[str, Any] | None:
    """How a ztunnel reaches the service's waypoint (None: it has none in effect)."""
    entry = waypoint_of(state, service_key)
    if entry is None:
        return None
    return {"name": entry["name"], "namespace": entry["namespace"], "address": entry["address"],
            "hbonePort": HBONE_PORT, "identity": entry["identity"], "node": entry["node"]}


def waypoint_snapshot(state: dict[str, Any], entry: dict[str, Any], policy: dict[str, Any],
                      cert_ttl_seconds: int) -> dict[str, Any]:
    """The config snapshot of a waypoint: the mesh as its node's ztunnel sees it, plus who the waypoint is."""
    snapshot = ztunnel_snapshot(state, entry["node"], policy, cert_ttl_seconds)
    snapshot["proxy"] = {"kind": "waypoint", **entry}
    return snapshot


def sidecar_snapshot(state: dict[str, Any], workload: str, policy: dict[str, Any],
                     cert_ttl_seconds: int) -> dict[str, Any]:
    """The config snapshot of one workload's sidecar."""
    w = state["workloads"][workload]
    snapshot = ztunnel_snapshot(state, w["node"], policy, cert_ttl_seconds)
    snapshot["proxy"] = {"kind": "sidecar", "workload": workload, "namespace": w["namespace"],
                         "identity": w["identity"], "address": w["sidecarAddress"],
                         "workloadAddress": w["address"], "inboundCapture": w["inboundCapture"],
                         "ports": list(w["ports"]),
                         # transparent capture: where iptables sends its workload's traffic (None: explicit)
                         "capturePorts": w.get("sidecarPorts") if snapshot["capture"] == "transparent" else None}
    return snapshot


def node_identities(state: dict[str, Any]) -> dict[str, set[str]]:
    """node -> identities its agents may ask certificates for: its workloads' and its waypoints'."""
    out: dict[str, set[str]] = {n: set() for n in state["nodes"]}
    for w in state["workloads"].values():
        out[w["node"]].add(w["identity"])
    for entry in waypoints(state).values():
        out[entry["node"]].add(entry["identity"])
    return out
