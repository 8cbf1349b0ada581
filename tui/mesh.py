"""The mesh as the TUI shows it: nodes, workloads, agents, namespaces and services from the lab's `/v1/nodes`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

RefKind = Literal["lab", "group", "node", "workload", "agent", "namespace", "service"]
MODES = ("ambient", "none", "sidecar")


@dataclass(frozen=True)
class MeshRef:
    """A thing in the mesh tree: what the cursor is on, and what actions apply to."""

    kind: RefKind
    name: str
    namespace: str = ""
    node: str = ""


@dataclass(frozen=True)
class WorkloadView:
    """A workload (a pod, in Istio's words) with its process state."""

    name: str
    namespace: str
    service: str
    version: str
    node: str
    address: str
    identity: str
    state: str
    restarts: int
    ready: bool


@dataclass(frozen=True)
class AgentView:
    """A mesh agent process on a node: its ztunnel, a waypoint, a workload's sidecar."""

    name: str
    role: str
    node: str
    state: str
    restarts: int


@dataclass(frozen=True)
class NodeView:
    """A node with what runs on it."""

    name: str
    address: str
    provider: str
    state: str
    workloads: tuple[WorkloadView, ...]
    agents: tuple[AgentView, ...]


@dataclass(frozen=True)
class WaypointView:
    """A waypoint proxy: the L7 proxy of a namespace (or of one service) in ambient mode."""

    name: str
    namespace: str
    service: str  # "" for the namespace's waypoint
    node: str
    address: str


@dataclass(frozen=True)
class NamespaceView:
    """A namespace, its data-plane mode and its waypoint (when it has one)."""

    name: str
    mode: str
    waypoint: bool
    waypoint_at: WaypointView | None = None


@dataclass(frozen=True)
class ServiceView:
    """A service: its ports and the workloads behind it."""

    name: str
    namespace: str
    hostname: str
    ports: tuple[int, ...]
    endpoints: tuple[str, ...]
    waypoint: WaypointView | None = None  # its own waypoint (a service waypoint), if any


@dataclass(frozen=True)
class MeshView:
    """Everything the mesh tree shows, parsed once per poll."""

    lab: str
    status: str
    trust_domain: str
    nodes: tuple[NodeView, ...]
    namespaces: tuple[NamespaceView, ...]
    services: tuple[ServiceView, ...]
    waypoints: tuple[WaypointView, ...] = ()

    @classmethod
    def from_nodes(cls, doc: dict[str, Any]) -> MeshView:
        """Parse the lab API's `/v1/nodes` answer."""
        workloads = doc.get("workloads", {})
        nodes = []
        for node_name, node in doc.get("nodes", {}).items():
            procs = {p["name"]: p for p in node.get("processes", [])}
            mine = []
            for name, w in workloads.items():
                if w.get("node") != node_name:
                    continue
                p = procs.get(name, {})
                mine.append(WorkloadView(name, w.get("namespace", ""), w.get("service") or "", w.get("version", ""),
                                         node_name, w.get("address", ""), w.get("identity", ""),
                                         p.get("state", "missing"), int(p.get("restarts", 0)), bool(p.get("ready"))))
            agents = [AgentView(p["name"], p.get("labels", {}).get("role", ""), node_name, p.get("state", ""),
                                int(p.get("restarts", 0)))
                      for p in node.get("processes", [])
                      if p.get("labels", {}).get("role", "") not in ("workload", "load") and p["name"] not in workloads]
            nodes.append(NodeView(node_name, node.get("address", ""), node.get("provider", ""),
                                  node.get("state", "unknown"), tuple(mine), tuple(agents)))
        waypoints = tuple(WaypointView(str(w.get("name", "")), str(w.get("namespace", "")),
                                       str(w.get("service") or ""), str(w.get("node", "")), str(w.get("address", "")))
                          for w in (doc.get("waypoints") or {}).values())
        of_namespace = {w.namespace: w for w in waypoints if not w.service}
        of_service = {(w.namespace, w.service): w for w in waypoints if w.service}
        namespaces = tuple(NamespaceView(n, ns.get("mode", "none"), bool(ns.get("waypoint")) or n in of_namespace,
                                         of_namespace.get(n))
                           for n, ns in doc.get("namespaces", {}).items())
        services = tuple(ServiceView(s["name"], s.get("namespace", ""), s.get("hostname", ""),
                                     tuple(p["port"] for p in s.get("ports", [])),
                                     tuple(w for w, wd in workloads.items()
                                           if wd.get("service") == s["name"]
                                           and wd.get("namespace") == s.get("namespace")),
                                     of_service.get((s.get("namespace", ""), s["name"])))
                         for s in doc.get("services", {}).values())
        return cls(doc.get("lab", ""), doc.get("status", ""), doc.get("trustDomain", ""), tuple(nodes), namespaces,
                   services, waypoints)

    def workload(self, name: str) -> WorkloadView | None:
        return next((w for n in self.nodes for w in n.workloads if w.name == name), None)

    def service(self, name: str, namespace: str) -> ServiceView | None:
        return next((s for s in self.services if s.name == name and s.namespace == namespace), None)

    def namespace(self, name: str) -> NamespaceView | None:
        return next((ns for ns in self.namespaces if ns.name == name), None)

    def namespace_for(self, ref: MeshRef | None) -> NamespaceView | None:
        """The namespace an action on `ref` means: its own, else the only (first) one."""
        if ref is not None:
            wanted = ref.name if ref.kind == "namespace" else ref.namespace
            if wanted and self.namespace(wanted):
                return self.namespace(wanted)
        return self.namespaces[0] if self.namespaces else None

    def workload_for(self, ref: MeshRef | None) -> WorkloadView | None:
        """The workload an action on `ref` means: the one under the cursor, else the first of a service/node."""
        if ref is not None and ref.kind == "workload":
            return self.workload(ref.name)
        if ref is not None and ref.kind == "service":
            svc = self.service(ref.name, ref.namespace)
            if svc and svc.endpoints:
                return self.workload(svc.endpoints[0])
        if ref is not None and ref.node:
            node = next((n for n in self.nodes if n.name == ref.node), None)
            if node and node.workloads:
                return node.workloads[0]
        return next((w for n in self.nodes for w in n.workloads), None)

    def fault_target(self, ref: MeshRef | None) -> str:
        """What a fault on `ref` targets, as `meshlab fault add` takes it ('' when the cursor is on no such thing)."""
        if ref is None:
            return ""
        if ref.kind == "service":
            return f"{ref.name}.{ref.namespace}"
        if ref.kind in ("workload", "node"):
            return ref.name
        return ref.node if ref.kind == "agent" else ""

    def node_for(self, ref: MeshRef | None) -> NodeView | None:
        """The node an action on `ref` means: its own, else the first."""
        name = ref.name if ref is not None and ref.kind == "node" else ref.node if ref is not None else ""
        if ref is not None and ref.kind == "workload" and not name:
            w = self.workload(ref.name)
            name = w.node if w else ""
        return next((n for n in self.nodes if n.name == name), self.nodes[0] if self.nodes else None)
