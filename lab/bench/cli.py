"""The `meshlab bench [SUITE]` verb: options, running a suite, writing table, JSON and plot, --compare."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lab.errors import LabError

SUITES = ("all", "l4", "l7", "cost", "scale")
HELP = ("all (default): the whole matrix, cost model and scale check; l4: one stream's throughput vs stunnel; "
        "l7: keep-alive requests through waypoint and sidecar vs HAProxy; cost: sidecar vs ambient memory and CPU "
        "of a topology; scale: config ACK time on an N-node lab")


class BenchUsageError(LabError):
    """A bad bench option: exit code 2, like any bad usage."""

    exit_code = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", nargs="?", default="all", choices=SUITES, help=HELP)
    p.add_argument("--duration", type=float, help="seconds per path (l4: of bulk transfer; default 5) "
                                                  "or per rate (default 3)")
    p.add_argument("--rates", help="request rates, e.g. 100,1000,max (default: 100,1000,max; l7: max)")
    p.add_argument("--paths", help="paths to measure, comma-separated (default: all of the suite's)")
    p.add_argument("--skip", default="", help="sections of `all` to leave out: l4,http,cost,scale")
    p.add_argument("--topology", default="bookinfo", help="cost model topology: a file or a shipped name")
    p.add_argument("--qps", type=float, default=20.0, help="cost model load in requests per second (default 20)")
    p.add_argument("--target", help="cost model load target SERVICE:PORT/PATH (default: productpage's page)")
    p.add_argument("--nodes", type=int, default=50, help="scale: nodes (default 50)")
    p.add_argument("--workloads", type=int, default=4, help="scale: workloads per node (default 4)")
    p.add_argument("--changes", type=int, default=20, help="scale: config changes to time (default 20)")
    p.add_argument("--provider", default="local", choices=["local", "docker", "ssh"],
                   help="where the lab runs (only local is supported for now)")
    p.add_argument("-o", "--output", help="write the JSON result to this file")
    p.add_argument("--plot", help="cost model plot (SVG); default: next to -o, else meshlab-bench-cost.svg")
    p.add_argument("--compare", metavar="OLD.json", help="show the change of every figure against an earlier run")
    p.add_argument("--against", metavar="NEW.json", help="with --compare: compare this file instead of running")


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _plot_path(args: argparse.Namespace) -> Path:
    if args.plot:
        return Path(args.plot)
    return Path(args.output).with_suffix(".svg") if args.output else Path("meshlab-bench-cost.svg")


def run_suite(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Run the chosen suite; its result and its text table (BenchUsageError for bad options)."""
    from lab.bench import cost, l4, l7, matrix, scale
    from lab.cli.main import find_topology

    try:
        if args.duration is not None and not 0 < args.duration <= 600:
            raise ValueError(f"--duration: {args.duration:g} is out of range (0 < seconds <= 600)")
        if args.suite == "l4":
            paths = tuple(args.paths.split(",")) if args.paths else ("direct", "ztunnel", "hbone", "stunnel")
            l7.check_paths(paths, ("direct", "ztunnel", "hbone", "stunnel"))
            result = l4.run_l4_bench(args.duration or 5.0, paths=paths)
            return result, l4.format_table(result)
        duration = args.duration or 3.0
        if args.suite == "l7":
            rates = l7.parse_rates(args.rates or "max")
            paths = tuple(args.paths.split(",")) if args.paths else l7.L7_PATHS
            l7.check_paths(paths, l7.HTTP_PATHS)
            result = l7.run_l7_bench(duration, paths, rates, args.provider, _progress)
            return result, matrix.format_l7(result)
        if args.suite == "cost":
            result = cost.run_cost_bench(find_topology(args.topology), args.qps, duration, args.target,
                                         _plot_path(args), args.provider, _progress)
            return result, cost.format_cost(result)
        if args.suite == "scale":
            result = scale.run_scale_bench(args.nodes, args.workloads, args.changes, args.provider, _progress)
            return result, scale.format_scale(result)
        rates = l7.parse_rates(args.rates or ",".join(matrix.DEFAULT_RATES))
        paths = tuple(args.paths.split(",")) if args.paths else l7.HTTP_PATHS
        skip = tuple(s for s in args.skip.split(",") if s)
        result = matrix.run_matrix(duration_s=duration, rates=rates, paths=paths, skip=skip,
                                   topology=find_topology(args.topology), qps=args.qps, plot=_plot_path(args),
                                   nodes=args.nodes, workloads=args.workloads, changes=args.changes,
                                   provider=args.provider, progress=_progress)
        return result, matrix.format_matrix(result)
    except ValueError as exc:
        raise BenchUsageError(f"bench: {exc}") from None


def cmd_bench(args: argparse.Namespace) -> int:
    from lab.bench import report

    if args.against and not args.compare:
        raise BenchUsageError("bench: --against NEW.json needs --compare OLD.json")
    old = report.load_result(args.compare) if args.compare else None  # fail before a long run, not after
    if args.against:
        result, text = report.load_result(args.against), ""
    else:
        result, text = run_suite(args)
        if args.output:
            Path(args.output).write_text(json.dumps(result, indent=2))
            text += f"\nwrote {args.output}"
        if result.get("plot") or result.get("cost", {}).get("plot"):
            text += f"\nwrote plot {result.get('plot') or result['cost']['plot']}"
    doc: dict[str, Any] = result
    if old is not None:
        diff = report.compare(old, result)
        doc = {"result": result, "compare": diff}
        text = (text + "\n\n" if text else "") + report.compare_table(diff, args.compare)
    print(json.dumps(doc, indent=2) if args.json else text)
    return 1 if result.get("errors") else 0
