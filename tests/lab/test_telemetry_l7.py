"""Folding L7 series into edges: reporter preference, error rate, response codes, percentiles from bucket deltas."""

from __future__ import annotations

import io
import time

import pytest

from agents.l7.telemetry import L7Telemetry, RequestRecord
from agents.ztunnel.telemetry import Peer
from lab.controlplane import telemetry
from lab.controlplane.telemetry import TrafficView, fold, is_error, quantile

PRODUCTPAGE = Peer("productpage-v1", "bookinfo", "productpage", "v1", "productpage", "v1")
REVIEWS = Peer("reviews-v2", "bookinfo", "reviews", "v2", "reviews", "v2")
SERVICE = "reviews.bookinfo.svc.cluster.local"
KEY = ("productpage-v1", "reviews-v2", SERVICE)


def requests(t: L7Telemetry, reporter: str, spec: list[tuple[int, str, float, int]]) -> None:
    """Record requests given as (code, flags, duration ms, how many)."""
    for code, flags, ms, count in spec:
        for _ in range(count):
            rec = RequestRecord(reporter, source=PRODUCTPAGE, destination=REVIEWS, service_host=SERVICE,
                                service_name="reviews", service_namespace="bookinfo", code=code,
                                flags=[f for f in flags.split(",") if f], security="mutual_tls")
            rec.started = time.perf_counter() - ms / 1000.0  # it began `ms` ago
            t.record(rec)


def tcp_text(reporter: str, opened: int) -> str:
    labels = (f'reporter="{reporter}",source_workload="productpage-v1",destination_workload="reviews-v2",'
              f'destination_service="{SERVICE}",connection_security_policy="mutual_tls"')
    return ("# TYPE istio_tcp_connections_opened_total counter\n"
            f"istio_tcp_connections_opened_total{{{labels}}} {opened}\n"
            "# TYPE istio_tcp_sent_bytes_total counter\n"
            f"istio_tcp_sent_bytes_total{{{labels}}} {opened * 100}\n")


def test_errors_are_5xx_no_response_and_failure_flags():
    assert is_error("503", "-") and is_error("0", "DC") and is_error("500", "")
    assert is_error("404", "NR") and is_error("200", "URX")  # a flag names a failure whatever the code
    assert not is_error("404", "-") and not is_error("403", "RBAC") and not is_error("400", "DPE")
    assert not is_error("200", "DI") and is_error("503", "DI,FI")


def test_waypoint_l7_and_ztunnel_tcp_fold_into_one_edge():
    waypoint = L7Telemetry(io.StringIO(), log=False)
    requests(waypoint, "waypoint", [(200, "", 3.0, 90), (503, "UO", 0.2, 5), (404, "NR", 0.2, 5)])
    source_sidecar = L7Telemetry(io.StringIO(), log=False)  # a source report the waypoint's beats
    requests(source_sidecar, "source", [(200, "", 1.0, 7)])
    edges = fold([waypoint.render(), source_sidecar.render(), tcp_text("destination", 4), tcp_text("source", 9)])
    edge = edges[KEY].to_json({})
    assert edge["reporter"] == "waypoint" and edge["security"] == "mutual_tls"
    assert edge["connectionsOpened"] == 4 and edge["bytesSent"] == 400  # TCP from the destination ztunnel
    assert edge["requests"] == 100 and edge["codes"] == {"200": 90, "503": 5, "404": 5}
    assert edge["errorRate"] == pytest.approx(0.10)
    assert 1.0 < edge["p50"] <= 5.0 and edge["p99"] <= 5.0


def test_destination_l7_report_wins_over_the_waypoint():
    waypoint, destination = L7Telemetry(io.StringIO(), log=False), L7Telemetry(io.StringIO(), log=False)
    requests(waypoint, "waypoint", [(200, "", 1.0, 3)])
    requests(destination, "destination", [(500, "", 1.0, 2)])
    edge = fold([waypoint.render(), destination.render()])[KEY].to_json({})
    assert edge["reporter"] == "destination" and edge["codes"] == {"500": 2} and edge["errorRate"] == 1.0


def test_an_edge_with_tcp_only_has_no_latency():
    edge = fold([tcp_text("source", 2)])[KEY].to_json({})
    assert edge["reporter"] == "source" and edge["requests"] == 0 and edge["p50"] is None


def test_quantile_interpolates_within_a_bucket():
    assert quantile({1.0: 0, 5.0: 100, float("inf"): 100}, 0.5) == pytest.approx(3.0)
    assert quantile({}, 0.5) is None


async def test_rates_error_rate_and_percentiles_cover_the_last_interval(monkeypatch):
    waypoint = L7Telemetry(io.StringIO(), log=False)
    monkeypatch.setattr(telemetry, "scrape", lambda address, routes=None: waypoint.render())
    view = TrafficView()
    requests(waypoint, "waypoint", [(200, "", 2.0, 100)])  # fast and healthy at first
    first = (await view.snapshot(["127.0.0.1"]))["edges"][0]
    assert first["rates"] == {} and first["errorRate"] == 0.0 and first["p99"] <= 5.0
    requests(waypoint, "waypoint", [(200, "", 400.0, 50), (503, "UF,URX", 400.0, 50)])  # slow and failing
    second = (await view.snapshot(["127.0.0.1"]))["edges"][0]
    assert second["rates"]["requestsPerSecond"] > 0 and second["rates"]["errorsPerSecond"] > 0
    assert second["errorRate"] == pytest.approx(0.5)  # this interval only; the totals say 0.25
    assert second["requests"] == 200 and second["errors"] == 50
    assert 250 < second["p50"] <= 500  # the interval's requests only; the totals would give a p50 under 5 ms
    idle = (await view.snapshot(["127.0.0.1"]))["edges"][0]
    assert idle["rates"]["requestsPerSecond"] == 0 and idle["errorRate"] == pytest.approx(0.25)  # totals again


def test_a_proxys_own_answers_count_in_the_edge_they_cut_short() -> None:
    """A 50 % abort at the waypoint: Envoy says destination `unknown`; the edge to the one workload shows 50 %."""
    t = L7Telemetry(io.StringIO())
    requests(t, "waypoint", [(200, "", 5.0, 5)])
    for _ in range(5):
        t.record(RequestRecord("waypoint", source=PRODUCTPAGE, service_host=SERVICE, service_name="reviews",
                               service_namespace="bookinfo", code=500, flags=["FI"], security="mutual_tls"))
    edges = fold([t.render()])
    assert list(edges) == [KEY]
    assert edges[KEY].codes == {"200": 5, "500": 5} and edges[KEY].errors == 5
    # with two destination workloads there is no telling which one an abort cut short: it stays apart
    other = Peer("reviews-v3", "bookinfo", "reviews", "v3", "reviews", "v3")
    t.record(RequestRecord("waypoint", source=PRODUCTPAGE, destination=other, service_host=SERVICE,
                           service_name="reviews", service_namespace="bookinfo", code=200))
    assert ("productpage-v1", "unknown", SERVICE) in fold([t.render()])
