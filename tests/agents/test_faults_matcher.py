"""The agent-side fault matcher: parsing snapshot faults, L4 selection, partitions, and the L7 matcher."""

from __future__ import annotations

import random

import pytest

from agents.common.faults import (
    ConnFacts,
    FaultFormatError,
    connection_faults,
    l7_fault,
    parse_faults,
    partition_between,
)
from agents.l7.routing import Fault, RequestInfo

REVIEWS = {"type": "service", "name": "reviews", "namespace": "bookinfo", "workloads": ["reviews-v1", "reviews-v2"],
           "nodes": ["node-2"], "services": ["reviews.bookinfo"]}
PRODUCTPAGE = {"type": "workload", "name": "productpage-v1", "namespace": "bookinfo",
               "workloads": ["productpage-v1"], "nodes": ["node-1"], "services": ["productpage.bookinfo"]}


def fault(kind: str, target: dict, layer: str = "l7", **extra) -> dict:
    return {"id": extra.pop("id", "f1"), "kind": kind, "layer": layer, "target": target,
            "params": extra.pop("params", {}), "direction": extra.pop("direction", "downstream"),
            "toxicity": extra.pop("toxicity", 1.0), "expiresAt": extra.pop("expiresAt", None)}


def req(**headers: str) -> RequestInfo:
    return RequestInfo.from_target("GET", "/reviews/1", list(headers.items()))


@pytest.mark.parametrize("raw, field", [
    ("nope", "faults"),
    ([{"id": "f1"}], "faults[0].kind"),
    ([fault("delay", REVIEWS, layer="l9")], "faults[0].layer"),
    ([fault("delay", REVIEWS, direction="sideways", params={"delay": 1})], "faults[0].direction"),
    ([fault("delay", REVIEWS, toxicity=2, params={"delay": 1})], "faults[0].toxicity"),
    ([fault("delay", {"type": "planet", "name": "x"}, params={"delay": 1})], "faults[0].target.type"),
    ([fault("delay", REVIEWS, params={"delay": "soon"})], "faults[0].params.delay"),
    ([fault("abort", REVIEWS, params={"status": 99})], "faults[0].params.status"),
    ([fault("abort", REVIEWS, params={"status": 503, "percentage": 150})], "faults[0].params.percentage"),
])
def test_bad_faults_name_the_field(raw, field) -> None:
    with pytest.raises(FaultFormatError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_faults(raw)


def test_no_faults() -> None:
    assert parse_faults(None) == []
    assert l7_fault([], req(), "reviews.bookinfo", "productpage-v1") is None


@pytest.mark.parametrize("params, headers, service, source, expected", [
    ({"delay": "2s"}, {}, "reviews.bookinfo", "productpage-v1", Fault(delay=2.0)),
    ({"delay": 0.5}, {}, "reviews.bookinfo", None, Fault(delay=0.5)),
    ({"delay": "300ms"}, {}, "ratings.bookinfo", "productpage-v1", None),  # another service
    ({"delay": "1s", "header": "end-user:jason"}, {"end-user": "jason"}, "reviews.bookinfo", None, Fault(delay=1.0)),
    ({"delay": "1s", "header": "end-user:jason"}, {"end-user": "bob"}, "reviews.bookinfo", None, None),
    ({"delay": "1s", "header": "x-canary"}, {"X-Canary": "1"}, "reviews.bookinfo", None, Fault(delay=1.0)),
])
def test_delay_by_service_and_header(params, headers, service, source, expected) -> None:
    faults = parse_faults([fault("delay", REVIEWS, params=params)])
    assert l7_fault(faults, req(**headers), service, source) == expected


def test_abort_and_delay_together_and_by_edge() -> None:
    edge = {"type": "edge", "source": PRODUCTPAGE, "destination": REVIEWS}
    faults = parse_faults([fault("abort", edge, params={"status": 503}, id="a"),
                           fault("delay", REVIEWS, params={"delay": "100ms"}, id="d")])
    assert l7_fault(faults, req(), "reviews.bookinfo", "productpage-v1") == Fault(delay=0.1, abort=503)
    assert l7_fault(faults, req(), "reviews.bookinfo", "other-v1") == Fault(delay=0.1)


def test_percentage_is_a_share_of_requests() -> None:
    faults = parse_faults([fault("abort", REVIEWS, params={"status": 500, "percentage": 30})])
    rng = random.Random(7)
    hits = sum(l7_fault(faults, req(), "reviews.bookinfo", None, rng=rng) is not None for _ in range(2000))
    assert 500 <= hits <= 700


def test_expired_faults_are_ignored() -> None:
    faults = parse_faults([fault("abort", REVIEWS, params={"status": 500}, expiresAt=1000.0)])
    assert l7_fault(faults, req(), "reviews.bookinfo", None, now=999.0) == Fault(abort=500)
    assert l7_fault(faults, req(), "reviews.bookinfo", None, now=1000.0) is None


def test_l4_selection_by_workload_node_and_toxicity() -> None:
    node2 = {"type": "node", "name": "node-2", "workloads": ["reviews-v1"], "nodes": ["node-2"], "services": []}
    faults = parse_faults([fault("latency", PRODUCTPAGE, layer="l4", id="w"),
                           fault("bandwidth", node2, layer="l4", id="n"),
                           fault("slicer", REVIEWS, layer="l4", id="half", toxicity=0.5)])
    to_reviews = ConnFacts("productpage-v1", "node-1", "reviews-v1", "node-2", "reviews.bookinfo")
    assert {f.id for f in connection_faults(faults, to_reviews, rng=random.Random(1))} >= {"w", "n"}
    other = ConnFacts("x", "node-3", "ratings-v1", "node-3", "ratings.bookinfo")
    assert connection_faults(faults, other) == []
    rng = random.Random(3)
    hits = sum(any(f.id == "half" for f in connection_faults(faults, to_reviews, rng=rng)) for _ in range(1000))
    assert 400 <= hits <= 600


def test_partitions_node_and_one_way_edge() -> None:
    n1 = {"type": "node", "name": "node-1", "nodes": ["node-1"]}
    n2 = {"type": "node", "name": "node-2", "nodes": ["node-2"]}
    whole = parse_faults([fault("partition", n1, layer="l4", direction="both")])
    assert partition_between(whole, "node-1", "node-2") is not None
    assert partition_between(whole, "node-3", "node-1") is not None
    assert partition_between(whole, "node-2", "node-3") is None
    assert partition_between(whole, "node-1", "node-1") is None
    one_way = parse_faults([fault("partition", {"type": "edge", "source": n1, "destination": n2}, layer="l4",
                                  direction="upstream")])
    assert partition_between(one_way, "node-1", "node-2") is not None
    assert partition_between(one_way, "node-2", "node-1") is None
