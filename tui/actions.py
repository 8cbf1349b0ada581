"""Every action of the main screen in one place: its key, its title in the command palette and help, what it does."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding, BindingType


@dataclass(frozen=True)
class MeshAction:
    """A user action: one key, one command-palette entry, one help line."""

    key: str
    action: str  # the screen's action_<name>
    short: str  # the footer's word
    title: str
    help: str
    footer: bool = True  # shown in the footer (the palette and help list every action)


MAIN_ACTIONS: tuple[MeshAction, ...] = (
    MeshAction("m", "switch_mode", "Mode", "Switch namespace mode",
               "Move the selected namespace to ambient, sidecar or none; shows what restarted and failed"),
    MeshAction("w", "toggle_waypoint", "Waypoint", "Enable or disable waypoint",
               "Deploy or remove the selected namespace's waypoint (on a service: that service's own)"),
    MeshAction("l", "start_load", "Load", "Start load run", "Start a bounded load run (target, qps, duration)"),
    MeshAction("x", "stop_load", "Stop", "Stop load run", "Stop the newest running load run"),
    MeshAction("a", "apply_file", "Apply", "Apply YAML file",
               "Apply an Istio YAML file (PeerAuthentication, AuthorizationPolicy, ...)"),
    MeshAction("e", "edit_config", "Edit", "Edit and apply config", "Write Istio YAML in an editor and apply it",
               footer=False),
    MeshAction("d", "delete_config", "Delete", "Delete config", "Delete an applied config object", footer=False),
    MeshAction("c", "show_certificate", "Cert", "Workload identity and certificate",
               "SPIFFE identity, SAN, serial, expiry and time to rotation of the selected workload"),
    MeshAction("p", "show_agent", "Agent", "Agent config and status",
               "Proxy status, config dump and log of the selected agent: the node's ztunnel, a waypoint or "
               "a sidecar", footer=False),
    MeshAction("g", "show_access_logs", "Logs", "Access logs", "Live ztunnel access logs, filterable"),
    MeshAction("u", "show_cost", "Cost", "Resource cost", "RSS and CPU per proxy and workload, totals by role",
               footer=False),
    MeshAction("v", "show_events", "Events", "Lab events",
               "What the control plane did: mode switches, config, load runs", footer=False),
    MeshAction("f", "show_faults", "Faults", "Faults",
               "Live faults with their countdown: add L7, L4, node and certificate faults, remove them"),
    MeshAction("r", "refresh", "Refresh", "Refresh now", "Poll the lab now instead of waiting a second",
               footer=False),
)

HELP_KEYS = (("f1  ?", "this help"), ("ctrl+p", "command palette: every action by name"),
             ("tab  shift+tab", "move between panels"), ("↑ ↓  enter", "move in the mesh tree, expand a node"),
             ("escape", "close a dialog or detail view"), ("q", "quit"))


def bindings(actions: tuple[MeshAction, ...] = MAIN_ACTIONS) -> list[BindingType]:
    """Key bindings for `actions`."""
    return [Binding(a.key, a.action, a.short, show=a.footer, tooltip=a.help) for a in actions]
