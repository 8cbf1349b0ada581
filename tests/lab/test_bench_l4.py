"""Smoke run of the L4 benchmark: structure and bytes moved on every path, no timing asserts."""

from __future__ import annotations

import os

import pytest

from lab.bench.l4 import format_table, run_l4_bench, stunnel_binary


@pytest.mark.slow
def test_l4_bench_smoke_run_moves_bytes_on_every_path() -> None:
    if os.environ.get("CI"):
        assert stunnel_binary(), "CI installs stunnel4 (scripts/install-bench-tools.sh)"
    result = run_l4_bench(duration_s=1.0, sizes=(64,))
    paths = result["paths"]
    assert set(paths) == {"direct", "ztunnel", "hbone", "stunnel"}
    measured = ["direct", "ztunnel", "hbone"] + (["stunnel"] if stunnel_binary() else [])
    for name in measured:
        entry = paths[name]
        assert entry["throughput"]["bytes"] > 0 and entry["throughput"]["gbit_s"] > 0, name
        assert entry["latency"]["64"]["rounds"] > 0 and entry["latency"]["64"]["p50_us"] > 0, name
    assert paths["ztunnel"]["throughput"]["proxy_cpu_s_per_gb"] is not None
    if stunnel_binary():
        assert set(result["ratios"]) >= {"throughput_ztunnel_over_stunnel", "added_p50_us_64B", "added_p99_us_64B"}
    else:
        assert "skipped" in paths["stunnel"]
    table = format_table(result)
    assert "ztunnel" in table and "direct" in table
