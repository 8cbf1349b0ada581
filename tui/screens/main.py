"""The main screen: the mesh tree, the live service graph, rate sparklines, proxy-status, load runs and config."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, Header

from lab.errors import LabError
from tui.actions import MAIN_ACTIONS, bindings
from tui.agents import agent_for, agents_of
from tui.connection import LabConnection, describe
from tui.livefaults import countdown, live_faults
from tui.mesh import MeshRef, MeshView
from tui.messages import LabChanged, LabPolled, LabUnavailable, MeshSelected
from tui.screens.access_logs import AccessLogs
from tui.screens.agent_detail import AgentDetail
from tui.screens.apply_dialog import ApplyFileDialog
from tui.screens.config_editor import ConfigEditor
from tui.screens.delete_dialog import DeleteConfigDialog
from tui.screens.events import LabEvents
from tui.screens.faults import Faults
from tui.screens.load_dialog import LoadDialog
from tui.screens.mode_dialog import WARNING, ModeDialog
from tui.screens.resource_cost import ResourceCost
from tui.screens.workload_detail import WorkloadDetail
from tui.quick_actions import WarmUp, WaypointToggle, warm_up, waypoint_summary, waypoint_toggle
from tui.snapshot import LabSnapshot, take_snapshot
from tui.traffic import RateHistory
from tui.widgets.lab_banner import LabBanner
from tui.widgets.load_runs import LoadRuns, short_id
from tui.widgets.mesh_config import MeshConfig
from tui.widgets.mesh_tree import MeshTree
from tui.widgets.proxy_status import ProxyStatus
from tui.widgets.rate_sparklines import RateSparklines
from tui.widgets.service_graph import ServiceGraph


def traffic_hint(mesh: MeshView) -> str:
    """What to do when no edge has traffic yet, in the lab's own terms."""
    plain = [ns.name for ns in mesh.namespaces if ns.mode == "none"]
    if plain and len(plain) == len(mesh.namespaces):
        names = ", ".join(plain)
        return (f"No traffic seen by the mesh: namespace {names} is in mode none, so connections go direct "
                f"and no ztunnel sees them.\nPress m to move it to ambient, then l to start a load run.")
    return "No traffic seen by the mesh yet: press l to start a load run."


class MainScreen(Screen[None]):
    """Everything about one lab at a glance, polled every second."""

    BINDINGS = bindings(MAIN_ACTIONS)
    selected: reactive[MeshRef | None] = reactive(None)

    def __init__(self, connection: LabConnection, poll_seconds: float = 1.0,
                 clock: Callable[[], float] = time.time, warm: WarmUp | None = None) -> None:
        super().__init__()
        self.connection = connection
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.warm = warm
        self.history = RateHistory()
        self.snapshot: LabSnapshot | None = None
        self.mesh: MeshView | None = None
        self.events: list[dict[str, Any]] = []
        self._polling = False

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="⬡")
        yield LabBanner(id="banner")
        with Horizontal(id="body"):
            with Vertical(id="left"):
                yield MeshTree(id="mesh")
                yield MeshConfig(id="config")
            with Vertical(id="right"):
                yield ServiceGraph(self.history, id="graph")
                yield RateSparklines(self.history, id="rates")
                with Horizontal(id="bottom"):
                    yield ProxyStatus(id="agents")
                    yield LoadRuns(id="loads")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        titles = {"mesh": "mesh", "config": "mesh config", "graph": "service graph (call order)",
                  "rates": "rates, last 60 s", "agents": "proxy-status", "loads": "load runs"}
        for widget_id, title in titles.items():
            self.query_one(f"#{widget_id}").border_title = title
        self.title = f"meshlab · {self.connection.lab}"
        self.poll()
        if self.poll_seconds > 0:
            self.set_interval(self.poll_seconds, self.poll)
        self.query_one(MeshTree).focus()
        if self.warm is not None:
            self._warm_up(self.warm)

    @work(exclusive=True, group="warm-up")
    async def _warm_up(self, plan: WarmUp) -> None:
        """Mesh an idle lab and start a bounded load run, so the graph has traffic within seconds."""
        try:
            done = await self.connection.call(lambda api: warm_up(api, plan))
        except LabError as e:
            self.notify(describe(e), title="could not start traffic", severity="error")
            return
        if done:
            self.post_message(LabChanged("\n".join(done)))

    # -- polling ----------------------------------------------------------------
    def poll(self) -> None:
        """Ask the lab for a fresh snapshot unless the previous poll is still out."""
        if not self._polling:
            self._polling = True
            self._poll()

    @work(exclusive=True, group="poll")
    async def _poll(self) -> None:
        since = self.events[-1]["time"] if self.events else 0.0
        try:
            snapshot = await self.connection.call(lambda api: take_snapshot(api, since))
        except LabError as e:
            self.post_message(LabUnavailable(describe(e)))
        except Exception as e:  # an answer the TUI cannot read: say so, keep polling
            self.post_message(LabUnavailable(f"unexpected answer from the lab API ({type(e).__name__}: {e})"))
        else:
            self.post_message(LabPolled(snapshot))
        finally:
            self._polling = False

    def on_lab_polled(self, message: LabPolled) -> None:
        snap = self.snapshot = message.snapshot
        mesh = self.mesh = snap.mesh
        self.events += snap.events
        self.query_one(LabBanner).reason = ""
        self.sub_title = f"{mesh.status} · config v{snap.proxy_status.get('latest', '?')}" + (
            f" · {self.events[-1]['message']}" if self.events else "")
        self.query_one(MeshTree).show(mesh)
        edges = snap.edges
        self.history.add(edges)
        graph = self.query_one(ServiceGraph)
        graph.hint = traffic_hint(mesh)
        graph.waypoints = frozenset(w.name for w in mesh.waypoints)
        graph.edges = tuple(edges)
        self.query_one(RateSparklines).show()
        self.query_one(ProxyStatus).agents = tuple(snap.proxy_status.get("agents", []))
        self.query_one(LoadRuns).runs = tuple(snap.loads.get("runs", []))
        self.query_one(MeshConfig).items = tuple(snap.config.get("items", []))
        self.show_faults(snap)

    def show_faults(self, snap: LabSnapshot) -> None:
        """The live faults under the service graph, with their countdown, so their effect can be read beside them."""
        now = self.clock()
        faults = live_faults(snap.faults)
        graph = self.query_one(ServiceGraph)
        graph.border_subtitle = "⚡ " + " · ".join(
            f"{f.id} {f.short}" + (f" {countdown(f.left(now))}" if f.expires is not None else "")
            for f in faults) if faults else ""

    def on_lab_unavailable(self, message: LabUnavailable) -> None:
        self.query_one(LabBanner).reason = message.reason

    def on_mesh_selected(self, message: MeshSelected) -> None:
        self.selected = message.ref

    def on_lab_changed(self, message: LabChanged) -> None:
        severity = "warning" if WARNING in message.summary else "information"
        self.notify(message.summary, title="lab changed", timeout=10, severity=severity)
        self.poll()

    def _changed(self, summary: str | None) -> None:
        """A dialog's result: what it changed in the lab, or None when cancelled."""
        if summary:
            self.post_message(LabChanged(summary))

    def _need_mesh(self) -> MeshView | None:
        if self.mesh is None:
            self.notify("the lab has not answered yet", severity="warning")
        return self.mesh

    # -- actions (keys and command palette; see tui.actions) --------------------
    def action_refresh(self) -> None:
        self.poll()

    def action_switch_mode(self) -> None:
        mesh = self._need_mesh()
        ns = mesh.namespace_for(self.selected) if mesh else None
        if ns is not None:
            self.app.push_screen(ModeDialog(self.connection, ns.name, ns.mode), self._changed)

    def action_toggle_waypoint(self) -> None:
        mesh = self._need_mesh()
        toggle = waypoint_toggle(mesh, self.selected) if mesh else None
        if toggle is not None:
            self.notify(toggle.doing, title="waypoint")
            self._toggle_waypoint(toggle)

    @work(exclusive=True, group="waypoint")
    async def _toggle_waypoint(self, toggle: WaypointToggle) -> None:
        try:
            answer = await self.connection.call(
                lambda api: api.set_waypoint(toggle.namespace, toggle.enable, toggle.service))
        except LabError as e:
            self.notify(describe(e), title=f"waypoint of {toggle.what}", severity="error")
            return
        self.post_message(LabChanged(waypoint_summary(answer)))

    def action_start_load(self) -> None:
        self.app.push_screen(LoadDialog(self.connection), self._changed)

    def action_stop_load(self) -> None:
        known = self.snapshot.loads.get("runs", []) if self.snapshot else []
        runs = [r for r in known if r.get("state") == "running"]
        if not runs:
            self.notify("no load run is running", severity="warning")
            return
        self._stop_load(max(runs, key=lambda r: float(r.get("startedAt", 0)))["id"])

    @work(exclusive=True, group="stop-load")
    async def _stop_load(self, run_id: str) -> None:
        try:
            run = await self.connection.call(lambda api: api.stop_load(run_id))
        except LabError as e:
            self.notify(describe(e), title="stop load run", severity="error")
            return
        self.post_message(LabChanged(f"load run {short_id(run_id)}: {run.get('state', 'stopping')}"))

    def action_apply_file(self) -> None:
        self.app.push_screen(ApplyFileDialog(self.connection), self._changed)

    def action_edit_config(self) -> None:
        items = list(self.snapshot.config.get("items", [])) if self.snapshot else []
        self.app.push_screen(ConfigEditor(self.connection, items), self._changed)

    def action_delete_config(self) -> None:
        self.app.push_screen(DeleteConfigDialog(self.connection), self._changed)

    def action_show_certificate(self) -> None:
        mesh = self._need_mesh()
        workload = mesh.workload_for(self.selected) if mesh else None
        if mesh and workload:
            ns = mesh.namespace(workload.namespace)
            self.app.push_screen(WorkloadDetail(self.connection, workload, ns.mode if ns else "?", self.clock))

    def action_show_agent(self) -> None:
        mesh = self._need_mesh()
        found = agent_for(mesh, self.selected) if mesh else None
        if mesh is not None and found is not None:
            node, agent = found
            self.app.push_screen(AgentDetail(self.connection, node, agents_of(mesh, node), agent, clock=self.clock))

    def action_show_access_logs(self) -> None:
        mesh = self._need_mesh()
        if mesh is not None:
            self.app.push_screen(AccessLogs(self.connection, [n.name for n in mesh.nodes], self.poll_seconds))

    def action_show_cost(self) -> None:
        self.app.push_screen(ResourceCost(self.connection, self.poll_seconds, self.clock))

    def action_show_events(self) -> None:
        self.app.push_screen(LabEvents(self.events, self.clock))

    def action_show_faults(self) -> None:
        target = self.mesh.fault_target(self.selected) if self.mesh else ""
        self.app.push_screen(Faults(self.connection, target, self.poll_seconds, self.clock))
