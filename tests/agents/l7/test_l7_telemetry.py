"""L7 telemetry: Istio's request metrics (parsed back with prometheus_client) and the access log."""

from __future__ import annotations

import io
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.l7.telemetry import DURATION_BUCKETS, LABELS, SIZE_BUCKETS, L7Telemetry, RequestRecord, peer_of_endpoint
from agents.ztunnel.telemetry import LABELS as TCP_LABELS
from agents.ztunnel.telemetry import Peer
from tests.agents.l7.harness import CLIENT_PRINCIPAL, PORT, SERVICE, Bench, Config, Upstream


def families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def record(**fields) -> RequestRecord:
    defaults = dict(method="GET", path="/p", authority="reviews:9080", source=Peer("a-v1", "ns", "a", "v1", "a", "v1"),
                    source_principal="spiffe://cluster.local/ns/ns/sa/a", destination=Peer("b-v1", "ns", "b", "v1",
                                                                                              "b", "v1"),
                    destination_principal="spiffe://cluster.local/ns/ns/sa/b", service_host="b.ns.svc.cluster.local",
                    service_name="b", service_namespace="ns", code=200, security="mutual_tls", request_id="rid")
    defaults.update(fields)
    return RequestRecord("waypoint", **defaults)


def test_label_set_is_istios_plus_response_code():
    assert LABELS[:len(TCP_LABELS)] == TCP_LABELS
    assert LABELS[-2:] == ("response_code", "grpc_response_status")
    assert DURATION_BUCKETS[:3] == (0.5, 1, 5) and DURATION_BUCKETS[-1] == 3600000
    assert SIZE_BUCKETS == (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000)


def test_exposition_parses_and_counts():
    out = io.StringIO()
    t = L7Telemetry(out)
    t.record(record(request_bytes=0, response_bytes=5))
    t.record(record(request_bytes=50, response_bytes=5000))
    t.record(record(code=503, flags=["UO"], destination=Peer(), destination_principal=None))
    samples = families(t.render())
    assert set(samples) == {"istio_requests", "istio_request_duration_milliseconds", "istio_request_bytes",
                            "istio_response_bytes"}
    totals = {(s.labels["response_code"], s.labels["response_flags"]): s.value for s in samples["istio_requests"]}
    assert totals == {("200", "-"): 2.0, ("503", "UO"): 1.0}
    ok = next(s for s in samples["istio_requests"] if s.labels["response_code"] == "200")
    assert ok.labels["reporter"] == "waypoint" and ok.labels["request_protocol"] == "http"
    assert ok.labels["source_principal"] == "spiffe://cluster.local/ns/ns/sa/a"
    assert ok.labels["destination_service"] == "b.ns.svc.cluster.local"
    assert ok.labels["destination_canonical_revision"] == "v1" and ok.labels["grpc_response_status"] == ""
    uo = next(s for s in samples["istio_requests"] if s.labels["response_code"] == "503")
    assert uo.labels["destination_workload"] == "unknown"
    sizes = {(s.name, s.labels.get("le")): s.value for s in samples["istio_response_bytes"]
             if s.labels["response_code"] == "200"}
    assert sizes[("istio_response_bytes_bucket", "1")] == 0
    assert sizes[("istio_response_bytes_bucket", "10")] == 1
    assert sizes[("istio_response_bytes_bucket", "10000")] == 2
    assert sizes[("istio_response_bytes_bucket", "+Inf")] == 2
    assert sizes[("istio_response_bytes_count", None)] == 2 and sizes[("istio_response_bytes_sum", None)] == 5005
    durations = [s for s in samples["istio_request_duration_milliseconds"] if s.name.endswith("_bucket")]
    assert len(durations) == 2 * (len(DURATION_BUCKETS) + 1)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3 and list(t.logs) == lines


def test_access_log_fields():
    out = io.StringIO()
    t = L7Telemetry(out)
    t.record(record(upstream_host="127.0.0.5:9080", upstream_cluster="outbound|9080|v1|b.ns.svc.cluster.local",
                    route_name="jason", request_bytes=3, response_bytes=7, attempts=2, flags=["URX"]))
    entry = json.loads(out.getvalue())
    assert entry["method"] == "GET" and entry["path"] == "/p" and entry["authority"] == "reviews:9080"
    assert entry["protocol"] == "HTTP/1.1" and entry["response_code"] == 200 and entry["response_flags"] == "URX"
    assert entry["upstream_host"] == "127.0.0.5:9080" and entry["route_name"] == "jason"
    assert entry["upstream_cluster"] == "outbound|9080|v1|b.ns.svc.cluster.local"
    assert (entry["bytes_received"], entry["bytes_sent"], entry["attempts"]) == (3, 7, 2)
    assert entry["request_id"] == "rid" and entry["reporter"] == "waypoint"
    assert entry["source"]["workload"] == "a-v1" and entry["destination"]["principal"].endswith("/sa/b")
    assert entry["duration_ms"] >= 0 and entry["start_time"].endswith("+00:00")


def test_the_log_ring_survives_a_closed_stream():
    out = io.StringIO()
    out.close()
    t = L7Telemetry(out)
    t.record(record())
    assert len(t.logs) == 1


def test_endpoint_peer():
    assert peer_of_endpoint({"workload": "w", "namespace": "n"}) == Peer("w", "n", "unknown", "unknown", "w", "latest")
    assert peer_of_endpoint(None) == Peer()


@pytest.fixture
async def upstream():
    up = await Upstream("reviews-v2", "127.77.3.1").start()
    yield up
    await up.stop()


async def test_proxied_requests_are_labelled_from_both_ends(upstream):
    b = await Bench(Config(eps={(SERVICE, PORT): [upstream.endpoint(version="v2")]})).start()
    try:
        await b.session([("GET", "/a?size=20", {}, None), ("POST", "/b?status=404", {}, b"body!")])
    finally:
        await b.stop()
    samples = families(b.telemetry.render())
    series = {s.labels["response_code"]: s for s in samples["istio_requests"]}
    assert set(series) == {"200", "404"}
    labels = series["200"].labels
    assert labels["source_workload"] == "productpage-v1" and labels["source_principal"] == CLIENT_PRINCIPAL
    assert labels["destination_workload"] == "reviews-v2" and labels["destination_version"] == "v2"
    assert labels["destination_principal"] == "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews"
    assert labels["destination_service"] == "reviews.bookinfo.svc.cluster.local"
    assert labels["destination_service_name"] == "reviews" and labels["destination_service_namespace"] == "bookinfo"
    assert labels["connection_security_policy"] == "mutual_tls" and labels["reporter"] == "waypoint"
    request_sums = {s.labels["response_code"]: s.value for s in samples["istio_request_bytes"]
                    if s.name == "istio_request_bytes_sum"}
    assert request_sums == {"200": 0, "404": 5}
    response_sums = {s.labels["response_code"]: s.value for s in samples["istio_response_bytes"]
                     if s.name == "istio_response_bytes_sum"}
    assert response_sums == {"200": 20, "404": 2}
    log = b.logs()
    assert [e["response_code"] for e in log] == [200, 404]
    assert log[0]["upstream_host"] == f"127.77.3.1:{upstream.port}"
    assert log[0]["destination"]["workload"] == "reviews-v2" and log[0]["source"]["address"].startswith("127.0.0.1:")
