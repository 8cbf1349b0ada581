"""Half a mesh in sidecar mode, half in ambient: the two talk over HBONE, with mTLS and identities both ways."""

from __future__ import annotations

import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import meshlab

pytestmark = pytest.mark.slow

TOPOLOGY = """
name: mixed
nodes: [{name: node-1}, {name: node-2}]
namespaces:
  - {name: front, mode: sidecar}
  - {name: back, mode: ambient}
services:
  - name: web
    namespace: front
    ports: [{port: 8080}]
    workloads: [{name: web-v1, node: node-1, serviceAccount: web, run: {demo: echo}}]
  - name: api
    namespace: back
    ports: [{port: 8080}]
    workloads: [{name: api-v1, node: node-2, serviceAccount: api, run: {demo: echo}}]
workloads:
  - {name: front-client, namespace: front, node: node-1, serviceAccount: front-client, run: {demo: sleep}}
  - {name: back-client, namespace: back, node: node-2, serviceAccount: back-client, run: {demo: sleep}}
"""


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    path = tmp_path_factory.mktemp("mixed") / "mixed.yaml"
    path.write_text(TOPOLOGY)
    meshlab("up", str(path), timeout=180)
    yield json.loads(meshlab("status", "mixed", "--json").stdout)
    meshlab("down", "mixed", check=False)


def load(target: str, source: str) -> dict:
    return json.loads(meshlab("load", target, "--from", source, "-n", "20", "--json", "--lab", "mixed").stdout)


def samples(address: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://{address}:15020/metrics", timeout=5) as r:
        families = text_string_to_metric_families(r.read().decode())
        return sum(s.value for f in families for s in f.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_a_sidecar_workload_calls_an_ambient_service_over_hbone(mixed) -> None:
    result = load("api.back:8080/", "front-client")
    assert result["codes"] == {"200": 20}
    # the client's sidecar reports the requests; the ambient side's ztunnel saw mTLS from the sidecar's identity
    sidecar = mixed["workloads"]["front-client"]["sidecarAddress"]
    assert samples(sidecar, "istio_requests_total", reporter="source", destination_workload="api-v1",
                   response_code="200") >= 20
    assert samples(mixed["nodes"]["node-2"]["address"], "istio_tcp_connections_opened_total", reporter="destination",
                   destination_workload="api-v1", connection_security_policy="mutual_tls",
                   source_principal="spiffe://cluster.local/ns/front/sa/front-client") >= 1


def test_an_ambient_workload_calls_a_sidecar_service_over_hbone(mixed) -> None:
    result = load("web.front:8080/", "back-client")
    assert result["codes"] == {"200": 20}
    # the ztunnel tunnels to the workload's own address:15008, where its sidecar answers as the workload
    web = mixed["workloads"]["web-v1"]["sidecarAddress"]
    assert samples(web, "istio_requests_total", reporter="destination", destination_workload="web-v1",
                   connection_security_policy="mutual_tls",
                   source_principal="spiffe://cluster.local/ns/back/sa/back-client") == 20
