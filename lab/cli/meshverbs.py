"""CLI verbs that talk to a running lab's control plane: apply, get, delete, proxy-status, certs."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lab.cli.render import table
from lab.client import LabClient
from lab.errors import LabError


def _read_files(paths: list[str]) -> list[tuple[str, str]]:
    docs = []
    for p in paths:
        if p == "-":
            docs.append(("<stdin>", sys.stdin.read()))
            continue
        try:
            docs.append((p, Path(p).read_text()))
        except (OSError, UnicodeDecodeError) as e:
            raise LabError(f"cannot read {p}: {e}") from None
    return docs


def cmd_apply(args: argparse.Namespace, lab: str) -> int:
    answer = LabClient(lab).apply(_read_files(args.filename), args.namespace)
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        for kind, ref, outcome in answer["results"]:
            print(f"{kind.lower()}/{ref} {outcome}")
        print(f"config version {answer['version']}"
              + ("" if answer.get("synced", True) else " (not every agent has it yet: see `meshlab proxy-status`)"))
    return 0


def cmd_get(args: argparse.Namespace, lab: str) -> int:
    answer = LabClient(lab).get_config(args.kind, args.name, args.namespace)
    items = answer["items"]
    if args.output == "json" or args.json:
        print(json.dumps(items, indent=2))
    elif args.output == "yaml":
        import yaml

        print(yaml.safe_dump_all(items, sort_keys=False), end="")
    elif not items:
        print("no resources found", file=sys.stderr)
    else:
        print(table(["KIND", "NAMESPACE", "NAME", "API VERSION"],
                    [[i["kind"], i["metadata"].get("namespace", "default"), i["metadata"]["name"], i["apiVersion"]]
                     for i in items]))
    return 0


def cmd_delete(args: argparse.Namespace, lab: str) -> int:
    client = LabClient(lab)
    if args.filename:
        docs = _read_files(args.filename)
        answer = client.delete_config(documents=[{"source": s, "text": t} for s, t in docs],
                                      namespace=args.namespace, missingOk=args.ignore_not_found)
    elif args.kind and args.name:
        answer = client.delete_config(kind=args.kind, name=args.name, namespace=args.namespace,
                                      missingOk=args.ignore_not_found)
    else:
        raise LabError("delete needs -f FILE, or KIND and NAME")
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        for kind, ref, outcome in answer["results"]:
            print(f"{kind.lower()}/{ref} {outcome}")
    return 0


def cmd_proxy_status(args: argparse.Namespace, lab: str) -> int:
    answer = LabClient(lab).proxy_status()
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    rows = [[a["agent"], a["node"], a["status"], a["acked"], answer["latest"], a["address"] or "",
             a["nackError"] or ""] for a in answer["agents"]]
    print(table(["AGENT", "NODE", "STATUS", "ACKED", "LATEST", "FROM", "NACK"], rows))
    return 0


def _until(iso: str) -> str:
    left = datetime.fromisoformat(iso) - datetime.now(timezone.utc)
    s = int(left.total_seconds())
    return "expired" if s < 0 else f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def cmd_certs(args: argparse.Namespace, lab: str) -> int:
    client = LabClient(lab)
    if args.action == "issue":
        if not args.identity or not args.out:
            raise LabError("usage: meshlab certs issue IDENTITY --out DIR")
        answer = client.issue_cert(args.identity, args.ttl)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "key.pem").write_text(answer["key"])
        (out / "key.pem").chmod(0o600)
        (out / "cert.pem").write_text(answer["leaf"])
        (out / "root-cert.pem").write_text(answer["root"])
        if args.json:
            print(json.dumps({k: v for k, v in answer.items() if k != "key"}, indent=2))
        else:
            print(f"wrote {out}/key.pem, {out}/cert.pem and {out}/root-cert.pem for {args.identity} "
                  f"(serial {answer['serial']}, expires {answer['notAfter']})")
        return 0
    answer = client.certs()
    if args.action == "roots":  # the trust bundle: the signing root, and the old one during a rotation
        roots = answer.get("roots") or []
        if args.json:
            print(json.dumps(roots, indent=2))
        else:
            print(table(["ROOT", "SHA256", "EXPIRES (UTC)", "SIGNING"],
                        [[r["subject"], r["sha256"][:16], r["notAfter"][:19], "yes" if r["signing"] else "no"]
                         for r in roots]))
        return 0
    if args.json:
        print(json.dumps(answer["certificates"], indent=2))
        return 0
    for r in answer.get("roots") or []:
        print(f"{'signing root' if r['signing'] else 'also trusted'}: {r['subject']} (sha256 {r['sha256'][:16]})")
    rows = [[c["identity"], c["serial"][:16], c["notAfter"][:19], _until(c["notAfter"]), c["holder"], c["keyMadeBy"],
             _root_name(c.get("issuer", ""))] for c in answer["certificates"]]
    print(table(["IDENTITY", "SERIAL", "EXPIRES (UTC)", "LEFT", "HELD BY", "KEY MADE BY", "ROOT"], rows))
    return 0


def _root_name(issuer: str) -> str:
    """The CN of an issuer name (`CN=meshlab root cluster.local #1a2b,O=meshlab` -> its CN)."""
    for part in issuer.split(","):
        if part.startswith("CN="):
            return part[3:]
    return issuer or "-"


def cmd_mode(args: argparse.Namespace, lab: str) -> int:
    answer = LabClient(lab).set_mode(args.namespace, args.mode)
    if args.json:
        print(json.dumps(answer, indent=2))
    elif not answer["changed"]:
        print(f"namespace {args.namespace} is already in mode {args.mode}")
    else:
        print(f"namespace {args.namespace}: {answer['previous']} -> {args.mode} (config version {answer['version']}, "
              f"{'all agents synced' if answer['synced'] else 'some agents not synced yet: see proxy-status'}, "
              f"{answer.get('seconds', 0):.1f}s)")
        if answer.get("restarted"):
            print(f"restarted (sidecar injection): {', '.join(answer['restarted'])}")
        if answer.get("failedRequests") is not None:
            print(f"requests that failed during the switch: {answer['failedRequests']}")
    return 0


def cmd_waypoint(args: argparse.Namespace, lab: str) -> int:
    client = LabClient(lab)
    if args.action == "list":
        answer = client.waypoints()
        if args.json:
            print(json.dumps(answer, indent=2))
        else:
            rows = [[w["namespace"], w["name"], w.get("service") or "(namespace)", w["node"], w["address"],
                     w["identity"]] for w in answer["waypoints"]]
            print(table(["NAMESPACE", "NAME", "FOR", "NODE", "ADDRESS", "IDENTITY"], rows) if rows else "no waypoints")
        return 0
    if not args.namespace:
        raise LabError(f"meshlab waypoint {args.action}: name a namespace (meshlab waypoint {args.action} NAMESPACE)")
    answer = client.set_waypoint(args.namespace, args.action == "enable", args.service)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    what = f"{args.namespace}/{args.service + '-waypoint' if args.service else 'waypoint'}"
    if not answer["changed"]:
        print(f"waypoint {what} is already {'enabled' if args.action == 'enable' else 'disabled'}")
    elif args.action == "enable":
        w = answer["waypoint"]
        print(f"waypoint {what} enabled on {w['node']} at {w['address']}:15008 as {w['identity']} "
              f"(config version {answer['version']})")
    else:
        print(f"waypoint {what} disabled (config version {answer['version']})")
    return 0


def add_verbs(verb: Any, pick_lab: Any) -> None:
    """Register the verbs on the CLI's parser (`verb(name, func, help)` makes a subparser)."""
    def with_lab(func: Any) -> Any:
        return lambda args: func(args, pick_lab(args.lab))

    p = verb("apply", with_lab(cmd_apply), "apply Istio YAML (all documents of all files, or none)")
    p.add_argument("-f", "--filename", action="append", required=True, help="a YAML file, or - for stdin")
    p.add_argument("-n", "--namespace", help="the namespace of documents that name none (default: default)")
    p.add_argument("--lab")

    p = verb("get", with_lab(cmd_get), "list mesh config (kinds: peerauthentication, authorizationpolicy, ...)")
    p.add_argument("kind", nargs="?")
    p.add_argument("name", nargs="?")
    p.add_argument("-n", "--namespace")
    p.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    p.add_argument("--lab")

    p = verb("delete", with_lab(cmd_delete), "delete mesh config by file or by kind and name")
    p.add_argument("kind", nargs="?")
    p.add_argument("name", nargs="?")
    p.add_argument("-f", "--filename", action="append")
    p.add_argument("-n", "--namespace")
    p.add_argument("--ignore-not-found", action="store_true")
    p.add_argument("--lab")

    p = verb("mode", with_lab(cmd_mode), "switch a namespace's data-plane mode live (ambient, sidecar or none)")
    p.add_argument("namespace")
    p.add_argument("mode", choices=["ambient", "sidecar", "none"])
    p.add_argument("--lab")

    p = verb("waypoint", with_lab(cmd_waypoint), "deploy or remove a namespace's (or a service's) waypoint, live")
    p.add_argument("action", choices=["enable", "disable", "list"])
    p.add_argument("namespace", nargs="?")
    p.add_argument("--service", help="a waypoint for this one service only (<service>-waypoint)")
    p.add_argument("--lab")

    p = verb("proxy-status", with_lab(cmd_proxy_status), "show which config version each agent ACKed")
    p.add_argument("--lab")

    p = verb("certs", with_lab(cmd_certs), "list certificates in use and the roots (certs roots), or issue one: "
             "certs issue IDENTITY --out DIR")
    p.add_argument("action", nargs="?", choices=["list", "roots", "issue"], default="list")
    p.add_argument("identity", nargs="?", help="spiffe://<trust domain>/ns/<ns>/sa/<sa>")
    p.add_argument("--out", help="folder for key.pem, cert.pem and root-cert.pem")
    p.add_argument("--ttl", type=float, help="seconds (default: the lab's certificate TTL)")
    p.add_argument("--lab")
