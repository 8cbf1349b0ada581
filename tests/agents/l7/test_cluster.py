"""DestinationRule decisions: cluster policies, subsets, load balancing, connection pool, outlier detection."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from agents.l7.cluster import (
    Admission,
    ConnectionPoolLimits,
    LoadBalancerState,
    cluster_policy,
    endpoint_key,
    pick_endpoint,
    select_endpoints,
)
from agents.l7.outlier import Ejection, OutlierDetector, OutlierPolicy

ENDPOINTS = [{"workload": f"reviews-v{v}", "address": f"127.0.0.{v}", "labels": {"app": "reviews", "version": f"v{v}"}}
             for v in (1, 2, 3)]
POOL = {"maxConnections": 1, "connectTimeout": 10.0, "http1MaxPendingRequests": 1, "http2MaxRequests": 4294967295,
        "maxRequestsPerConnection": 0, "maxRetries": 4294967295, "idleTimeout": 3600.0}
OUTLIER = {"consecutive5xxErrors": 1, "consecutiveGatewayErrors": 0, "interval": 1.0, "baseEjectionTime": 180.0,
           "maxEjectionPercent": 100, "minHealthPercent": 0}
RULES = {"reviews.bookinfo": {
    "source": "DestinationRule bookinfo/reviews",
    "trafficPolicy": {"loadBalancer": "RANDOM", "connectionPool": POOL, "outlierDetection": OUTLIER},
    "subsets": {"v1": {"labels": {"version": "v1"}, "trafficPolicy": {"loadBalancer": "RANDOM",
                                                                      "connectionPool": POOL,
                                                                      "outlierDetection": OUTLIER}},
                "v2": {"labels": {"version": "v2"}, "trafficPolicy": {"loadBalancer": "ROUND_ROBIN",
                                                                      "connectionPool": None,
                                                                      "outlierDetection": None}}}}}


def test_cluster_policies_from_destination_rules():
    whole = cluster_policy(RULES, "reviews.bookinfo")
    assert whole.labels is None and whole.load_balancer == "RANDOM" and whole.pool.max_connections == 1
    assert whole.outlier == OutlierPolicy(1, 0, 1.0, 180.0, 100, 0) and whole.source.startswith("DestinationRule")
    v2 = cluster_policy(RULES, "reviews.bookinfo", "v2")
    assert v2.labels == {"version": "v2"} and v2.load_balancer == "ROUND_ROBIN" and v2.outlier is None
    assert v2.pool == ConnectionPoolLimits()
    assert cluster_policy(RULES, "reviews.bookinfo", "v9") is None  # Envoy: 503 NC
    assert cluster_policy(RULES, "ratings.bookinfo", "v1") is None
    plain = cluster_policy(RULES, "ratings.bookinfo")
    assert plain.load_balancer == "LEAST_REQUEST" and plain.outlier is None  # Istio's defaults


def test_subsets_filter_endpoints_by_labels():
    assert [e["workload"] for e in select_endpoints(ENDPOINTS, {"version": "v2"})] == ["reviews-v2"]
    assert select_endpoints(ENDPOINTS, None) == ENDPOINTS
    assert select_endpoints(ENDPOINTS, {"version": "v2", "app": "ratings"}) == []


def draws(lb: str, state: LoadBalancerState, n: int, endpoints=ENDPOINTS) -> Counter:
    return Counter(pick_endpoint(endpoints, lb, state)["workload"] for _ in range(n))


def test_round_robin_takes_turns():
    state = LoadBalancerState()
    assert [pick_endpoint(ENDPOINTS, "ROUND_ROBIN", state)["workload"] for _ in range(4)] == [
        "reviews-v1", "reviews-v2", "reviews-v3", "reviews-v1"]


def test_random_is_uniform():
    counts = draws("RANDOM", LoadBalancerState(random.Random(5)), 9000)
    assert all(abs(c / 9000 - 1 / 3) < 0.02 for c in counts.values())


def test_least_request_avoids_the_busy_endpoint():
    state = LoadBalancerState(random.Random(8))
    state.active = {"127.0.0.1": 10, "127.0.0.2": 0, "127.0.0.3": 0}
    counts = draws("LEAST_REQUEST", state, 3000)
    assert counts["reviews-v1"] / 3000 < 0.15  # picked only when both random choices are v1 (1/9)
    state.started("127.0.0.2")
    state.finished("127.0.0.2")
    state.finished("127.0.0.9")
    assert state.active == {"127.0.0.1": 10, "127.0.0.3": 0}


def test_passthrough_keeps_the_callers_choice():
    state = LoadBalancerState(original="127.0.0.3")
    assert pick_endpoint(ENDPOINTS, "PASSTHROUGH", state)["workload"] == "reviews-v3"
    assert pick_endpoint(ENDPOINTS, "PASSTHROUGH", LoadBalancerState())["workload"] == "reviews-v1"


def test_ejected_and_unready_endpoints_are_skipped_unless_panic():
    state = LoadBalancerState(ejected={"127.0.0.1", "127.0.0.2"})
    assert set(draws("ROUND_ROBIN", state, 6)) == {"reviews-v3"}
    state.min_health_percent = 50  # 1 of 3 healthy is under 50%: use them all
    assert set(draws("ROUND_ROBIN", state, 6)) == {"reviews-v1", "reviews-v2", "reviews-v3"}
    unready = [{**e, "ready": False} for e in ENDPOINTS]
    assert pick_endpoint(unready, "ROUND_ROBIN", LoadBalancerState()) is None
    assert pick_endpoint([], "RANDOM", LoadBalancerState()) is None
    with pytest.raises(ValueError, match="unknown load balancer"):
        pick_endpoint(ENDPOINTS, "CONSISTENT_HASH", LoadBalancerState())
    assert endpoint_key(ENDPOINTS[0]) == "127.0.0.1"


ADMISSIONS = [
    # (limits, counts, action, flag)
    ({}, dict(active_connections=0, idle_connections=0, pending_requests=0, active_requests=0), "connect", None),
    ({}, dict(active_connections=5, idle_connections=2, pending_requests=0, active_requests=3), "reuse", None),
    (POOL, dict(active_connections=0, idle_connections=0, pending_requests=0, active_requests=0), "connect", None),
    (POOL, dict(active_connections=1, idle_connections=0, pending_requests=0, active_requests=1), "queue", None),
    (POOL, dict(active_connections=1, idle_connections=0, pending_requests=1, active_requests=1), "overflow", "UO"),
    (POOL, dict(active_connections=1, idle_connections=1, pending_requests=1, active_requests=0), "reuse", None),
    ({"http2MaxRequests": 2}, dict(active_connections=2, idle_connections=1, pending_requests=0, active_requests=2),
     "overflow", "UO"),
    ({"http1MaxPendingRequests": 0}, dict(active_connections=0, idle_connections=0, pending_requests=0,
                                          active_requests=0), "overflow", "UO"),
]


@pytest.mark.parametrize("limits, counts, action, flag", ADMISSIONS)
def test_connection_pool_admission(limits, counts, action, flag):
    assert ConnectionPoolLimits.from_json(limits).admit(**counts) == Admission(action, flag)


def test_retry_budget_and_requests_per_connection():
    limits = ConnectionPoolLimits.from_json({"maxRetries": 1, "maxRequestsPerConnection": 2})
    assert limits.admit_retry(0) and not limits.admit_retry(1)
    assert limits.reusable(1) and not limits.reusable(2)
    assert ConnectionPoolLimits().reusable(10_000) and ConnectionPoolLimits().admit_retry(10_000)


# --- outlier detection ------------------------------------------------------------------------------------------

HOSTS = ["h1", "h2", "h3", "h4"]


def detector(**policy) -> OutlierDetector:
    base = {"consecutive5xxErrors": 3, "interval": 10.0, "baseEjectionTime": 30.0, "maxEjectionPercent": 100}
    return OutlierDetector(OutlierPolicy.from_json({**base, **policy}), HOSTS)


def test_consecutive_5xx_ejects_and_a_success_resets():
    d = detector()
    assert d.record("h1", 0.0, status=500) is None and d.record("h1", 0.1, status=503) is None
    assert d.record("h1", 0.2, status=200) is None  # reset
    assert d.record("h1", 0.3, status=500) is None and d.record("h1", 0.4, status=500) is None
    assert d.record("h1", 0.5, error="connect-failure") == Ejection("h1", 30.5, 1, "consecutive5xxErrors")
    assert d.ejected(1.0) == {"h1"}


def test_ejection_lasts_base_time_times_count_and_returns_at_a_sweep():
    d = detector(consecutive5xxErrors=1)
    d.ejected(0.0)  # the first sweep is due at 10
    assert d.record("h1", 1.0, status=500).until == 31.0
    assert d.ejected(30.0) == {"h1"}
    assert d.ejected(39.9) == {"h1"} and d.sweep(40.0) == ["h1"] and d.ejected(40.0) == frozenset()
    second = d.record("h1", 41.0, status=500)
    assert (second.count, second.until) == (2, 101.0)  # 2 x 30 s


def test_multiplier_decays_while_healthy():
    d = detector(consecutive5xxErrors=1)
    d.ejected(0.0)
    d.record("h1", 1.0, status=500)
    d.sweep(40.0)  # back
    d.sweep(200.0)  # healthy for many intervals: the multiplier is back to 0
    assert d.record("h1", 201.0, status=500).count == 1


def test_gateway_errors_count_separately():
    d = detector(consecutive5xxErrors=0, consecutiveGatewayErrors=2)
    assert d.record("h2", 0.0, status=500) is None and d.record("h2", 0.1, status=500) is None  # not gateway
    assert d.record("h2", 0.2, status=502) is None
    assert d.record("h2", 0.3, error="timeout").reason == "consecutiveGatewayErrors"


def test_max_ejection_percent_caps_ejections():
    d = detector(consecutive5xxErrors=1, maxEjectionPercent=50)
    assert d.record("h1", 0.0, status=500) is not None
    assert d.record("h2", 0.0, status=500) is not None
    assert d.record("h3", 0.0, status=500) is None  # 3 of 4 would be 75%
    assert d.ejected(0.0) == {"h1", "h2"}
    default = OutlierDetector(OutlierPolicy(consecutive_5xx=1), HOSTS)  # Istio's 10%: 1 of 4 is 25%
    assert default.record("h1", 0.0, status=500) is None


def test_hosts_come_and_go():
    d = detector(consecutive5xxErrors=1)
    d.record("h1", 0.0, status=500)
    d.set_hosts(["h2", "h5"])
    assert d.ejected(0.0) == frozenset() and set(d.hosts) == {"h2", "h5"}
    with pytest.raises(ValueError, match="needs a status or one of the errors"):
        d.record("h2", 0.0)


def test_long_idle_gaps_do_not_loop_forever():
    d = detector(consecutive5xxErrors=1, interval=0.001)
    d.record("h1", 0.0, status=500)
    assert d.ejected(10_000_000.0) == frozenset()
