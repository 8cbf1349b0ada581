"""Actions of the main screen that need no dialog: what they ask of the lab, and what they say it did."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tui.connection import LabApi
from tui.mesh import MeshRef, MeshView


@dataclass(frozen=True)
class WaypointToggle:
    """Enable or disable one waypoint: a namespace's, or a service's own."""

    namespace: str
    service: str | None
    enable: bool

    @property
    def what(self) -> str:
        return f"service {self.service}.{self.namespace}" if self.service else f"namespace {self.namespace}"

    @property
    def doing(self) -> str:
        return f"{'enabling' if self.enable else 'disabling'} the waypoint of {self.what} …"


def waypoint_toggle(mesh: MeshView, ref: MeshRef | None) -> WaypointToggle | None:
    """What `w` does on `ref`: a service toggles its own waypoint, anything else its namespace's."""
    if ref is not None and ref.kind == "service":
        svc = mesh.service(ref.name, ref.namespace)
        if svc is not None:
            return WaypointToggle(svc.namespace, svc.name, svc.waypoint is None)
    ns = mesh.namespace_for(ref)
    return None if ns is None else WaypointToggle(ns.name, None, not ns.waypoint)


def waypoint_summary(answer: dict[str, Any]) -> str:
    """'waypoint bookinfo/waypoint enabled on node-1 at 127.100.1.2 (config v4)'."""
    w = answer.get("waypoint") or {}
    name = f"{w.get('namespace', '?')}/{w.get('name', '?')}"
    if not answer.get("changed", True):
        return f"waypoint {name} was already {'enabled' if answer.get('enabled') else 'disabled'}"
    if answer.get("enabled"):
        where = f" on {w['node']} at {w.get('address')}" if w.get("node") else ""
        return f"waypoint {name} enabled{where}: L7 telemetry and faults for its services (config v" \
               f"{answer.get('version')})"
    return f"waypoint {name} disabled: its services' traffic goes ztunnel to ztunnel (config v{answer.get('version')})"


@dataclass(frozen=True)
class WarmUp:
    """What `make lab` asks of the TUI on open so traffic shows at once: mesh the lab, start a bounded load run."""

    mode: str | None = "ambient"  # namespaces in mode none move to this (None: leave them)
    target: str = ""  # the load run's target ('': no load run)
    qps: float = 10
    duration: str = "10m"


def warm_up(api: LabApi, plan: WarmUp) -> list[str]:
    """Do `plan` on a lab that is idle (blocking: run it in a thread); what was done, one line each."""
    done = []
    if plan.mode:
        for name, ns in (api.nodes().get("namespaces") or {}).items():
            if ns.get("mode", "none") == "none":
                api.set_mode(name, plan.mode)
                done.append(f"namespace {name}: mode none → {plan.mode}")
    running = [r for r in api.loads().get("runs", []) if r.get("state") == "running"]
    if plan.target and not running:
        run = api.start_load(plan.target, qps=plan.qps, duration=plan.duration)
        done.append(f"load run {run.get('id', '?')}: {plan.target}, {plan.qps:g} qps for {plan.duration}")
    return done
