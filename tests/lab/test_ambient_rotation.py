"""Certificates with a short TTL rotate under traffic without a single failed request."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from tests.support import meshlab

ROOT = Path(__file__).resolve().parents[2]
ECHO = ROOT / "topologies" / "echo.yaml"

pytestmark = pytest.mark.slow


def serials() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for c in json.loads(meshlab("certs", "--json", "--lab", "echo").stdout):
        out.setdefault(c["identity"], set()).add(c["serial"])
    return out


def test_short_ttl_rotates_without_failed_requests() -> None:
    try:
        meshlab("up", str(ECHO), "--cert-ttl", "6s")
        meshlab("mode", "echo", "ambient")
        before = serials()
        results: dict = {}
        loader = threading.Thread(target=lambda: results.update(json.loads(meshlab(
            "load", "echo:8080/", "--from", "client", "--qps", "20", "-d", "9s", "-c", "2", "--json",
            "--lab", "echo").stdout)))
        loader.start()
        # Count the certificates each identity had while the load ran (registry keeps unexpired ones).
        seen: dict[str, set[str]] = {k: set(v) for k, v in before.items()}
        while loader.is_alive():
            for identity, s in serials().items():
                seen.setdefault(identity, set()).update(s)
            time.sleep(1)
        loader.join()
        assert results["count"] >= 150 and results["codes"] == {"200": results["count"]}, results
        client = "spiffe://cluster.local/ns/echo/sa/client"
        server = "spiffe://cluster.local/ns/echo/sa/echo"
        assert len(seen[client]) >= 3 and len(seen[server]) >= 3, seen  # renewed at half-life, ~every 3 s
    finally:
        meshlab("down", "echo", check=False)
