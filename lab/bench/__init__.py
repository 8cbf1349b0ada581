"""Benchmarks the lab runs on the user's own hardware (`lab.bench.l4`: the L4 data path)."""
