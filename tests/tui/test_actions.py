"""Every action of the TUI against a real local-provider lab, driven with Pilot as a person would, and each
confirmed by what changes on screen (mesh tree, service graph, load runs, mesh config)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import Input, OptionList, TextArea

from lab.client import LabClient
from tests.tui.pilot_helpers import settle, wait_for_text, wait_until
from tests.tui.screen import screen_text
from tui.actions import MAIN_ACTIONS
from tui.app import MeshLabApp
from tui.screens.access_logs import AccessLogs
from tui.screens.config_editor import ConfigEditor
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


async def test_switch_to_sidecar_shows_the_labs_refusal_in_the_dialog(tui_lab: str, client: LabClient) -> None:
    app = app_on(tui_lab)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_text(pilot, "bookinfo  ")
        for _ in range(50):  # `m` acts once the first poll has selected a namespace
            await pilot.press("m")
            await settle(pilot)
            if isinstance(app.screen, ModeDialog):
                break
            await pilot.pause(0.2)
        dialog = app.screen
        assert isinstance(dialog, ModeDialog)
        dialog.query_one(OptionList).highlighted = 2  # sidecar
        await pilot.press("enter")
        await wait_for_text(pilot, "cannot switch to sidecar", "not supported yet")
        assert app.screen is dialog  # the dialog stays, with the reason in it
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


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
        serial = next(c["serial"] for c in client.certs()["certificates"] if c["identity"].endswith("productpage"))
        assert serial in text
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


async def test_agent_detail_shows_proxy_status_and_config_versions(tui_lab: str) -> None:
    app = app_on(tui_lab)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_text(pilot, "node-1")
        await pilot.press("p")
        await wait_for_text(pilot, "proxy-status of ztunnel/node-1", "SYNCED", "config version", "ACKed v")


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
        await wait_for_text(pilot, "not available in this version", "reset_peer", "partition")
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
