"""`meshlab fault add|list|rm`: live faults (lab/faults), through the lab API."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lab.cli.render import table
from lab.client import LabClient
from lab.errors import LabError
from lab.faults.catalogue import FaultError, help_text


def _params(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise FaultError(f"--param {pair!r}: want NAME=VALUE (e.g. --param latency=200)")
        out[name.strip()] = value.strip()
    return out


def _left(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds + 0.999)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def cmd_fault(args: argparse.Namespace, lab: str) -> int:
    client = LabClient(lab)
    if args.action == "add":
        if not args.kind:
            raise FaultError("usage: meshlab fault add KIND [TARGET] [--param NAME=VALUE ...] (see --help for kinds)")
        answer = client.add_fault(args.kind, args.target, _params(args.param or []), args.ttl, args.toxicity,
                                  args.direction)
        if args.json:
            print(json.dumps(answer, indent=2))
        elif answer.get("oneShot"):
            print(f"{answer['kind']} on {answer['targetText']}: done ({answer['note']})")
        else:
            ttl = f", expires in {_left(answer['expires'] - answer['created'])}" if answer.get("expires") else ""
            print(f"fault {answer['id']} added: {answer['kind']} on {answer['targetText']} "
                  f"{_describe_params(answer['params'])}{ttl} (config version {answer['version']})")
        return 0
    if args.action == "rm":
        if not args.all and not args.kind:
            raise FaultError("usage: meshlab fault rm ID | --all")
        answer = client.remove_fault(args.kind, everything=args.all)
        if args.json:
            print(json.dumps(answer, indent=2))
        else:
            print(f"removed {', '.join(answer['removed']) or 'nothing'} (config version {answer['version']})")
            for e in answer.get("errors") or []:
                print(f"  revert failed: {e}")
        return 1 if answer.get("errors") else 0
    answer = client.faults()
    if args.json:
        print(json.dumps(answer["faults"], indent=2))
        return 0
    if not answer["faults"]:
        print("no faults")
        return 0
    rows = [[f["id"], f["kind"], f["layer"], f["targetText"], _describe_params(f["params"]), f["direction"],
             f"{f['toxicity']:g}", _left(f.get("expiresIn"))] for f in answer["faults"]]
    print(table(["ID", "KIND", "LAYER", "TARGET", "PARAMS", "DIRECTION", "TOXICITY", "EXPIRES IN"], rows))
    return 0


def _describe_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items()) or "-"


def add_verbs(verb: Any, pick_lab: Any) -> None:
    """Register `fault` on the CLI's parser."""
    from lab.cli.main import parse_seconds

    p = verb("fault", lambda args: cmd_fault(args, pick_lab(args.lab)),
             "add, list and remove live faults (latency, partition, abort, ...)")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("examples:\n  meshlab fault add latency echo --param latency=200 --ttl 30s\n"
                "  meshlab fault add abort reviews --param status=503 --param percentage=50\n"
                "  meshlab fault add partition 'node-1->node-2' --direction upstream   (quote edges: > is a shell redirect)\n"
                "  meshlab fault list\n  meshlab fault rm f3   (or --all)\n\n" + help_text())
    p.add_argument("action", choices=["add", "list", "rm"], help="add KIND [TARGET], list, rm ID|--all")
    p.add_argument("kind", nargs="?", metavar="KIND|ID", help="the fault kind (add) or the fault id (rm)")
    p.add_argument("target", nargs="?", metavar="TARGET", help="service, workload, node, or SRC->DST")
    p.add_argument("-p", "--param", action="append", metavar="NAME=VALUE", help="a parameter of the kind")
    p.add_argument("--ttl", type=parse_seconds, metavar="DURATION", help="remove it by itself after (30s, 5m)")
    p.add_argument("--toxicity", type=_fraction, help="share of connections hit, 0..1 (default 1)")
    p.add_argument("--direction", choices=["upstream", "downstream", "both"],
                   help="upstream: client to server; downstream: server to client (L4 default)")
    p.add_argument("--all", action="store_true", help="rm: every fault")
    p.add_argument("--lab")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (want 0..1)") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"toxicity must be from 0 to 1, not {value}")
    return value


__all__ = ["add_verbs", "cmd_fault", "LabError"]
