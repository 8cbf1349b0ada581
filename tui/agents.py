"""The mesh agents of a node as the agent view offers them: its ztunnel, the waypoints and sidecars it runs.

Each agent has two names: the one proxy-status and the config-dump route use (`ztunnel`,
`waypoint:bookinfo/waypoint`, `sidecar:reviews-v1`) and the process name its logs go under
(`ztunnel`, `waypoint-bookinfo-waypoint`, `sidecar-reviews-v1`).
"""

from __future__ import annotations

from dataclasses import dataclass

from tui.mesh import MeshRef, MeshView, NodeView

ZTUNNEL = "ztunnel"


@dataclass(frozen=True)
class AgentRef:
    """One agent of a node: how the lab API names it, and the process its log belongs to."""

    agent: str  # ztunnel, waypoint:NS/NAME, sidecar:WORKLOAD
    process: str  # ztunnel, waypoint-NS-NAME, sidecar-WORKLOAD
    node: str

    @property
    def kind(self) -> str:
        return self.agent.partition(":")[0]

    @property
    def title(self) -> str:
        """'ztunnel/node-1', 'waypoint:bookinfo/waypoint' — as `meshlab proxy-status` lists them."""
        return f"{ZTUNNEL}/{self.node}" if self.agent == ZTUNNEL else self.agent


def agents_of(mesh: MeshView | None, node: NodeView) -> list[AgentRef]:
    """The node's ztunnel first, then its waypoints and sidecars as its supervisor lists them."""
    found = [AgentRef(ZTUNNEL, ZTUNNEL, node.name)]
    waypoints = {f"waypoint-{w.namespace}-{w.name}": w for w in (mesh.waypoints if mesh else ()) if w.node == node.name}
    for a in node.agents:
        if a.role == "waypoint" and a.name in waypoints:
            w = waypoints[a.name]
            found.append(AgentRef(f"waypoint:{w.namespace}/{w.name}", a.name, node.name))
        elif a.role == "sidecar" and a.name.startswith("sidecar-"):
            found.append(AgentRef(f"sidecar:{a.name.removeprefix('sidecar-')}", a.name, node.name))
    return found


def agent_for(mesh: MeshView, ref: MeshRef | None) -> tuple[NodeView, AgentRef] | None:
    """The agent an action on `ref` means: the agent under the cursor, a workload's sidecar, a namespace's or
    service's waypoint; else the ztunnel of the node under the cursor (or of the first node)."""
    node = mesh.node_for(ref)
    if ref is not None and ref.kind == "workload":
        sidecar = f"sidecar:{ref.name}"
        for n in mesh.nodes:
            for a in agents_of(mesh, n):
                if a.agent == sidecar:
                    return n, a
    if ref is not None and ref.kind in ("namespace", "service"):
        ns = mesh.namespace_for(ref)
        svc = mesh.service(ref.name, ref.namespace) if ref.kind == "service" else None
        waypoint = (svc.waypoint if svc else None) or (ns.waypoint_at if ns else None)
        if waypoint is not None:
            node = next((n for n in mesh.nodes if n.name == waypoint.node), node)
            if node is not None:
                wanted = f"waypoint:{waypoint.namespace}/{waypoint.name}"
                found = next((a for a in agents_of(mesh, node) if a.agent == wanted), None)
                if found is not None:
                    return node, found
    if node is None:
        return None
    agents = agents_of(mesh, node)
    if ref is not None and ref.kind == "agent":
        return node, next((a for a in agents if a.process == ref.name), agents[0])
    return node, agents[0]
