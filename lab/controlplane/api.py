"""The lab API: everything the CLI and the TUI do, as HTTP+JSON routes on loopback with a bearer token."""

from __future__ import annotations

import asyncio
import hmac
import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from lab.controlplane.httpserver import ApiRequest
from lab.ca.authority import issuer_of
from lab.errors import ConfigError, LabError
from lab.meshconfig import ConfigStore, parse_config, resolve_kind
from lab.meshconfig.parse import DEFAULT_NAMESPACE

if TYPE_CHECKING:
    from lab.controlplane.daemon import ControlPlane


ADMIN_PORT = 15000  # every agent's admin API (config dump, certificates)


def _agent_address(state: dict[str, Any], agent: str, node: str) -> str | None:
    """Where an agent serves its admin port: a ztunnel on its node's address, a waypoint or sidecar on its own."""
    kind, _, who = agent.partition(":")
    if kind == "ztunnel":
        return state["nodes"].get(node, {}).get("address")
    if kind == "waypoint":
        return next((w["address"] for w in (state.get("waypoints") or {}).values()
                     if f"{w['namespace']}/{w['name']}" == who), None)
    if kind == "sidecar":
        from lab.dataplane import sidecar_workloads

        return state["workloads"][who].get("sidecarAddress") if who in sidecar_workloads(state) else None
    return None


def _problems(e: ConfigError) -> dict[str, Any]:
    return {"error": f"invalid config: {len(e.problems)} error(s)", "problems": [str(p) for p in e.problems]}


class LabApi:
    """Routes of the lab API (see `lab.client.LabClient` for the client side)."""

    def __init__(self, cp: ControlPlane, token: str) -> None:
        self.cp = cp
        self.token = token

    async def handle(self, req: ApiRequest) -> tuple[int, Any]:
        given = req.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(self.token, given):
            return 401, {"error": "missing or wrong API token (see the lab folder's api-token)"}
        route = self.ROUTES.get((req.method, req.path))
        if route is None:
            known = sorted({p for _, p in self.ROUTES})
            return 404, {"error": f"no route {req.method} {req.path}", "routes": known}
        try:
            return await route(self, req)
        except ConfigError as e:
            return 400, _problems(e)
        except LabError as e:
            return (404 if type(e).__name__ == "ConfigNotFound" else 400), {"error": str(e)}

    async def status(self, req: ApiRequest) -> tuple[int, Any]:
        return 200, {"lab": self.cp.lab, "state": self.cp.state, "configVersion": self.cp.channel.version,
                     "storeVersion": self.cp.store.version, "startedAt": self.cp.started}

    async def proxy_status(self, req: ApiRequest) -> tuple[int, Any]:
        return 200, {"latest": self.cp.channel.version, "agents": self.cp.channel.proxy_status()}

    async def wait_synced(self, req: ApiRequest) -> tuple[int, Any]:
        timeout = float((req.body or {}).get("timeout", 10))
        ok = await self.cp.channel.wait_synced(timeout, list((req.body or {}).get("expect") or []))
        return 200, {"synced": ok, "agents": self.cp.channel.proxy_status()}

    async def reload(self, req: ApiRequest) -> tuple[int, Any]:
        return 200, {"version": await self.cp.reload()}

    async def apply(self, req: ApiRequest) -> tuple[int, Any]:
        body = req.body or {}
        objects = []
        namespace = str(body.get("namespace") or DEFAULT_NAMESPACE)  # for documents that name none (kubectl -n)
        for doc in body.get("documents", []):  # every file is parsed before anything is applied
            objects += parse_config(doc["text"], doc.get("source", "<api>"), namespace)
        outcomes = self.cp.store.apply(objects)
        changed = [f"{kind.lower()}/{ref} {outcome}" for kind, ref, outcome in outcomes if outcome != "unchanged"]
        version = self.cp.config_changed("applied " + ", ".join(changed)) if changed else self.cp.channel.version
        return 200, {"results": [list(o) for o in outcomes], "version": version, "synced": await self._synced(body)}

    async def _synced(self, body: dict[str, Any]) -> bool:
        """Wait (briefly) until every agent runs the new version, so what a user does next sees it."""
        return await self.cp.channel.wait_synced(float(body.get("waitSeconds", 5)))

    async def get_config(self, req: ApiRequest) -> tuple[int, Any]:
        kind = resolve_kind(req.query["kind"]) if req.query.get("kind") else None
        objs = self.cp.store.get(kind, req.query.get("name"), req.query.get("namespace"))
        return 200, {"items": [o.to_dict() for o in objs], "version": self.cp.store.version}

    async def delete_config(self, req: ApiRequest) -> tuple[int, Any]:
        body = req.body or {}
        store: ConfigStore = self.cp.store
        if body.get("documents"):
            namespace = str(body.get("namespace") or DEFAULT_NAMESPACE)
            objects = {}  # by key: two files may name the same object (kubectl delete -f a -f b)
            for doc in body["documents"]:
                for obj in parse_config(doc["text"], doc.get("source", "<api>"), namespace):
                    objects.setdefault(obj.key, obj)
            outcomes = store.delete_objects(list(objects.values()), missing_ok=bool(body.get("missingOk")))
        else:
            outcomes = store.delete(resolve_kind(body["kind"]), body["name"], body.get("namespace") or "default",
                                    missing_ok=bool(body.get("missingOk")))
        version = self.cp.config_changed("deleted " + ", ".join(f"{k.lower()}/{r}" for k, r, _ in outcomes))
        return 200, {"results": [list(o) for o in outcomes], "version": version, "synced": await self._synced(body)}

    async def certs(self, req: ApiRequest) -> tuple[int, Any]:
        return 200, {"root": self.cp.ca.root_pem.decode(), "roots": self.cp.ca.roots(), "certificates": [
            {"identity": c.identity, "serial": c.serial, "notBefore": c.not_before.isoformat(),
             "notAfter": c.not_after.isoformat(), "holder": c.holder, "keyMadeBy": "CA" if c.ca_made_key else "agent",
             "issuer": issuer_of(c.leaf_pem)}
            for c in self.cp.ca.in_use()]}

    async def issue_cert(self, req: ApiRequest) -> tuple[int, Any]:
        body = req.body or {}
        ttl = timedelta(seconds=float(body.get("ttlSeconds") or self.cp.ttl.total_seconds()))
        key, issued = self.cp.ca.issue(str(body.get("identity")), ttl, holder=str(body.get("holder") or "meshlab certs"))
        return 200, {"key": key.decode(), "leaf": issued.leaf_pem.decode(), "root": issued.root_pem.decode(),
                     "serial": issued.serial, "notAfter": issued.not_after.isoformat()}

    async def set_mode(self, req: ApiRequest) -> tuple[int, Any]:
        body = req.body or {}
        return 200, await self.cp.set_mode(str(body.get("namespace")), str(body.get("mode")))

    async def set_waypoint(self, req: ApiRequest) -> tuple[int, Any]:
        body = req.body or {}
        service = body.get("service")
        return 200, await self.cp.set_waypoint(str(body.get("namespace")), bool(body.get("enabled", True)),
                                               str(service) if service else None)

    async def list_waypoints(self, req: ApiRequest) -> tuple[int, Any]:
        from lab.dataplane import waypoints
        return 200, {"waypoints": sorted(waypoints(self.cp.state).values(), key=lambda w: (w["namespace"], w["name"]))}

    async def nodes(self, req: ApiRequest) -> tuple[int, Any]:
        from lab import orchestrator

        return 200, await orchestrator.status(self.cp.lab)

    async def traffic(self, req: ApiRequest) -> tuple[int, Any]:
        from lab.controlplane import reach
        from lab.controlplane.proxies import agent_addresses

        return 200, await self.cp.traffic.snapshot(agent_addresses(self.cp.state), reach.routes(self.cp.state))

    async def logs(self, req: ApiRequest) -> tuple[int, Any]:
        from lab.handle import Lab

        node, process = req.query.get("node", ""), req.query.get("process", "")
        if node not in self.cp.state["nodes"]:
            return 404, {"error": f"no node '{node}' (nodes: {', '.join(self.cp.state['nodes'])})"}
        lab = Lab(self.cp.lab)
        try:
            text = await lab.provider_of(node, self.cp.state).logs(node, process, tail=int(req.query.get("tail", 100)))
        finally:
            await lab.close()
        return 200, {"node": node, "process": process, "text": text}

    async def usage(self, req: ApiRequest) -> tuple[int, Any]:
        """RSS and CPU seconds of every process on every node, with its role (ztunnel, workload, ...)."""
        from lab.handle import Lab

        lab = Lab(self.cp.lab)
        out = []
        try:
            for node in self.cp.state["nodes"]:
                provider = lab.provider_of(node, self.cp.state)
                try:
                    roles = {p.name: p.labels.get("role", "") for p in await provider.list_processes(node)}
                    usage = await provider.resource_usage(node)
                except LabError as e:
                    out.append({"node": node, "error": str(e)})
                    continue
                out += [{"node": node, "process": name, "role": roles.get(name, ""), "pid": u.pid,
                         "rssBytes": u.rss_bytes, "cpuSeconds": u.cpu_seconds} for name, u in sorted(usage.items())]
        finally:
            await lab.close()
        return 200, {"processes": out}

    async def events(self, req: ApiRequest) -> tuple[int, Any]:
        since = float(req.query.get("since", 0))
        return 200, {"events": [e for e in self.cp.events if e["time"] > since]}

    async def start_load(self, req: ApiRequest) -> tuple[int, Any]:
        run = await self.cp.loads.start(self.cp.state, req.body or {})
        self.cp.event(f"load run {run.id} started: {run.target} from {run.node}")
        return 200, run.to_json()

    async def list_loads(self, req: ApiRequest) -> tuple[int, Any]:
        return 200, {"runs": [r.to_json() for r in await self.cp.loads.refresh(self.cp.state)]}

    async def stop_load(self, req: ApiRequest) -> tuple[int, Any]:
        run = await self.cp.loads.stop(self.cp.state, str((req.body or {}).get("id")))
        return 200, run.to_json()

    async def list_faults(self, req: ApiRequest) -> tuple[int, Any]:
        return 200, {"faults": self.cp.faults.list(), "version": self.cp.channel.version}

    async def fault_kinds(self, req: ApiRequest) -> tuple[int, Any]:
        """The fault catalogue: what each kind targets, its parameters (type, unit, default), who enforces it."""
        from lab.faults.catalogue import kinds_json
        from lab.faults.store import DIRECTIONS

        return 200, {"kinds": kinds_json(), "directions": list(DIRECTIONS)}

    async def add_fault(self, req: ApiRequest) -> tuple[int, Any]:
        body = req.body or {}
        fault = await self.cp.faults.add(body)
        return 200, {**fault, "synced": await self._synced(body)}

    async def remove_fault(self, req: ApiRequest) -> tuple[int, Any]:
        from lab.faults import FaultNotFound

        body = req.body or {}
        if not body.get("all") and not body.get("id"):
            return 400, {"error": "say which fault: an id, or all"}
        try:
            answer = await self.cp.faults.remove(str(body.get("id") or ""), everything=bool(body.get("all")))
        except FaultNotFound as e:
            return 404, {"error": str(e)}
        return 200, {**answer, "synced": await self._synced(body)}

    async def config_dump(self, req: ApiRequest) -> tuple[int, Any]:
        """An agent's own /config_dump (admin port 15000): `agent` as proxy-status names it, `node` for a ztunnel."""
        from lab.controlplane import reach

        agent, node = req.query.get("agent", "ztunnel"), req.query.get("node", "")
        if agent == "ztunnel" and not node:
            return 400, {"error": f"node: say whose ztunnel (nodes: {', '.join(self.cp.state['nodes'])})"}
        address = _agent_address(self.cp.state, agent, node)
        if address is None:
            known = [a["agent"] + (f" on {a['node']}" if a["agent"] == "ztunnel" else "")
                     for a in self.cp.channel.proxy_status()]
            return 404, {"error": f"no agent '{agent}'" + (f" on node '{node}'" if node else "")
                         + f" (agents: {', '.join(known) or 'none'})"}
        routes = reach.routes(self.cp.state)
        try:
            status, body = await asyncio.to_thread(reach.get, address, ADMIN_PORT, "/config_dump", 5.0, routes)
            dump = json.loads(body)
        except (OSError, ValueError) as e:
            return 502, {"error": f"agent {agent} at {reach.where(address, ADMIN_PORT, routes)} does not answer "
                                  f"its config dump ({e})"}
        if status != 200:
            return 502, {"error": f"agent {agent} answered its config dump with HTTP {status}"}
        return 200, {"agent": agent, "node": node or dump.get("node"), "address": address, "dump": dump}

    ROUTES = {
        ("GET", "/v1/faults"): list_faults,
        ("GET", "/v1/faults/kinds"): fault_kinds,
        ("GET", "/v1/config-dump"): config_dump,
        ("POST", "/v1/faults"): add_fault,
        ("DELETE", "/v1/faults"): remove_fault,
        ("POST", "/v1/loads"): start_load,
        ("GET", "/v1/loads"): list_loads,
        ("POST", "/v1/loads/stop"): stop_load,
        ("GET", "/v1/nodes"): nodes,
        ("GET", "/v1/traffic"): traffic,
        ("GET", "/v1/logs"): logs,
        ("GET", "/v1/events"): events,
        ("GET", "/v1/usage"): usage,
        ("POST", "/v1/mode"): set_mode,
        ("POST", "/v1/waypoints"): set_waypoint,
        ("GET", "/v1/waypoints"): list_waypoints,
        ("GET", "/v1/status"): status,
        ("GET", "/v1/proxy-status"): proxy_status,
        ("POST", "/v1/proxy-status/wait"): wait_synced,
        ("POST", "/v1/reload"): reload,
        ("POST", "/v1/config"): apply,
        ("GET", "/v1/config"): get_config,
        ("DELETE", "/v1/config"): delete_config,
        ("GET", "/v1/certs"): certs,
        ("POST", "/v1/certs"): issue_cert,
    }
