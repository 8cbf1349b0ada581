"""The fault model and store without a lab: validation with the field named, targets, persistence, expiry."""

from __future__ import annotations

import pytest

from agents.common.faults import parse_faults
from lab.faults import FaultError, FaultNotFound, FaultStore, new_fault

STATE = {
    "nodes": {"node-1": {"provider": "local"}, "node-2": {"provider": "local"}},
    "services": {"reviews.bookinfo": {"name": "reviews", "namespace": "bookinfo"},
                 "ratings.bookinfo": {"name": "ratings", "namespace": "bookinfo"}},
    "workloads": {
        "reviews-v1": {"namespace": "bookinfo", "service": "reviews", "node": "node-1", "identity": "spiffe://x/ns/b/sa/r"},
        "reviews-v2": {"namespace": "bookinfo", "service": "reviews", "node": "node-2", "identity": "spiffe://x/ns/b/sa/r"},
        "ratings-v1": {"namespace": "bookinfo", "service": "ratings", "node": "node-2", "identity": "spiffe://x/ns/b/sa/t"},
    },
}


def add(**request):
    return new_fault("f1", request, STATE, now=1000.0)


@pytest.mark.parametrize("request_, message", [
    ({"kind": "earthquake", "target": "reviews"}, "kind: unknown fault kind 'earthquake'"),
    ({"kind": "latency", "target": "reviews"}, "param latency: latency needs it"),
    ({"kind": "latency", "target": "reviews", "params": {"latency": "soon"}}, "param latency: want milliseconds"),
    ({"kind": "latency", "target": "reviews", "params": {"latency": 5, "colour": 1}}, "param 'colour'"),
    ({"kind": "abort", "target": "reviews", "params": {"status": 700}}, "param status: want an HTTP status"),
    ({"kind": "latency", "target": "nowhere", "params": {"latency": 5}}, "target 'nowhere': no service"),
    ({"kind": "latency", "target": "service/nope", "params": {"latency": 5}}, "no service named 'nope'"),
    ({"kind": "pause_node", "target": "reviews"}, "is a service; pause_node targets: node"),
    ({"kind": "partition", "target": "reviews-v1->node-2"}, "a partition is between two nodes"),
    ({"kind": "latency", "target": "reviews->", "params": {"latency": 5}}, "both ends"),
    ({"kind": "latency", "target": "reviews", "params": {"latency": 5}, "toxicity": 2}, "toxicity: want a number"),
    ({"kind": "latency", "target": "reviews", "params": {"latency": 5}, "direction": "up"}, "direction: want one of"),
    ({"kind": "latency", "target": "reviews", "params": {"latency": 5}, "ttlSeconds": -1}, "ttl: want a positive"),
    ({"kind": "latency", "params": {"latency": 5}}, "target: latency needs a target"),
])
def test_bad_requests_name_the_field(request_, message) -> None:
    with pytest.raises(FaultError, match=message.replace("(", r"\(")):
        add(**request_)


def test_params_parse_units_and_fill_defaults() -> None:
    f = add(kind="latency", target="reviews", params={"latency": "0.2s"}, ttlSeconds=30)
    assert f.params == {"latency": 200, "jitter": 0} and f.direction == "downstream" and f.expires == 1030.0
    f = add(kind="delay", target="reviews.bookinfo", params={"delay": "500ms", "header": "end-user:jason"})
    assert f.params == {"delay": 0.5, "percentage": 100, "header": "end-user:jason"}
    assert add(kind="partition", target="node-1->node-2").direction == "both"


def test_agent_shape_resolves_every_end_and_parses_on_the_agent() -> None:
    f = add(kind="latency", target="reviews-v2->ratings", params={"latency": 5})
    doc = f.for_agents(STATE)
    assert doc["layer"] == "l4" and doc["expiresAt"] is None
    assert doc["target"]["source"]["nodes"] == ["node-2"]
    assert doc["target"]["destination"]["workloads"] == ["ratings-v1"]
    node = add(kind="partition", target="node-2").for_agents(STATE)
    assert node["layer"] == "l4" and node["target"]["workloads"] == ["ratings-v1", "reviews-v2"]
    assert len(parse_faults([doc, node])) == 2


def test_store_persists_and_expires(tmp_path) -> None:
    store = FaultStore(tmp_path / "faults.json")
    fault = new_fault(store.allocate_id(), {"kind": "reset_peer", "target": "ratings", "ttlSeconds": 2}, STATE,
                      now=1000.0)
    store.add(fault)
    again = FaultStore(tmp_path / "faults.json")  # a restarted control plane
    assert [f.id for f in again.list()] == ["f1"] and again.next_id == 2
    assert again.expired(now=1001.0) == [] and [f.id for f in again.expired(now=1002.0)] == ["f1"]
    assert again.for_agents(STATE, now=1002.0) == []
    again.remove("f1")
    with pytest.raises(FaultNotFound, match="no fault 'f1'"):
        again.remove("f1")
    assert FaultStore(tmp_path / "faults.json").list() == []
