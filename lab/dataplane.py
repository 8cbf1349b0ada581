"""The L7 proxies of a lab in its state document: waypoints and sidecars (pure, no I/O).

Waypoints (DESIGN §4) are per namespace (named `waypoint`, as `istioctl waypoint apply` names
it) or per service (`<service>-waypoint`). Each is recorded in `state["waypoints"]` under
`namespace/name` with the node it runs on, its address and its identity
(`spiffe://<td>/ns/<ns>/sa/<name>`); the address is allocated once and kept, so enabling a
second waypoint never moves a running one. On a docker node it is an address of the lab network,
added to the node's eth0 (at `up`, or live when enabled; `lab.capture.set_proxy_address`). A service uses its own waypoint if it has one,
else its namespace's — and only while its namespace is in ambient mode (sidecars do their
own L7 work).

Sidecars run one per workload of a `sidecar` namespace; their addresses were planned with
the workload (`sidecarAddress`, lab.plan). Both kinds are supervised processes on their
node, made by `waypoint_process` and `sidecar_process`.
"""

from __future__ import annotations

from typing import Any

from lab.addressing import docker_waypoint_address, waypoint_address
from lab.errors import LabError
from lab.providers.base import ProcessSpec

NAMESPACE_WAYPOINT = "waypoint"
WAYPOINT_READY_PORT = 15021
State = dict[str, Any]


def waypoint_name(service: str | None) -> str:
    """Istio's names: `waypoint` for a namespace, `<service>-waypoint` for one service."""
    return f"{service}-waypoint" if service else NAMESPACE_WAYPOINT


def waypoints(state: State) -> dict[str, dict[str, Any]]:
    return state.setdefault("waypoints", {})


def add_waypoint(state: State, namespace: str, service: str | None = None) -> dict[str, Any]:
    """Record a waypoint for `namespace` (or one of its services) and return its entry; idempotent."""
    if namespace not in state["namespaces"]:
        raise LabError(f"no namespace '{namespace}' in lab '{state.get('lab')}' "
                       f"(namespaces: {', '.join(state['namespaces'])})")
    if service is not None and f"{service}.{namespace}" not in state["services"]:
        known = sorted(s["name"] for s in state["services"].values() if s["namespace"] == namespace)
        raise LabError(f"no service '{service}' in namespace '{namespace}' (services: {', '.join(known) or 'none'})")
    name = waypoint_name(service)
    key = f"{namespace}/{name}"
    existing = waypoints(state).get(key)
    if existing is not None:
        return existing
    node = _home_node(state, namespace, service)
    address = _free_waypoint_address(state, node, key)
    entry = {"name": name, "namespace": namespace, "service": service, "node": node, "address": address,
             "identity": f"spiffe://{state['trustDomain']}/ns/{namespace}/sa/{name}"}
    waypoints(state)[key] = entry
    return entry


def _free_waypoint_address(state: State, node: str, key: str) -> str:
    """The first waypoint address not taken: on the node's /24 (local), on the lab network (docker)."""
    provider = state["nodes"][node]["provider"]
    taken = {w["address"] for w in waypoints(state).values()}
    if provider == "local":
        index = state["nodes"][node]["index"]
        candidates = (waypoint_address(state["block"], index, slot) for slot in range(9))
    elif provider == "docker" and (state.get("docker") or {}).get("subnet"):
        # one range for the lab (its docker nodes share one network); the address goes on the node's eth0
        candidates = (docker_waypoint_address(state["docker"]["subnet"], slot) for slot in range(31))
    else:
        raise LabError(f"waypoint {key}: waypoints run on local and docker nodes only for now "
                       f"(node {node} is {provider})")
    return next(a for a in candidates if a not in taken)


def remove_waypoint(state: State, namespace: str, service: str | None = None) -> dict[str, Any] | None:
    """Forget a waypoint; returns its entry (None if there was none)."""
    return waypoints(state).pop(f"{namespace}/{waypoint_name(service)}", None)


def _home_node(state: State, namespace: str, service: str | None) -> str:
    """Where a waypoint runs: the node of the first workload of its service (or namespace), else the first node."""
    for w in sorted(state["workloads"].values(), key=lambda w: w["address"]):
        if w["namespace"] == namespace and (service is None or w.get("service") == service):
            return str(w["node"])
    return min(state["nodes"], key=lambda n: state["nodes"][n]["index"])


def waypoint_of(state: State, service_key: str) -> dict[str, Any] | None:
    """The waypoint traffic to a service goes through, or None (no waypoint, or its namespace is not ambient)."""
    s = state["services"][service_key]
    namespace = s["namespace"]
    if state["namespaces"].get(namespace, {}).get("mode") != "ambient":
        return None
    table = waypoints(state)
    return table.get(f"{namespace}/{waypoint_name(s['name'])}") or table.get(f"{namespace}/{NAMESPACE_WAYPOINT}")


def sidecar_workloads(state: State, node: str | None = None) -> list[str]:
    """Workloads that run with a sidecar (their namespace is in sidecar mode), on `node` or anywhere."""
    return sorted(name for name, w in state["workloads"].items()
                  if state["namespaces"].get(w["namespace"], {}).get("mode") == "sidecar"
                  and (node is None or w["node"] == node))


def waypoint_agent(entry: dict[str, Any]) -> str:
    """The waypoint's name on the agent channel (and in proxy-status)."""
    return f"waypoint:{entry['namespace']}/{entry['name']}"


def sidecar_agent(workload: str) -> str:
    return f"sidecar:{workload}"


def proxy_process_name(agent: str) -> str:
    """The supervised process name of an L7 proxy agent (`waypoint-bookinfo-waypoint`, `sidecar-reviews-v1`)."""
    kind, _, who = agent.partition(":")
    return f"{kind}-{who.replace('/', '-')}"


def _bootstrap_args(control_plane: str) -> tuple[str, ...]:
    return ("--cp", control_plane, "--token-file", "bootstrap/token", "--root-file", "bootstrap/root-cert.pem")


def waypoint_process(entry: dict[str, Any], control_plane: str, agent: tuple[str, ...]) -> ProcessSpec:
    """The supervised process of one waypoint (it runs in its node's folder, like the ztunnel)."""
    return ProcessSpec(
        name=proxy_process_name(waypoint_agent(entry)),
        argv=(*agent, "waypoint", "--node", entry["node"], "--namespace", entry["namespace"], "--name", entry["name"],
              "--address", entry["address"], *_bootstrap_args(control_plane)),
        restart="always",
        ready_tcp=(entry["address"], WAYPOINT_READY_PORT),
        labels={"role": "waypoint", "namespace": entry["namespace"]},
    )


def check_sidecar(state: State, workload: str) -> None:
    """LabError if `workload` cannot get a sidecar (its node's provider has no place for one yet)."""
    w = state["workloads"][workload]
    if not w.get("sidecarAddress"):
        raise LabError(f"workload {workload}: sidecars run on local and docker nodes only for now "
                       f"(node {w['node']} is {state['nodes'][w['node']]['provider']})")


def sidecar_process(state: State, workload: str, control_plane: str, agent: tuple[str, ...]) -> ProcessSpec:
    """The supervised process of one workload's sidecar."""
    check_sidecar(state, workload)
    w = state["workloads"][workload]
    return ProcessSpec(
        name=proxy_process_name(sidecar_agent(workload)),
        argv=(*agent, "sidecar", "--node", w["node"], "--workload", workload, "--address", w["sidecarAddress"],
              *_bootstrap_args(control_plane)),
        restart="always",
        ready_tcp=(w["sidecarAddress"], WAYPOINT_READY_PORT),
        labels={"role": "sidecar", "namespace": w["namespace"], "workload": workload},
    )
