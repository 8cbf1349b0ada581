"""Rendering bench results: the machine they ran on, text tables, and the change between two runs."""

from __future__ import annotations

import json
import os
import platform
import ssl
import sys
from pathlib import Path
from typing import Any

from lab.errors import LabError

LATENCY_KEYS = ("p50", "p90", "p99", "p999")


def machine() -> dict[str, Any]:
    """Which machine a run measured: CPUs, CPU model, Python, OpenSSL, load average."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {"cpus": os.cpu_count(), "cpu_model": model or platform.processor(), "python": sys.version.split()[0],
            "openssl": ssl.OPENSSL_VERSION, "platform": platform.platform(), "loadavg": load}


def machine_line(m: dict[str, Any]) -> str:
    return (f"{m.get('cpus')} CPUs ({m.get('cpu_model')}), Python {m.get('python')}, {m.get('openssl')}, "
            f"load {m.get('loadavg')}")


def table(head: list[str], rows: list[list[Any]]) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    cells = [[_cell(c) for c in row] for row in [head, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    lines = []
    for n, row in enumerate(cells):
        parts = [c.ljust(w) if i == 0 or n == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def http_table(paths: dict[str, Any], rates: list[str]) -> str:
    """One row per path and rate: rps, latency percentiles, proxy CPU per 1,000 requests, peak RSS."""
    rows = []
    for name, p in paths.items():
        if "rates" not in p:
            rows.append([name, p.get("skipped") or f"error: {p.get('error')}"] + [""] * 8)
            continue
        peak = max((x["peak_rss_mb"] for x in p["proxies"].values()), default=None)
        for rate in rates:
            r = p["rates"].get(rate)
            if r is None:
                continue
            lat = r["latency_ms"]
            rows.append([name, rate, r["rps"], *(lat[k] for k in LATENCY_KEYS), r["errors"],
                         p["proxy_cpu_s_per_1000"], peak])
    return table(["path", "rate", "rps", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "errors",
                  "proxy CPU s/1k req", "peak RSS MB"], rows)


def proxy_table(paths: dict[str, Any]) -> str:
    """Every proxy process of every path: CPU seconds per 1,000 requests and peak RSS."""
    rows = [[f"{name}: {proc}", x["cpu_s_per_1000"], x["peak_rss_mb"]]
            for name, p in paths.items() for proc, x in p.get("proxies", {}).items()]
    return table(["path: proxy process", "CPU s/1k req", "peak RSS MB"], rows) if rows else ""


def ratios_lines(ratios: dict[str, Any]) -> list[str]:
    return [f"{k}: {json.dumps(v) if isinstance(v, dict) else v}" for k, v in ratios.items()]


# ---------------------------------------------------------------- --compare


def load_result(path: str) -> dict[str, Any]:
    """A bench JSON file written by `meshlab bench -o` (LabError naming the file when it is not one)."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise LabError(f"--compare: cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise LabError(f"--compare: {path} is not JSON ({exc})") from None
    if not isinstance(doc, dict) or "suite" not in doc:
        raise LabError(f"--compare: {path} is not a meshlab bench result (no 'suite' field)")
    return doc


def figures(doc: Any, prefix: str = "") -> dict[str, float]:
    """Every number of a result, flattened to `a.b.c` keys (machine facts left out)."""
    out: dict[str, float] = {}
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("machine", "duration_s", "plot", "cpus", "pid", "loadavg_before", "loadavg_after"):
                continue
            out.update(figures(value, f"{prefix}{key}."))
    elif isinstance(doc, (int, float)) and not isinstance(doc, bool):
        out[prefix.rstrip(".")] = float(doc)
    return out


def compare(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Per figure present in both runs: old, new and the change in percent."""
    a, b = figures(old), figures(new)
    changes = {}
    for key in sorted(set(a) & set(b)):
        change = None if a[key] == 0 else round((b[key] - a[key]) / abs(a[key]) * 100, 1)
        changes[key] = {"old": a[key], "new": b[key], "change_pct": change}
    return {"changes": changes, "only_old": sorted(set(a) - set(b)), "only_new": sorted(set(b) - set(a))}


def compare_table(diff: dict[str, Any], old_name: str) -> str:
    rows = [[key, c["old"], c["new"], "-" if c["change_pct"] is None else f"{c['change_pct']:+.1f}%"]
            for key, c in diff["changes"].items()]
    lines = [f"change against {old_name}:", table(["figure", "old", "new", "change"], rows)]
    if diff["only_old"] or diff["only_new"]:
        lines.append(f"({len(diff['only_old'])} figure(s) only in the old run, "
                     f"{len(diff['only_new'])} only in the new one)")
    return "\n".join(lines)
