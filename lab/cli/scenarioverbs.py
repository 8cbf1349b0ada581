"""`meshlab scenario run|list|validate`: scripted workshop exercises (lab/scenario, topologies/scenarios/)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lab.cli.render import table
from lab.errors import LabError
from lab.scenario import ScenarioError, find_scenario, list_scenarios, load_scenario, run_scenario


def cmd_run(args: argparse.Namespace) -> int:
    if not args.name:
        raise LabError("meshlab scenario run: name a scenario, or all (`meshlab scenario list` shows them)")
    # With --json the progress goes to stderr, so stdout is one JSON document.
    out = (lambda line: print(line, file=sys.stderr)) if args.json else (lambda line: print(line, flush=True))
    if args.name == "all":
        return run_all(args, out)
    scenario = load_scenario(find_scenario(args.name))
    report = run_scenario(scenario, provider=args.provider, keep=args.keep, lab=args.lab, out=out)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


def run_all(args: argparse.Namespace, out: Any) -> int:
    """Every shipped scenario that runs on the provider, one after the other; a summary at the end."""
    if args.keep or args.lab:
        raise LabError("meshlab scenario run all: --keep and --lab name one scenario's lab; run that one alone")
    reports, rows = [], []
    for path in list_scenarios():
        scenario = load_scenario(path)
        provider = args.provider or "local"
        if provider not in scenario.providers:
            rows.append([path.stem, "skipped", f"runs on {', '.join(scenario.providers)}", ""])
            continue
        try:
            report = run_scenario(scenario, provider=args.provider, out=out)
        except LabError as e:  # a lab that would not come up: the next scenario may still run
            report = {"scenario": scenario.name, "passed": False, "error": str(e), "checks": 0, "failed": 0}
            out(f"scenario {scenario.name}: ERROR {e}")
        reports.append(report)
        rows.append([path.stem, "passed" if report["passed"] else "FAILED",
                     f"{report['checks'] - report['failed']}/{report['checks']} checks",
                     f"{report.get('seconds', 0):.0f}s"])
        out("")
    out(table(["SCENARIO", "RESULT", "CHECKS", "TIME"], rows))
    if args.json:
        print(json.dumps(reports, indent=2))
    return 0 if reports and all(r["passed"] for r in reports) else 1


def cmd_list(args: argparse.Namespace) -> int:
    rows, docs = [], []
    for path in list_scenarios():
        try:
            s = load_scenario(path)
        except ScenarioError as e:
            rows.append([path.stem, f"(invalid: {len(e.problems)} error(s))", "", ""])
            docs.append({"file": str(path), "valid": False, "errors": [str(p) for p in e.problems]})
            continue
        rows.append([path.stem, s.title, ", ".join(s.providers), f"{len(s.steps)} steps, {s.checks} checks"])
        docs.append({"file": str(path), "name": s.name, "title": s.title, "providers": list(s.providers),
                     "steps": len(s.steps), "checks": s.checks, "explain": s.explain})
    if args.json:
        print(json.dumps(docs, indent=2))
    else:
        print(table(["SCENARIO", "TITLE", "PROVIDERS", "SIZE"], rows) if rows else "no scenarios")
        if rows:
            print("\nrun one with `meshlab scenario run NAME` (or `make scenario S=NAME`)")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    names = [args.name, *args.files] if args.name else []
    paths = [find_scenario(n) for n in names] if names else list_scenarios()
    failed = 0
    for path in paths:
        try:
            s = load_scenario(path)
            print(f"{path}: valid ({len(s.steps)} steps, {s.checks} checks)")
        except ScenarioError as e:
            failed += 1
            print(f"{path}: {len(e.problems)} error(s)", file=sys.stderr)
            for p in e.problems:
                print(f"  {p}", file=sys.stderr)
    return 2 if failed else 0


def cmd_scenario(args: argparse.Namespace) -> int:
    if args.action == "list":
        return cmd_list(args)
    if args.action == "validate":
        return cmd_validate(args)
    return cmd_run(args)


def add_verbs(verb: Any) -> None:
    """Register `scenario` on the CLI's parser."""
    p = verb("scenario", cmd_scenario, "run a scripted workshop exercise with checks (list shows them)")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("examples:\n  meshlab scenario list\n  meshlab scenario run mtls\n"
                "  meshlab scenario run traffic-shifting --provider docker --keep\n"
                "  meshlab scenario validate my-exercise.yaml\n\n"
                "Exit status: 0 when every check passed, 1 when a check failed or a step was refused,\n"
                "2 for an invalid scenario file.")
    p.add_argument("action", choices=["run", "list", "validate"])
    p.add_argument("name", nargs="?", metavar="NAME",
                   help="run: a shipped scenario's name (or number), a file, or all")
    p.add_argument("files", nargs="*", metavar="FILE", help=argparse.SUPPRESS)
    p.add_argument("--provider", choices=["local", "docker", "ssh"], help="override the topology's provider")
    p.add_argument("--keep", action="store_true", help="leave the lab up afterwards, as the scenario left it")
    p.add_argument("--lab", help="the lab's name (default: the topology's name)")
