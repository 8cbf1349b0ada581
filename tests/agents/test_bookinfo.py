"""Bookinfo wired through a fake mesh resolver: versions, header forwarding, failures, timeouts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agents.common.http import AppServer, json_reply, request
from agents.demo.bookinfo import BookinfoConfig, Dependency, make_app, render_page
from tests.agents import FakeResolver, Recorder, free_port, resolver_running, running

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Mesh:
    """All Bookinfo apps on free ports, wired through one fake resolver."""

    resolver: FakeResolver
    address: str
    servers: dict[str, AppServer] = field(default_factory=dict)
    ratings: Recorder | None = None

    def config(self, version: str = "v1", **settings) -> BookinfoConfig:
        return BookinfoConfig(version=version, resolver=self.address, **settings)

    def use_reviews(self, *versions: str) -> None:
        self.resolver.route("reviews", *(self.servers[f"reviews-{v}"] for v in versions))

    def get(self, name: str, path: str, headers: dict | None = None, timeout: float = 10.0):
        return request("127.0.0.1", self.servers[name].port, path, headers, timeout)

    def page(self, path: str = "/productpage", headers: dict | None = None) -> str:
        status, _, body = self.get("productpage", path, headers)
        assert status == 200
        return body.decode()


@pytest.fixture
def mesh():
    with resolver_running() as (fake, address), ExitStack() as stack:
        m = Mesh(fake, address)
        m.ratings = Recorder(make_app("ratings", m.config()))
        apps = {
            "details": make_app("details", m.config()),
            "ratings": m.ratings,
            "productpage": make_app("productpage", m.config(reviews_timeout=2.0, details_timeout=2.0)),
        }
        for version in ("v1", "v2", "v3"):
            apps[f"reviews-{version}"] = make_app(
                "reviews", m.config(version, workload=f"reviews-{version}", ratings_timeout=2.0))
        for name, app in apps.items():
            m.servers[name] = stack.enter_context(running(app))
        for name in ("details", "ratings", "productpage"):
            fake.route(name, m.servers[name])
        m.use_reviews("v1")
        yield m


def test_details_ratings_and_health(mesh):
    status, _, body = mesh.get("details", "/details/0")
    details = json.loads(body)
    assert status == 200 and details["author"] == "William Shakespeare" and details["ISBN-10"] == "1234567890"
    status, _, body = mesh.get("ratings", "/ratings/0")
    assert json.loads(body) == {"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}
    for name in mesh.servers:
        assert mesh.get(name, "/health")[0] == 200
    assert mesh.get("details", "/details/abc")[0] == 400
    assert mesh.get("details", "/nothing")[0] == 404


@pytest.mark.parametrize("version, color", [("v1", None), ("v2", "black"), ("v3", "red")])
def test_reviews_versions(mesh, version, color):
    status, _, body = mesh.get(f"reviews-{version}", "/reviews/0")
    answer = json.loads(body)
    assert status == 200 and answer["version"] == version and answer["podname"] == f"reviews-{version}"
    assert [r["reviewer"] for r in answer["reviews"]] == ["Reviewer1", "Reviewer2"]
    if color is None:
        assert "ratings" not in answer and all("rating" not in r for r in answer["reviews"])
        assert mesh.ratings.requests == []
    else:
        assert [r["rating"] for r in answer["reviews"]] == [{"stars": 5, "color": color}, {"stars": 4, "color": color}]


def test_reviews_without_ratings_still_answers(mesh):
    mesh.resolver.fail("ratings")
    status, _, body = mesh.get("reviews-v2", "/reviews/0")
    answer = json.loads(body)
    assert status == 200
    assert answer["ratings"] == {"error": "Ratings service is currently unavailable"}
    assert answer["reviews"][0]["rating"] == {"error": "Ratings service is currently unavailable"}


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_productpage_says_which_reviews_answered(mesh, version):
    mesh.use_reviews(version)
    page = mesh.page()
    assert f'<span id="reviews-version">{version}</span>' in page and f"reviews-{version}" in page
    assert "Book Details" in page and "Book Reviews" in page and "William Shakespeare" in page
    assert "An extremely entertaining play" in page
    assert ("★" in page) == (version != "v1")
    if version == "v3":
        assert "color: red" in page
    if version == "v2":
        assert "color: black" in page
    assert mesh.page("/") == page


def test_headers_reach_ratings_through_productpage_and_reviews(mesh):
    mesh.use_reviews("v2")
    headers = {"x-request-id": "req-42", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    page = mesh.page("/productpage?u=jason", headers)
    assert "jason" in page
    seen = mesh.ratings.requests[-1]
    assert seen.header("end-user") == "jason"
    assert seen.header("x-request-id") == "req-42"
    assert seen.header("traceparent") == headers["traceparent"]


@pytest.mark.parametrize(
    "headers", [{"cookie": "session=1; u=jason"}, {"end-user": "jason"}],
)
def test_user_from_cookie_or_end_user_header(mesh, headers):
    mesh.use_reviews("v3")
    mesh.page("/productpage", headers)
    assert mesh.ratings.requests[-1].header("end-user") == "jason"


def test_login_query_sets_a_cookie(mesh):
    status, response_headers, _ = mesh.get("productpage", "/productpage?u=jason")
    assert status == 200 and response_headers["set-cookie"].startswith("u=jason")


def test_productpage_generates_a_request_id(mesh):
    mesh.use_reviews("v2")
    mesh.page()
    assert mesh.ratings.requests[-1].header("x-request-id")


def test_details_down_shows_the_details_error(mesh):
    mesh.resolver.route("details", ("127.0.0.1", free_port()))
    page = mesh.page()
    assert "Sorry, product details are currently unavailable for this book." in page
    assert 'id="reviews-version"' in page


def test_reviews_down_shows_the_reviews_error(mesh):
    mesh.resolver.fail("reviews")
    page = mesh.page()
    assert "Sorry, product reviews are currently unavailable for this book." in page
    assert "William Shakespeare" in page and 'id="reviews-version"' not in page


def test_ratings_down_is_visible_on_the_page(mesh):
    mesh.use_reviews("v2")
    mesh.resolver.fail("ratings")
    page = mesh.page()
    assert "Ratings service is currently unavailable" in page and "reviews-v2" in page


def test_reviews_timeout_gives_up_after_one_retry(mesh):
    def slow_reviews(req):
        time.sleep(1.0)
        return json_reply({"version": "slow", "reviews": []})

    slow = Recorder(slow_reviews)
    productpage = make_app("productpage", mesh.config(reviews_timeout=0.3, details_timeout=2.0))
    with running(slow) as slow_server, running(productpage) as page_server:
        mesh.resolver.route("reviews", slow_server)
        started = time.monotonic()
        status, _, body = request("127.0.0.1", page_server.port, "/productpage", timeout=10)
        elapsed = time.monotonic() - started
    assert status == 200 and b"Sorry, product reviews are currently unavailable" in body
    assert len(slow.requests) == 2
    assert 0.5 < elapsed < 1.8


def test_api_products(mesh):
    mesh.use_reviews("v3")
    status, _, body = mesh.get("productpage", "/api/v1/products/0")
    product = json.loads(body)
    assert status == 200 and product["details"]["pages"] == 200 and product["reviews"]["version"] == "v3"
    status, _, body = mesh.get("productpage", "/api/v1/products")
    assert status == 200 and json.loads(body)[0]["title"] == "The Comedy of Errors"
    assert mesh.get("productpage", "/api/v1/products/x")[0] == 400


def test_render_page_escapes_untrusted_text():
    reviews = Dependency({"version": "<b>v9</b>", "reviews": [{"reviewer": "<script>", "text": "x"}]})
    page = render_page("<evil>", Dependency(None, "boom"), reviews)
    assert "<script>" not in page and "<evil>" not in page and "&lt;b&gt;v9" in page


def test_timeouts_from_env():
    config = BookinfoConfig.from_env("productpage", {"MESH_REVIEWS_TIMEOUT": "0.3", "MESH_DETAILS_TIMEOUT": "500ms",
                                                     "MESH_VERSION": "v2", "MESHLAB_WORKLOAD": "pp-1"})
    assert (config.reviews_timeout, config.details_timeout, config.ratings_timeout) == (0.3, 0.5, 10.0)
    assert config.version == "v2" and config.workload == "pp-1"
    defaults = BookinfoConfig.from_env("reviews", {})
    assert (defaults.reviews_timeout, defaults.details_timeout, defaults.version) == (3.0, 3.0, "v1")
    with pytest.raises(ValueError, match="MESH_REVIEWS_TIMEOUT"):
        BookinfoConfig.from_env("productpage", {"MESH_REVIEWS_TIMEOUT": "soon"})


# ---------------------------------------------------------------- as a process


def demo_env(port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH")}
    env.update(MESH_BIND_ADDR="127.0.0.1", MESH_PORT=str(port), PYTHONPATH=str(ROOT), **extra)
    return env


def wait_until_listening(port: int, process: subprocess.Popen, deadline: float = 10.0) -> None:
    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        assert process.poll() is None, process.stderr.read()
        try:
            request("127.0.0.1", port, "/health", timeout=0.5)
            return
        except Exception:
            time.sleep(0.05)
    raise AssertionError("demo did not start")


def test_demo_process_serves_logs_and_stops_on_sigterm():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "agents", "demo", "reviews"], cwd=ROOT, text=True,
        env=demo_env(port, MESH_VERSION="v1", MESHLAB_WORKLOAD="reviews-v1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        wait_until_listening(port, process)
        status, _, body = request("127.0.0.1", port, "/reviews/0", timeout=5)
        assert status == 200 and json.loads(body)["podname"] == "reviews-v1"
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert time.monotonic() - started < 2.0
        out = process.stdout.read()
        assert "GET /reviews/0 200" in out and "ms" in out
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sleep_demo_stops_on_sigterm():
    process = subprocess.Popen([sys.executable, "-m", "agents", "demo", "sleep"], cwd=ROOT, env=demo_env(0),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().startswith("sleep")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("argv", [["nope"], [], ["echo", "--port", "x"]])
def test_demo_bad_arguments_exit_2(argv):
    from agents.demo import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_demo_reports_a_busy_port(capsys):
    from agents.demo import main

    with running(lambda req: json_reply({})) as busy:
        assert main(["details", "--bind", "127.0.0.1", "--port", str(busy.port)]) == 1
    assert "cannot listen" in capsys.readouterr().err
