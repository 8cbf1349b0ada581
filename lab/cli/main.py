"""`meshlab VERB ...`: parses arguments, calls the lab, renders the answer.

Exit codes scripts can rely on: 0 success, 1 a lab error, 2 bad usage or an
invalid topology, 3 no such lab, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from lab import image, orchestrator
from lab.bench.cli import add_arguments as bench_arguments
from lab.cli import render
from lab.cli import faultverbs, scenarioverbs
from lab.cli.meshverbs import add_verbs
from lab.errors import LabError, LabNotFound, TopologyError
from lab.state import list_labs

TOPOLOGIES_DIR = Path(__file__).resolve().parent.parent.parent / "topologies"


def parse_seconds(text: str) -> float:
    """`30s`, `10m`, `2h`, `500ms` or plain seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * units[unit]
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 30s, 10m or 24h)") from None


def find_topology(arg: str) -> Path:
    """A topology path, or the name of one shipped in topologies/ (`bookinfo`)."""
    path = Path(arg)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    shipped = TOPOLOGIES_DIR / f"{arg}.yaml"
    if shipped.exists():
        return shipped
    known = ", ".join(sorted(p.stem for p in TOPOLOGIES_DIR.glob("*.yaml")))
    raise LabError(f"no topology file '{arg}' and no shipped topology of that name (shipped: {known})")


def pick_lab(name: str | None) -> str:
    """The lab a verb acts on: the one named, or the only one there is."""
    if name:
        return name
    labs = list_labs()
    if len(labs) == 1:
        return labs[0]
    if not labs:
        raise LabNotFound("no lab is up (start one with `meshlab up TOPOLOGY`)")
    raise LabError(f"several labs are up ({', '.join(labs)}): name one with --lab")


def emit(args: argparse.Namespace, doc: Any, text: str) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True) if getattr(args, "json", False) else text)


# -- verbs -------------------------------------------------------------------

def cmd_validate(args: argparse.Namespace) -> int:
    from lab.topology.loader import load_topology

    failed = 0
    results = []
    for f in args.files:
        try:
            topo = load_topology(find_topology(f))
            results.append({"file": f, "valid": True, "name": topo.name})
            if not args.json:
                print(f"{f}: valid ({render.topology_summary(topo)})")
        except TopologyError as e:
            failed += 1
            results.append({"file": f, "valid": False, "errors": [str(p) for p in e.problems]})
            if not args.json:
                print(f"{f}: {len(e.problems)} error(s)", file=sys.stderr)
                for p in e.problems:
                    print(f"  {p}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    return 2 if failed else 0


def cmd_up(args: argparse.Namespace) -> int:
    from lab.topology.loader import load_topology

    topo = load_topology(find_topology(args.topology))
    progress = render.Progress(enabled=not args.json)
    doc = asyncio.run(orchestrator.up(topo, provider=args.provider, progress=progress, timeout=args.timeout,
                                      cert_ttl=args.cert_ttl))
    emit(args, doc, render.up_summary(doc))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    name = pick_lab(args.lab)
    doc = asyncio.run(orchestrator.down(name))
    emit(args, doc, render.down_summary(doc))
    return 1 if doc["errors"] else 0


def cmd_status(args: argparse.Namespace) -> int:
    doc = asyncio.run(orchestrator.status(pick_lab(args.lab)))
    emit(args, doc, render.status_table(doc))
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    doc = asyncio.run(orchestrator.clean(args.lab))
    emit(args, doc, "\n".join(f"removed {r}" for r in doc["removed"]) or "nothing to clean")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    extra = ["--qps", str(args.qps), "--connections", str(args.connections), "--duration", args.duration,
             "--timeout", args.timeout]
    if args.path:
        extra += ["--path", args.path]
    if args.n:
        extra += ["-n", str(args.n)]
    for h in args.header or []:
        extra += ["--header", h]
    if args.count_body:
        extra += ["--count-body", args.count_body]
    if args.method:
        extra += ["--method", args.method]
    doc = asyncio.run(orchestrator.exec_load(pick_lab(args.lab), args.target, args.source, extra))
    emit(args, doc, render.load_report(doc))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    return asyncio.run(render.show_logs(pick_lab(args.lab), args.process, args.tail, args.follow))


def cmd_bench(args: argparse.Namespace) -> int:
    from lab.bench.cli import cmd_bench as run_bench

    return run_bench(args)


def cmd_tui(args: argparse.Namespace) -> int:
    # The TUI is a separate client of the lab: `lab` never imports it, so start it as its own program.
    argv = [sys.executable, "-m", "tui"] + (["--lab", args.lab] if args.lab else [])
    os.execv(sys.executable, argv)
    return 0  # not reached


# -- parser ------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshlab", description="A service-mesh lab that runs without Kubernetes.")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    def verb(name: str, func: Any, help: str, json_flag: bool = True) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        if json_flag:
            p.add_argument("--json", action="store_true", help="print machine-readable JSON")
        return p

    p = verb("validate", cmd_validate, "check topology files and list every error with file and line")
    p.add_argument("files", nargs="+", metavar="FILE")

    p = verb("up", cmd_up, "bring a lab up from a topology (again: reconcile it)")
    p.add_argument("topology", metavar="TOPOLOGY", help="a topology file, or a shipped one by name (bookinfo)")
    p.add_argument("--provider", choices=["local", "docker", "ssh"], help="override the topology's provider")
    p.add_argument("--timeout", type=float, default=orchestrator.READY_TIMEOUT,
                   help="seconds to wait for every workload to be ready (default %(default)s)")
    p.add_argument("--cert-ttl", type=parse_seconds, metavar="DURATION",
                   help="workload certificate lifetime, e.g. 30s, 10m, 24h (default 24h; short shows rotation)")

    for name, func, help in (("down", cmd_down, "remove everything a lab started"),
                             ("status", cmd_status, "show a lab's nodes, workloads, addresses and processes")):
        p = verb(name, func, help)
        p.add_argument("lab", nargs="?", help="lab name (default: the only lab)")
        p.add_argument("--lab", dest="lab", help=argparse.SUPPRESS)

    p = verb("clean", cmd_clean, "remove leftovers of a lab (or of every lab) by their tags")
    p.add_argument("lab", nargs="?", help="lab name (default: every lab)")

    p = verb("load", cmd_load, "run a bounded load from inside the lab against a service")
    p.add_argument("target", metavar="SERVICE[:PORT][/PATH]", help="for example productpage:9080/productpage")
    p.add_argument("--lab")
    p.add_argument("--from", dest="source", help="workload or node to send from (default: a client workload)")
    p.add_argument("--qps", type=float, default=0, help="requests per second in all (0: as fast as possible)")
    p.add_argument("-c", "--connections", type=int, default=4)
    p.add_argument("-d", "--duration", default="5s", help="how long (default 5s, at most 1h)")
    p.add_argument("-n", type=int, default=0, help="stop after this many requests")
    p.add_argument("--path", help="request path (default: the one in the target, else /)")
    p.add_argument("-H", "--header", action="append", help="extra request header K:V (repeatable)")
    p.add_argument("--timeout", default="5s", help="per-request timeout")
    p.add_argument("--count-body", metavar="REGEX", help="count responses by what REGEX matches in the body")
    p.add_argument("-X", "--method", help="HTTP method (default GET)")

    p = verb("logs", cmd_logs, "show the log of a workload or process", json_flag=False)
    p.add_argument("process", metavar="[NODE/]PROCESS")
    p.add_argument("--lab")
    p.add_argument("--tail", type=int, default=50)
    p.add_argument("-f", "--follow", action="store_true")

    add_verbs(verb, pick_lab)
    faultverbs.add_verbs(verb, pick_lab)
    scenarioverbs.add_verbs(verb)

    p = verb("bench", cmd_bench, "measure the mesh's paths and costs against C baselines, in one run on this machine")
    bench_arguments(p)
    image.add_verb(verb)

    p = verb("tui", cmd_tui, "open the terminal UI on a running lab", json_flag=False)
    p.add_argument("--lab")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TopologyError as e:
        print(f"meshlab: invalid topology: {len(e.problems)} error(s)", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        return e.exit_code
    except LabError as e:
        print(f"meshlab: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("meshlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
