"""The mesh resolver client and the small HTTP client built on it."""

from __future__ import annotations

import time

import pytest

from agents.common.http import FetchError, fetch, json_reply, parse_duration, request
from agents.common.resolve import ResolveError, env_identity, resolve
from tests.agents import Recorder, free_port, resolver_running, running


def test_resolve_answers_address_and_port():
    with resolver_running() as (fake, address):
        fake.route("details", ("127.0.0.9", 19080))
        assert resolve("details", 9080, resolver=address) == ("127.0.0.9", 19080)
        assert fake.queries == [{"service": "details", "port": "9080"}]


def test_resolve_sends_namespace_from_argument_or_env(monkeypatch):
    with resolver_running() as (fake, address):
        fake.route("details", ("127.0.0.9", 1))
        resolve("details", 9080, resolver=address, namespace="bookinfo")
        monkeypatch.setenv("MESH_NAMESPACE", "shop")
        resolve("details", 9080, resolver=address)
        assert [q.get("namespace") for q in fake.queries] == ["bookinfo", "shop"]


def test_resolve_uses_mesh_resolver_env(monkeypatch):
    with resolver_running() as (fake, address):
        fake.route("ratings", ("127.0.0.7", 9080))
        monkeypatch.setenv("MESH_RESOLVER", address)
        assert resolve("ratings", 9080) == ("127.0.0.7", 9080)


@pytest.mark.parametrize(
    "status, message",
    [(404, "unknown service 'nope'"), (503, "no ready endpoint for nope:9080")],
)
def test_resolve_errors_carry_the_resolver_message(status, message):
    with resolver_running() as (fake, address):
        if status == 503:
            fake.fail("nope")
        with pytest.raises(ResolveError, match=message):
            resolve("nope", 9080, resolver=address)


def test_resolve_reports_an_unreachable_resolver():
    with pytest.raises(ResolveError, match="unreachable"):
        resolve("details", 9080, resolver=f"127.0.0.1:{free_port()}")


def test_resolve_without_resolver_is_an_error(monkeypatch):
    monkeypatch.delenv("MESH_RESOLVER", raising=False)
    with pytest.raises(ResolveError, match="MESH_RESOLVER"):
        resolve("details", 9080)
    with pytest.raises(ResolveError, match="host:port"):
        resolve("details", 9080, resolver="nocolon")


def test_ip_literals_need_no_resolver(monkeypatch):
    monkeypatch.delenv("MESH_RESOLVER", raising=False)
    assert resolve("127.0.0.5", 80) == ("127.0.0.5", 80)


def test_env_identity_reads_the_workload_contract():
    env = {"MESH_NAMESPACE": "bookinfo", "MESH_SERVICE": "reviews", "MESH_APP": "reviews",
           "MESH_VERSION": "v2", "MESH_SERVICE_ACCOUNT": "bookinfo-reviews", "MESHLAB_WORKLOAD": "reviews-v2"}
    identity = env_identity(env)
    assert identity["namespace"] == "bookinfo" and identity["sa"] == "bookinfo-reviews"
    assert identity["version"] == "v2" and identity["workload"] == "reviews-v2"


@pytest.mark.parametrize(
    "text, seconds",
    [("150ms", 0.15), ("2s", 2.0), ("1.5s", 1.5), ("500us", 0.0005), ("1m", 60.0), ("0.3", 0.3), ("0", 0.0)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1x", "-1s", "ms", "1.2.3s"])
def test_parse_duration_rejects_garbage(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_fetch_resolves_then_sends_host_and_headers():
    app = Recorder(lambda req: json_reply({"ok": True}))
    with resolver_running() as (fake, address), running(app) as server:
        fake.route("details", server)
        status, headers, body = fetch("details", 9080, "/details/0", {"end-user": "jason"}, 2.0, resolver=address)
    assert status == 200 and headers["content-type"] == "application/json" and b'"ok": true' in body
    seen = app.requests[0]
    assert seen.path == "/details/0" and seen.header("host") == "details:9080" and seen.header("end-user") == "jason"


def test_fetch_failures_have_reasons():
    with resolver_running() as (fake, address):
        fake.fail("details")
        with pytest.raises(FetchError, match="no ready endpoint") as info:
            fetch("details", 9080, "/", resolver=address)
        assert info.value.reason == "resolve"
        fake.route("details", ("127.0.0.1", free_port()))
        with pytest.raises(FetchError, match="refused") as info:
            fetch("details", 9080, "/", resolver=address)
        assert info.value.reason == "connect"


def test_request_times_out_within_the_deadline():
    def slow(req):
        time.sleep(1.0)
        return json_reply({})

    with running(slow) as server:
        started = time.monotonic()
        with pytest.raises(FetchError) as info:
            request("127.0.0.1", server.port, "/", timeout=0.2)
        assert info.value.reason == "timeout"
        assert time.monotonic() - started < 0.9


def test_request_posts_a_body():
    with running(lambda req: json_reply({"got": req.body.decode(), "method": req.method})) as server:
        status, _, body = request("127.0.0.1", server.port, "/x", method="POST", body=b"hello")
    assert status == 200 and b'"got": "hello"' in body and b'"POST"' in body
