"""Every action of the TUI against a real local-provider lab, driven with Pilot as a person would, and each
confirmed by what changes on screen (mesh tree, service graph, load runs, mesh config)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import Input, Label, OptionList, Select, TextArea

from lab.client import LabClient
from tests.tui.pilot_helpers import settle, wait_for_notice, wait_for_text, wait_until
from tests.tui.screen import screen_text
from tui.actions import MAIN_ACTIONS
from tui.app import MeshLabApp
from tui.mesh import MeshRef
from tui.screens.access_logs import AccessLogs
from tui.screens.config_editor import ConfigEditor
from tui.screens.fault_dialog import FaultDialog
from tui.screens.faults import Faults
from tui.screens.help import HelpScreen
from tui.screens.main import MainScreen
from tui.screens.mode_dialog import ModeDialog
from tui.traffic import EdgeRow

pytestmark = pytest.mark.slow
SIZE = (120, 40)
STRICT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: bookinfo
spec:
  mtls:
    mode: {mode}
"""


@pytest.fixture(scope="module")
def client(tui_lab: str) -> Iterator[LabClient]:
    """The lab's API client, to set preconditions and check what the TUI did (never to do it for the TUI)."""
    yield LabClient(tui_lab)


def app_on(lab: str) -> MeshLabApp:
    return MeshLabApp(lab, poll_seconds=0.5)


def set_mode(client: LabClient, mode: str) -> None:
    client.set_mode("bookinfo", mode)


def edges_now(app: MeshLabApp) -> list[EdgeRow]:
    """The edges of the main screen's latest poll."""
    assert isinstance(app.screen, MainScreen) and app.screen.snapshot is not None
    return app.screen.snapshot.edges


async def test_switch_mode_to_ambient_shows_in_the_tree_and_the_graph_turns_mtls(tui_lab: str,
                                                                                client: LabClient) -> None:
    set_mode(client, "none")
    app = app_on(tui_lab)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_text(pilot, "bookinfo  none")
        await wait_for_text(pilot, "is in mode none", "Press m to move it to ambient")
        await pilot.press("m")
        assert isinstance(app.screen, ModeDialog)
        await pilot.press("enter")  # ambient is suggested for a namespace in mode none
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), "the dialog to close")
        await wait_for_text(pilot, "bookinfo  ambient")
        client.start_load("productpage:9080/productpage", qps=20, duration="4s")
        text = await wait_for_text(pilot, "🔒 mTLS", "productpage-v1", "─▶ details-v1", timeout=20)
        assert "outside ─▶ productpage-v1" in text
    assert client.nodes()["namespaces"]["bookinfo"]["mode"] == "ambient"


async def open_on_namespace(pilot, app: MeshLabApp, key: str) -> None:
    """Press `key` once the first poll has put the cursor on something (actions then know their namespace)."""
    await wait_for_text(pilot, "bookinfo  ")
    await wait_until(pilot, lambda: isinstance(app.screen, MainScreen) and app.screen.mesh is not None, "a poll")
    await pilot.press(key)
    await settle(pilot)


async def test_switch_to_sidecar_says_what_restarted_and_what_failed(tui_lab: str, client: LabClient) -> None:
    set_mode(client, "ambient")
    app = app_on(tui_lab)
    async with app.run_test(size=SIZE) as pilot:
        await open_on_namespace(pilot, app, "m")
        dialog = app.screen
        assert isinstance(dialog, ModeDialog)
        assert dialog.query_one(OptionList).highlighted == 1  # sidecar, suggested from ambient
        await pilot.press("enter")
        await wait_for_text(pilot, "switching bookinfo to sidecar")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), "the switch", timeout=60)
        await wait_for_notice(pilot, "ambient → sidecar", "restarted 6 workloads", "during the switch")
        await wait_for_text(pilot, "bookinfo  sidecar", "sidecar-productpage-v1", "sidecar:productpage-v1", timeout=20)
    assert client.nodes()["namespaces"]["bookinfo"]["mode"] == "sidecar"
    set_mode(client, "ambient")


async def test_waypoint_key_deploys_and_removes_the_namespaces_waypoint(tui_lab: str, client: LabClient) -> None:
    set_mode(client, "ambient")
    app = app_on(tui_lab)
    async with app.run_test(size=SIZE) as pilot:
        await open_on_namespace(pilot, app, "w")
        await wait_for_notice(pilot, "enabling the waypoint of namespace bookinfo")
        await wait_for_notice(pilot, "waypoint bookinfo/waypoint enabled on", timeout=30)
        await wait_for_text(pilot, "bookinfo  ambient +waypoint", "waypoint-bookinfo-waypoint", "waypoint:bookinfo/")
        assert client.waypoints()["waypoints"]
        await pilot.press("w")
        await wait_for_notice(pilot, "waypoint bookinfo/waypoint disabled", timeout=30)
        await wait_for_text(pilot, "waypoint-bookinfo-waypoint", absent=True, timeout=20)
    assert client.waypoints()["waypoints"] == []


async def add_fault_from_the_panel(pilot, app: MeshLabApp, kind: str, target: str, params: dict[str, str],
                                   ttl: str = "") -> None:
    """f, a, fill the form as a person would (the kind picked in its list), enter."""
    await pilot.press("f")
    await wait_until(pilot, lambda: isinstance(app.screen, Faults) and app.screen.loaded, "the faults panel")
    await pilot.press("a")
    await wait_until(pilot, lambda: isinstance(app.screen, FaultDialog), "the fault form")
    form = app.screen
    assert isinstance(form, FaultDialog)
    form.query_one("#kind", Select).value = kind
    await settle(pilot)
    form.query_one("#target", Input).value = target
    slots = {str(form.query_one(f"#param-name-{i}", Label).content).split()[0]: i
             for i in range(len(form.catalogue.by_name[kind].params))}
    for name, value in params.items():
        form.query_one(f"#param-{slots[name]}", Input).value = value
    form.query_one("#ttl", Input).value = ttl
    form.query_one("#target", Input).focus()
    await pilot.press("enter")


def countdown_on_screen(app: MeshLabApp) -> int:
    """The seconds the faults panel says the first fault has left."""
    found = re.search(r"(\d+)m(\d\d)s", screen_text(app))
    assert found, screen_text(app)
    return int(found.group(1)) * 60 + int(found.group(2))


async def test_faults_panel_adds_a_fault_with_a_ttl_counts_down_and_removes_it(tui_lab: str,
                                                                                client: LabClient) -> None:
    client.remove_fault(everything=True)
    app = app_on(tui_lab)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_text(pilot, "node-1")
        await add_fault_from_the_panel(pilot, app, "latency", "nowhere", {"latency": "100"})
        await wait_for_text(pilot, "cannot add", "target 'nowhere'")  # the lab's refusal, in the form
        assert isinstance(app.screen, FaultDialog)
        app.screen.query_one("#target", Input).value = "details"
        app.screen.query_one("#ttl", Input).value = "soon"
        await pilot.press("enter")
        await wait_for_text(pilot, "ttl: want a duration")
        app.screen.query_one("#ttl", Input).value = "2m"
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, Faults), "the form to close")
        (fault,) = client.faults()["faults"]
        assert (fault["kind"], fault["targetText"], fault["params"]["latency"]) == ("latency", "details.bookinfo", 100)
        await wait_for_text(pilot, fault["id"], "details.bookinfo", "latency=100")
        first = countdown_on_screen(app)
        await pilot.pause(2.5)
        assert 0 < countdown_on_screen(app) < first <= 120  # the countdown moves
        await pilot.press("escape")
        await wait_for_text(pilot, f"⚡ {fault['id']} latency details.bookinfo")  # beside the traffic it affects
        await pilot.press("f")
        await wait_until(pilot, lambda: isinstance(app.screen, Faults) and app.screen.loaded, "the faults panel")
        await pilot.press("delete")
        await wait_for_notice(pilot, f"removed {fault['id']}")
        await wait_for_text(pilot, "no live faults")
    assert client.faults()["faults"] == []


async def test_fifty_percent_abort_on_ratings_shows_in_the_reviews_to_ratings_error_rate(
        tui_lab: str, client: LabClient) -> None:
    set_mode(client, "ambient")
    client.remove_fault(everything=True)
    client.set_waypoint("bookinfo", True)
    run = client.start_load("productpage:9080/productpage", qps=30, duration="90s")
    app = app_on(tui_lab)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for_text(pilot, "bookinfo  ambient +waypoint")
            await add_fault_from_the_panel(pilot, app, "abort", "ratings", {"status": "503", "percentage": "50"},
                                           ttl="2m")
            await wait_until(pilot, lambda: isinstance(app.screen, Faults), "the form to close")
            await pilot.press("escape")
            assert isinstance(app.screen, MainScreen)
            screen = app.screen

            def reviews_to_ratings() -> list[float]:
                edges = [e for e in edges_now(app) if e.source.startswith("reviews-") and e.destination == "ratings-v1"]
                return [screen.history.window(e).error_rate for e in edges
                        if screen.history.window(e).requests >= 40]

            # the aborted requests reach no workload: the graph folds them into reviews-v2/v3 → ratings-v1
            await wait_until(pilot, lambda: len(reviews_to_ratings()) == 2 and all(
                0.3 <= r <= 0.7 for r in reviews_to_ratings()), "about 50% errors on reviews → ratings", timeout=40)
            text = screen_text(app)
            rows = [ln for ln in text.splitlines() if "─▶ ratings-v1" in ln]
            assert rows and all("503" in ln and "%" in ln for ln in rows), text
            print(f"\nreviews → ratings error rate over the last 10 s: {reviews_to_ratings()}")
    finally:
        client.stop_load(run["id"])
        client.remove_fault(everything=True)
        client.set_waypoint("bookinfo", False)


async def test_load_run_starts_from_the_dialog_and_stops_with_x(tui_lab: str, client: LabClient) -> None:
    set_mode(client, "ambient")
    app = app_on(tui_lab)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_text(pilot, "bookinfo  ambient")
        before = len(client.loads()["runs"])
        await pilot.press("l")
        await settle(pilot)
        assert app.screen.query_one("#target", Input).value == "productpage:9080/productpage"
        app.screen.query_one("#duration", Input).value = "60s"
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), "the load dialog to close")
        await wait_for_text(pilot, "running", "productpage:9080/pro")
        runs = client.loads()["runs"]
        assert len(runs) == before + 1
        run = max(runs, key=lambda r: r["startedAt"])
        assert run["state"] == "running" and run["args"][run["args"].index("--duration") + 1] == "60s", run
        await wait_until(pilot, lambda: any(e.connections_per_s > 0 for e in edges_now(app)),
                         "the graph to show connections per second", timeout=20)
        await pilot.press("x")
        await wait_until(pilot, lambda: all(r["state"] != "running" for r in client.loads()["runs"]),
                         "the run to stop")
        await wait_for_text(pilot, "stopped", timeout=20)


async def test_apply_file_shows_problems_inline_then_applies(tui_lab: str, client: LabClient, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a path relative to where the TUI runs, short enough to type
    bad, good = tmp_path / "bad.yaml", tmp_path / "strict-mtls.yaml"
    bad.write_text(STRICT.format(mode="STRICTX"))
    good.write_text(STRICT.format(mode="STRICT"))
    app = app_on(tui_lab)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_text(pilot, "mesh config")
        await pilot.press("a")
        await settle(pilot)
        await pilot.press(*bad.name, "enter")  # typed, as a person would
        await wait_for_text(pilot, "spec.mtls.mode", "bad.yaml:8")
        path = app.screen.query_one("#path", Input)
        path.value = str(good)
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), "the apply dialog to close")
        await wait_for_text(pilot, "PeerAuthentication", "bookinfo/default")
    assert client.get_config()["items"][0]["spec"]["mtls"]["mode"] == "STRICT"


async def test_editor_applies_and_jumps_to_the_first_problem(tui_lab: str, client: LabClient) -> None:
    app = app_on(tui_lab)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_text(pilot, "PeerAuthentication", "bookinfo/default")
        await pilot.press("e")
        await settle(pilot)
        editor = app.screen
        assert isinstance(editor, ConfigEditor)
        area = editor.query_one(TextArea)
        assert "mode: STRICT" in area.text  # the applied config, ready to edit
        area.text = area.text.replace("mode: STRICT", "mode: PERMISIVE")
        await pilot.press("ctrl+s")
        text = await wait_for_text(pilot, "unknown mTLS mode 'PERMISIVE'", "editor.yaml:")
        line = int(text.split("editor.yaml:")[1].split(")")[0])
        assert area.cursor_location[0] == line - 1
        area.text = area.text.replace("PERMISIVE", "PERMISSIVE")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), "the editor to close")
    assert client.get_config()["items"][0]["spec"]["mtls"]["mode"] == "PERMISSIVE"


async def test_delete_config_from_the_list(tui_lab: str, client: LabClient) -> None:
    assert client.get_config()["items"]
    app = app_on(tui_lab)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_text(pilot, "PeerAuthentication", "bookinfo/default")
        await pilot.press("d")
        await wait_for_text(pilot, "delete mesh config", "PeerAuthentication bookinfo/default")
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), "the delete dialog to close")
        await wait_for_text(pilot, "no mesh config applied")
    assert client.get_config()["items"] == []


async def test_workload_identity_and_certificate(tui_lab: str, client: LabClient) -> None:
    set_mode(client, "ambient")
    app = app_on(tui_lab)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_text(pilot, "productpage-v1")
        await pilot.press("down", "down")  # nodes → node-1 → productpage-v1
        await pilot.press("c")
        text = await wait_for_text(pilot, "URI SAN", "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage",
                                   "serial", "rotation", "(at half-life)")
        # the certificate its node's ztunnel holds (an earlier test's sidecar may still hold another one)
        serials = {c["serial"] for c in client.certs()["certificates"] if c["identity"].endswith("productpage")}
        assert any(serial in text for serial in serials), (serials, text)
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


async def test_agent_detail_shows_proxy_status_and_config_versions(tui_lab: str) -> None:
    app = app_on(tui_lab)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_text(pilot, "node-1")
        await pilot.press("p")
        await wait_for_text(pilot, "proxy-status of ztunnel/node-1", "SYNCED", "config version", "ACKed v")


async def cursor_to(pilot, app: MeshLabApp, ref: MeshRef) -> None:
    """Move the mesh tree's cursor down to `ref`, as a person would with the arrow key."""
    await wait_until(pilot, lambda: isinstance(app.screen, MainScreen) and app.screen.mesh is not None, "a poll")
    for _ in range(60):
        if app.screen.selected == ref:
            return
        await pilot.press("down")
        await settle(pilot)
    raise AssertionError(f"the cursor never reached {ref}:\n{screen_text(app)}")


async def test_agent_view_shows_the_config_dump_of_a_waypoint_its_ztunnel_and_a_sidecar(tui_lab: str,
                                                                                       client: LabClient) -> None:
    set_mode(client, "ambient")
    client.set_waypoint("bookinfo", True)
    (waypoint,) = client.waypoints()["waypoints"]
    node = waypoint["node"]
    try:
        app = app_on(tui_lab)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for_text(pilot, "waypoint-bookinfo-waypoint")
            await cursor_to(pilot, app, MeshRef("agent", "waypoint-bookinfo-waypoint", node=node))
            await pilot.press("p")
            await wait_for_text(pilot, "proxy-status of waypoint:bookinfo/waypoint", "SYNCED",
                                "namespace bookinfo as", "spiffe://cluster.local/ns/bookinfo/sa/waypoint",
                                f"HBONE {waypoint['address']}:15008", "waypoint-bookinfo-waypoint log")
            await pilot.press("d")  # the whole dump, as the waypoint's admin port answers it
            await wait_for_text(pilot, "config dump of waypoint:bookinfo/waypoint", '"kind": "waypoint"')
            await pilot.press("a")  # the node's next agent: its ztunnel
            text = await wait_for_text(pilot, f"proxy-status of ztunnel/{node}", '"snapshot": {', "serves")
            version = client.config_dump("ztunnel", node)["dump"]["version"]
            assert re.search(rf"applied\s+v{version}\b", text), text
            await pilot.press("escape")
            assert isinstance(app.screen, MainScreen)
        client.set_waypoint("bookinfo", False)
        set_mode(client, "sidecar")
        app = app_on(tui_lab)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for_text(pilot, "sidecar-productpage-v1")
            workload = client.nodes()["workloads"]["productpage-v1"]
            await cursor_to(pilot, app, MeshRef("workload", "productpage-v1", "bookinfo", workload["node"]))
            await pilot.press("p")  # on a workload with a sidecar: its sidecar
            await wait_for_text(pilot, "proxy-status of sidecar:productpage-v1", "SYNCED", "workload productpage-v1",
                                f"HBONE {workload['address']}:15008", timeout=20)  # it takes the workload's HBONE
    finally:
        client.set_waypoint("bookinfo", False)
        set_mode(client, "ambient")


async def test_access_logs_are_live_and_filterable(tui_lab: str, client: LabClient) -> None:
    client.start_load("productpage:9080/productpage", qps=20, duration="3s")
    app = app_on(tui_lab)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_text(pilot, "node-1")
        await pilot.press("g")
        screen = app.screen
        assert isinstance(screen, AccessLogs)
        await wait_until(pilot, lambda: len(screen.entries) > 10, "access-log entries", timeout=20)
        screen.query_one("#filter", Input).value = "ratings inb"
        await wait_until(pilot, lambda: bool(screen._shown) and all(
            e.destination == "ratings-v1" and e.direction == "inbound" for e in screen._shown), "the filter")
        await wait_for_text(pilot, f"of {len(screen.entries)} connections")


async def test_resource_cost_totals_by_role(tui_lab: str) -> None:
    app = app_on(tui_lab)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_text(pilot, "node-1")
        await pilot.press("u")
        text = await wait_for_text(pilot, "totals by role", "ztunnel", "workload", "MiB")
        assert "%" in await wait_for_text(pilot, "%", timeout=10) or text  # CPU % once two looks were taken


async def test_events_faults_help_and_palette(tui_lab: str) -> None:
    app = app_on(tui_lab)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_text(pilot, "node-1")
        await pilot.press("v")
        await wait_for_text(pilot, "control plane started", "mode")
        await pilot.press("escape")
        await pilot.press("f")
        await wait_for_text(pilot, "live faults", "reset_peer", "partition", "expire_cert")
        await pilot.press("escape")
        for key in ("f1", "question_mark"):
            await pilot.press(key)
            assert isinstance(app.screen, HelpScreen)
            text = screen_text(app)
            assert all(a.title in text for a in MAIN_ACTIONS)
            await pilot.press("escape")
            assert isinstance(app.screen, MainScreen)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {a.title for a in MAIN_ACTIONS} <= titles
        await pilot.press("ctrl+p")
        await settle(pilot)
        await pilot.press(*"switch")
        await wait_for_text(pilot, "Switch namespace mode")
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, ModeDialog), "the palette to open the mode dialog")


async def test_lab_that_does_not_exist_is_a_banner_not_a_traceback() -> None:
    app = MeshLabApp("tui-no-such-lab", poll_seconds=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_text(pilot, "lab unavailable: no lab named 'tui-no-such-lab'", "retrying")
        await pilot.press("m")  # actions explain instead of failing
        await pilot.press("c")
        await settle(pilot)
        assert isinstance(app.screen, MainScreen)
    assert app.return_code in (None, 0)
