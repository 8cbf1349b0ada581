"""The mesh as a tree: nodes with their workloads and agents, namespaces with their mode, services."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from tui.mesh import AgentView, MeshRef, MeshView, NamespaceView, ServiceView, WorkloadView
from tui.messages import MeshSelected

STATE_STYLE = {"running": "green", "starting": "yellow", "backoff": "bold red", "exited": "red", "failed": "bold red",
               "missing": "bold red", "stopped": "dim"}
MODE_STYLE = {"ambient": "bold green", "sidecar": "bold cyan", "none": "yellow"}


def _process_label(name: str, state: str, restarts: int, suffix: str = "") -> Text:
    text = Text.assemble(("● ", STATE_STYLE.get(state, "yellow")), name)
    if suffix:
        text.append(f" {suffix}", "dim")
    if state != "running":
        text.append(f" {state}", STATE_STYLE.get(state, "yellow"))
    if restarts:
        text.append(f" ↻{restarts}", "yellow")
    return text


def workload_label(w: WorkloadView) -> Text:
    return _process_label(w.name, w.state, w.restarts)


def agent_label(a: AgentView) -> Text:
    """'ztunnel agent'; a waypoint's or a sidecar's process name says what it is already."""
    return _process_label(a.name, a.state, a.restarts, "" if a.role and a.name.startswith(a.role + "-") else "agent")


def namespace_label(ns: NamespaceView) -> Text:
    text = Text.assemble(ns.name, "  ", (ns.mode, MODE_STYLE.get(ns.mode, "")))
    if ns.waypoint:
        text.append(" +waypoint", "bold magenta")
    return text


def service_label(s: ServiceView) -> Text:
    ports = ",".join(str(p) for p in s.ports)
    text = Text.assemble(s.name, (f" :{ports}", "dim"), (f" ×{len(s.endpoints)}", "dim"))
    if s.waypoint is not None:
        text.append(" +waypoint", "bold magenta")
    return text


class MeshTree(Tree[MeshRef]):
    """Nodes → workloads and agents; namespaces with their mode; services. Keeps the cursor across polls."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("lab", MeshRef("lab", ""), id=id)
        self.show_root = False
        self.guide_depth = 2
        self._shape: tuple[object, ...] = ()
        self._by_ref: dict[MeshRef, TreeNode[MeshRef]] = {}

    def show(self, mesh: MeshView) -> None:
        """Show `mesh`: relabel in place when only states changed, rebuild when things came or went."""
        shape = (tuple((n.name, tuple(w.name for w in n.workloads), tuple(a.name for a in n.agents))
                       for n in mesh.nodes), tuple(ns.name for ns in mesh.namespaces),
                 tuple((s.namespace, s.name) for s in mesh.services))
        if shape != self._shape:
            self._rebuild(mesh)
            self._shape = shape
        for n in mesh.nodes:
            self._relabel(MeshRef("node", n.name, node=n.name),
                          Text.assemble(n.name, (f" {n.address}", "dim"),
                                        *([] if n.state == "running" else [(f" {n.state}", "bold red")])))
            for w in n.workloads:
                self._relabel(MeshRef("workload", w.name, w.namespace, n.name), workload_label(w))
            for a in n.agents:
                self._relabel(MeshRef("agent", a.name, node=n.name), agent_label(a))
        for ns in mesh.namespaces:
            self._relabel(MeshRef("namespace", ns.name, ns.name), namespace_label(ns))
        for svc in mesh.services:
            self._relabel(MeshRef("service", svc.name, svc.namespace), service_label(svc))

    def _relabel(self, ref: MeshRef, label: Text) -> None:
        node = self._by_ref.get(ref)
        if node is not None and node.label != label:
            node.set_label(label)

    def _rebuild(self, mesh: MeshView) -> None:
        cursor = self.cursor_node.data if self.cursor_node is not None else None
        self.clear()
        self._by_ref = {}
        groups = self.root.add("nodes", MeshRef("group", "nodes"), expand=True)
        for n in mesh.nodes:
            ref = MeshRef("node", n.name, node=n.name)
            node = self._by_ref[ref] = groups.add(n.name, ref, expand=True)
            for w in n.workloads:
                wref = MeshRef("workload", w.name, w.namespace, n.name)
                self._by_ref[wref] = node.add_leaf(workload_label(w), wref)
            for a in n.agents:
                aref = MeshRef("agent", a.name, node=n.name)
                self._by_ref[aref] = node.add_leaf(agent_label(a), aref)
        spaces = self.root.add("namespaces", MeshRef("group", "namespaces"), expand=True)
        for ns in mesh.namespaces:
            ref = MeshRef("namespace", ns.name, ns.name)
            self._by_ref[ref] = spaces.add_leaf(namespace_label(ns), ref)
        services = self.root.add("services", MeshRef("group", "services"), expand=True)
        for s in mesh.services:
            ref = MeshRef("service", s.name, s.namespace)
            self._by_ref[ref] = services.add_leaf(service_label(s), ref)
        if cursor is not None and cursor in self._by_ref:
            self.call_after_refresh(self.move_cursor, self._by_ref[cursor])

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted[MeshRef]) -> None:
        event.stop()
        if event.node.data is not None:
            self.post_message(MeshSelected(event.node.data))
