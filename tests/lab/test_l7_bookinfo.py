"""Istio's Bookinfo tasks against a lab, in ambient mode with a waypoint and in sidecar mode.

Every task applies the YAML of Istio's docs (topologies/istio/) with `meshlab apply -f` and is
checked by measuring real traffic with the load generator: which reviews version answered
(counted in the response bodies), response codes, latencies, and the L7 proxies' metrics.
The lab is bookinfo plus what the tasks need that Istio's samples also add: one service per
reviews version (bookinfo-versions.yaml, for HTTPRoute backendRefs), an echo service with a
healthy and a failing endpoint (httpbin's role in the circuit-breaking task), and a `sleep`
client inside the namespace.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import meshlab

ROOT = Path(__file__).resolve().parents[2]
ISTIO = ROOT / "topologies" / "istio"
LAB = "bookinfo"
PRODUCTPAGE_SA = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage"
VERSION = r"reviews-v\d"

pytestmark = pytest.mark.slow


def lab_topology(tmp: Path) -> Path:
    """bookinfo.yaml plus reviews-v1/v2/v3 services, an echo pair and a sleep client."""
    doc = yaml.safe_load((ROOT / "topologies" / "bookinfo.yaml").read_text())
    doc["services"] += [{"name": f"reviews-{v}", "namespace": "bookinfo", "ports": [{"port": 9080}],
                         "selector": {"app": "reviews", "version": v}} for v in ("v1", "v2", "v3")]
    doc["services"].append({"name": "echo", "namespace": "bookinfo", "ports": [{"port": 8080}], "workloads": [
        {"name": "echo-v1", "node": "node-2", "serviceAccount": "echo", "run": {"demo": "echo"}},
        {"name": "echo-v2", "node": "node-3", "serviceAccount": "echo", "version": "v2",
         "run": {"demo": "echo", "env": {"MESH_ECHO_DEFAULTS": "status=503"}}}]})
    doc["workloads"] = [{"name": "sleep", "namespace": "bookinfo", "node": "node-1", "serviceAccount": "sleep",
                         "run": {"demo": "sleep"}}]
    path = tmp / "bookinfo.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def bookinfo(tmp_path_factory):
    meshlab("up", str(lab_topology(tmp_path_factory.mktemp("topology"))), timeout=180)
    yield
    meshlab("down", LAB, check=False)


@pytest.fixture(scope="module", params=["waypoint", "sidecar"])
def mode(request, bookinfo):
    """The namespace in ambient mode with a waypoint, then in sidecar mode."""
    if request.param == "waypoint":
        meshlab("mode", "bookinfo", "ambient", "--lab", LAB)
        meshlab("waypoint", "enable", "bookinfo", "--lab", LAB)
    else:
        meshlab("waypoint", "disable", "bookinfo", "--lab", LAB)
        out = meshlab("mode", "bookinfo", "sidecar", "--lab", LAB, timeout=180).stdout
        assert "restarted (sidecar injection)" in out
    return request.param


@pytest.fixture
def applied(mode):
    """apply(*files): `meshlab apply -n bookinfo -f ...`; everything applied is deleted after the test."""
    files: list[Path] = []

    def apply(*names: str) -> None:
        for name in names:  # one `apply` per file, in order, as the task pages do with kubectl
            out = meshlab("apply", "-n", "bookinfo", "-f", str(ISTIO / name), "--lab", LAB).stdout
            assert "config version" in out, out
            files.append(ISTIO / name)

    yield apply
    if files:
        meshlab("delete", "-n", "bookinfo", *[a for p in dict.fromkeys(files) for a in ("-f", str(p))],
                "--ignore-not-found", "--lab", LAB)


def load(target: str, *args: str, source: str | None = None) -> dict:
    extra = ["--from", source] if source else []
    if "-d" not in args:
        extra += ["-d", "120s"]  # bounded by -n; the load generator's default duration is only 5 s
    return json.loads(meshlab("load", target, *args, *extra, "--json", "--lab", LAB, timeout=300).stdout)


def pages(n: int, *args: str) -> dict:
    return load("productpage:9080/productpage", "-n", str(n), "-c", "4", "--count-body", VERSION, *args)


def state() -> dict:
    return json.loads(meshlab("status", LAB, "--json").stdout)


def l7_reporters(mode: str) -> list[str]:
    """Addresses of the proxies that report L7 metrics in this mode."""
    doc = state()
    if mode == "waypoint":
        return [w["address"] for w in doc["waypoints"].values()]
    return [w["sidecarAddress"] for w in doc["workloads"].values() if w["namespace"] == "bookinfo"]


def requests_total(mode: str, **labels: str) -> float:
    total = 0.0
    for address in l7_reporters(mode):
        with urllib.request.urlopen(f"http://{address}:15020/metrics", timeout=5) as r:
            for family in text_string_to_metric_families(r.read().decode()):
                for s in family.samples:
                    if s.name == "istio_requests_total" and all(s.labels.get(k) == v for k, v in labels.items()):
                        total += s.value
    return total


def reporter(mode: str) -> str:
    """The reporter whose view of a client's request counts: the waypoint, or the client's sidecar."""
    return "waypoint" if mode == "waypoint" else "source"


# ---------------------------------------------------------------- request routing


def test_request_routing_all_v1_then_jason_to_v2(applied) -> None:
    applied("destination-rule-all.yaml", "virtual-service-all-v1.yaml")
    result = pages(60)
    assert result["codes"] == {"200": 60} and result["body_matches"] == {"reviews-v1": 60}, result

    applied("virtual-service-reviews-test-v2.yaml")
    jason = pages(30, "-H", "end-user:jason")
    assert jason["body_matches"] == {"reviews-v2": 30}, jason
    others = pages(30)
    assert others["body_matches"] == {"reviews-v1": 30}, others


# ---------------------------------------------------------------- traffic shifting


def test_traffic_shifting_50_50_then_all_v3(applied) -> None:
    applied("destination-rule-all.yaml", "virtual-service-reviews-50-v3.yaml")
    result = load("reviews:9080/reviews/0", "-n", "1000", "-c", "4", "--count-body", r'"version": ?"v\d"',
                  source="productpage-v1")
    assert result["codes"] == {"200": 1000}, result
    counts = {k[-3:-1]: v for k, v in result["body_matches"].items()}
    # 1000 fair draws: sd 15.8, so 500 +- 80 (5 sd) fails a right split once in millions of runs, and a
    # wrong one (all to one side, or 90/10) every time; +-50 (3.2 sd) failed about once in 600 runs
    assert set(counts) == {"v1", "v3"} and 420 <= counts["v1"] <= 580, counts

    applied("virtual-service-reviews-v3.yaml")
    result = pages(40)
    assert result["body_matches"] == {"reviews-v3": 40}, result


def test_traffic_shifting_with_httproute_weights_90_10(applied) -> None:
    applied("httproute-reviews-90-10.yaml")
    result = load("reviews:9080/reviews/0", "-n", "1000", "-c", "4", "--count-body", r'"version": ?"v\d"',
                  source="productpage-v1")
    assert result["codes"] == {"200": 1000}, result
    counts = {k[-3:-1]: v for k, v in result["body_matches"].items()}
    assert set(counts) == {"v1", "v2"} and 850 <= counts["v1"] <= 950, counts


# ---------------------------------------------------------------- fault injection


def test_delay_for_jason_makes_productpage_give_up(applied) -> None:
    applied("destination-rule-all.yaml", "virtual-service-all-v1.yaml", "virtual-service-reviews-test-v2.yaml",
            "virtual-service-ratings-test-delay.yaml")
    jason = load("productpage:9080/productpage", "-n", "1", "-H", "end-user:jason", "--timeout", "20s",
                 "--count-body", "Error fetching product reviews|reviews-v2")
    # productpage's reviews call: 3 s timeout and one retry; the 7 s delay outlasts both.
    assert jason["body_matches"] == {"Error fetching product reviews": 1}, jason
    assert 5.5 <= jason["latency_ms"]["max"] / 1000 < 7.0, jason["latency_ms"]
    others = pages(10)
    assert others["body_matches"] == {"reviews-v1": 10}, others


def test_abort_for_jason_shows_ratings_unavailable(applied, mode) -> None:
    applied("destination-rule-all.yaml", "virtual-service-all-v1.yaml", "virtual-service-reviews-test-v2.yaml",
            "virtual-service-ratings-test-abort.yaml")
    before = requests_total(mode, reporter=reporter(mode), destination_service_name="ratings", response_flags="FI")
    jason = load("productpage:9080/productpage", "-n", "10", "-H", "end-user:jason",
                 "--count-body", "Ratings service is currently unavailable")
    assert jason["codes"] == {"200": 10}
    assert jason["body_matches"] == {"Ratings service is currently unavailable": 10}, jason
    aborted = requests_total(mode, reporter=reporter(mode), destination_service_name="ratings", response_flags="FI")
    assert aborted - before == 10


# ---------------------------------------------------------------- timeouts and retries


def test_timeout_on_reviews_returns_within_it(applied) -> None:
    applied("destination-rule-all.yaml", "virtual-service-reviews-timeout.yaml", "virtual-service-ratings-delay-2s.yaml")
    result = load("productpage:9080/productpage", "-n", "4", "--timeout", "10s",
                  "--count-body", "Sorry, product reviews are currently unavailable")
    assert result["codes"] == {"200": 4}
    assert result["body_matches"] == {"Sorry, product reviews are currently unavailable": 4}, result
    # 0.5 s per try, and productpage tries reviews twice: about 1 s, far from the 2 s delay
    assert result["latency_ms"]["max"] < 1800, result["latency_ms"]


def test_retries_recover_from_a_50_percent_abort(applied, mode) -> None:
    # Without retries (500 is not among Istio's default retriable codes) about half fail ...
    plain = load("echo:8080/?status=500:50", "-n", "200", "-c", "2", source="sleep")
    assert 60 <= plain["codes"].get("500", 0) <= 140, plain["codes"]
    # ... with the VirtualService's retries (5 attempts on 5xx) almost none do.
    applied("virtual-service-echo-retries.yaml")
    retried = load("echo:8080/?status=500:50", "-n", "200", "-c", "2", source="sleep")
    assert retried["codes"].get("500", 0) <= 10, retried["codes"]


# ---------------------------------------------------------------- circuit breaking, outlier detection


def test_circuit_breaker_rejects_overflow_with_503_uo(applied, mode) -> None:
    applied("destination-rule-echo-circuit-breaker.yaml")
    before = requests_total(mode, reporter=reporter(mode), response_flags="UO", response_code="503")
    result = load("echo:8080/?delay=100ms", "-n", "120", "-c", "8", source="sleep")
    overflow = requests_total(mode, reporter=reporter(mode), response_flags="UO", response_code="503") - before
    assert result["codes"].get("503", 0) > 0 and result["codes"].get("200", 0) > 0, result["codes"]
    assert overflow == result["codes"]["503"], (overflow, result["codes"])


def test_outlier_detection_ejects_the_failing_host(applied, mode) -> None:
    applied("destination-rule-echo-outlier.yaml")
    before = requests_total(mode, reporter=reporter(mode), destination_workload="echo-v2")
    result = load("echo:8080/", "-n", "100", "-c", "1", source="sleep")
    to_failing = requests_total(mode, reporter=reporter(mode), destination_workload="echo-v2") - before
    # No retries (the file's VirtualService), round robin: echo-v2 gets a request within the first two, answers
    # 503, and is ejected for 30 s; everything after goes to echo-v1. Without ejection half would fail.
    assert 1 <= result["codes"].get("503", 0) <= 3 and result["codes"].get("200", 0) >= 97, result["codes"]
    assert 1 <= to_failing <= 3, to_failing


# ---------------------------------------------------------------- authorization


def test_l7_authorization_allows_only_get_from_productpage(applied, mode) -> None:
    applied(f"authorization-policy-reviews-get-{mode}.yaml")
    ok = pages(10)
    assert ok["codes"] == {"200": 10} and sum(ok["body_matches"].values()) == 10, ok
    get = load("reviews:9080/reviews/0", "-n", "5", source="productpage-v1")
    assert get["codes"] == {"200": 5}, get["codes"]
    post = load("reviews:9080/reviews/0", "-n", "5", "-X", "POST", source="productpage-v1")
    assert post["codes"] == {"403": 5}, post["codes"]
    other = load("reviews:9080/reviews/0", "-n", "5", source="sleep")
    assert other["codes"] == {"403": 5}, other["codes"]


# ---------------------------------------------------------------- switching modes under load


def test_switching_modes_under_load_reports_failures(bookinfo) -> None:
    """none -> ambient -> sidecar -> ambient, each under a bounded load run; each switch reports what restarted
    and how many requests the mesh saw fail; ambient enrolment fails none."""
    meshlab("waypoint", "disable", "bookinfo", "--lab", LAB)
    meshlab("mode", "bookinfo", "none", "--lab", LAB, timeout=180)
    members = sorted(n for n, w in state()["workloads"].items() if w["namespace"] == "bookinfo")
    for target in ("ambient", "sidecar", "ambient"):
        results: dict = {}
        loader = threading.Thread(target=lambda: results.update(load(
            "productpage:9080/productpage", "--qps", "20", "-d", "15s", "-c", "2", "--timeout", "10s")))
        loader.start()
        time.sleep(2)
        switch = json.loads(meshlab("mode", "bookinfo", target, "--json", "--lab", LAB, timeout=180).stdout)
        loader.join(120)
        failed = results["count"] - results["codes"].get("200", 0)
        print(f"switch to {target}: {switch['seconds']}s, restarted {len(switch['restarted'])}, mesh saw "
              f"{switch['failedRequests']} failures, the load run {failed} of {results['count']}")
        assert switch["changed"] and switch["mode"] == target
        assert results["count"] >= 100, results
        if switch["previous"] == "none":
            assert switch["restarted"] == [] and switch["failedRequests"] == 0 and failed == 0, (switch, results)
        else:  # every workload of the namespace restarts, with or without its sidecar
            assert sorted(switch["restarted"]) == members, switch
            assert isinstance(switch["failedRequests"], int)
