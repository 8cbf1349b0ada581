"""Ambient L4 scenarios shared by the providers' lab tests (local: test_ambient_local, docker: test_docker_ambient).

Each takes the lab's name and its `meshlab status --json` document, so the same checks run against a
lab of loopback addresses (explicit capture) and one of containers (transparent capture).
"""

from __future__ import annotations

import json
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.support import meshlab

BOOKINFO_SA = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-"


def load(lab: str, *args: str) -> dict:
    """`meshlab load ... --json` in lab `lab`."""
    return json.loads(meshlab("load", *args, "--json", "--lab", lab).stdout)


def metrics(address: str) -> list:
    with urllib.request.urlopen(f"http://{address}:15020/metrics", timeout=5) as r:
        return [s for fam in text_string_to_metric_families(r.read().decode()) for s in fam.samples]


def tcp_total(state: dict, name: str, **labels: str) -> float:
    """Sum of a ztunnel counter over every node, for samples matching `labels`."""
    total = 0.0
    for node in state["nodes"].values():
        for s in metrics(node["address"]):
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def pages_are_served_with_mtls_on_every_hop(lab: str, state: dict) -> None:
    """bookinfo pages with every version, and every hop behind productpage carried over HBONE (mutual TLS)."""
    before_tls = tcp_total(state, "istio_tcp_connections_opened_total", reporter="destination",
                           connection_security_policy="mutual_tls")
    result = load(lab, "productpage:9080/productpage", "-n", "60", "-c", "2", "--count-body", r"reviews-v\d")
    assert result["codes"] == {"200": 60}
    assert set(result["body_matches"]) == {"reviews-v1", "reviews-v2", "reviews-v3"}
    # productpage -> details and -> reviews once per page; reviews v2/v3 -> ratings: every one over HBONE.
    ratings_calls = result["body_matches"]["reviews-v2"] + result["body_matches"]["reviews-v3"]
    expected = 60 + 60 + ratings_calls
    tls = tcp_total(state, "istio_tcp_connections_opened_total", reporter="destination",
                    connection_security_policy="mutual_tls") - before_tls
    assert tls == expected
    edge = tcp_total(state, "istio_tcp_connections_opened_total", reporter="destination",
                     source_workload="reviews-v2", destination_workload="ratings-v1",
                     connection_security_policy="mutual_tls", source_principal=BOOKINFO_SA + "reviews")
    assert edge >= result["body_matches"]["reviews-v2"]


def proxy_status_and_certificates(lab: str) -> None:
    """Every ztunnel SYNCED; each node holds the certificates of its workloads' identities."""
    status = json.loads(meshlab("proxy-status", "--json", "--lab", lab).stdout)
    ztunnels = [a for a in status["agents"] if a.get("agent", "ztunnel") == "ztunnel"]
    assert {a["node"] for a in ztunnels} == {"node-1", "node-2", "node-3"}
    assert {a["status"] for a in ztunnels} == {"SYNCED"}
    certs = json.loads(meshlab("certs", "--json", "--lab", lab).stdout)
    held = {(c["identity"].rsplit("/", 1)[1], c["holder"]) for c in certs}
    assert ("bookinfo-reviews", "ztunnel/node-3") in held and ("bookinfo-details", "ztunnel/node-2") in held
    text = meshlab("proxy-status", "--lab", lab).stdout
    assert "SYNCED" in text and "ztunnel" in text
    text = meshlab("certs", "--lab", lab).stdout
    assert BOOKINFO_SA + "ratings" in text and "ztunnel/node-3" in text


# A plain TCP client, run inside a node or on a host: from a workload's address to ip:port, one HTTP GET;
# prints its own port and the status line, or the error. The mesh is invisible to it (transparent capture).
PROBE = """
import socket, sys
src, ip, port, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
s = socket.socket()
s.settimeout(4)
try:
    s.bind((src, 0))
    s.connect((ip, port))
    print(s.getsockname()[1], flush=True)
    s.sendall(f"GET {path} HTTP/1.1\\r\\nHost: probe\\r\\nConnection: close\\r\\n\\r\\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    print(data.split(b"\\r\\n", 1)[0].decode() or "EMPTY")
except OSError as e:
    print("ERROR", type(e).__name__, e)
"""
