"""The lab API client: how the CLI and the TUI talk to a running lab's control plane."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from typing import Any

from lab.errors import LabError, LabNotFound
from lab.state import lab_dir


class LabApiError(LabError):
    """The lab API answered with an error; `problems` lists config errors with file and line."""

    def __init__(self, status: int, message: str, problems: list[str] | None = None) -> None:
        self.status = status
        self.problems = problems or []
        super().__init__("\n  ".join([message, *self.problems]))
        self.exit_code = 2 if status == 400 else 3 if status == 404 else 1


class LabClient:
    """A connection-per-call JSON client of one lab's API."""

    def __init__(self, lab: str, timeout: float = 60.0) -> None:
        self.lab = lab
        self.timeout = timeout
        folder = lab_dir(lab)
        if not (folder / "state.json").exists():
            raise LabNotFound(f"no lab named '{lab}' (looked in {folder})")
        try:
            info = json.loads((folder / "controlplane.json").read_text())
            self.token = (folder / "api-token").read_text().strip()
        except (OSError, ValueError):
            raise LabError(f"the control plane of lab '{lab}' is not running (run `meshlab up` again to start it)") \
                from None
        url = urllib.parse.urlsplit(info["api"])
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80

    def call(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None) -> Any:
        target = path + ("?" + urllib.parse.urlencode({k: v for k, v in (query or {}).items() if v}) if query else "")
        payload = json.dumps(body).encode() if body is not None else b""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, target, body=payload, headers={
                "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            data = json.loads(resp.read() or b"null")
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise LabError(f"the control plane of lab '{self.lab}' does not answer ({e}); "
                           f"run `meshlab up` again to restart it") from None
        finally:
            conn.close()
        if resp.status >= 400:
            raise LabApiError(resp.status, str((data or {}).get("error", resp.reason)), (data or {}).get("problems"))
        return data

    # -- the verbs ------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return self.call("GET", "/v1/status")

    def proxy_status(self) -> dict[str, Any]:
        return self.call("GET", "/v1/proxy-status")

    def wait_synced(self, timeout: float = 10.0, expect: list[str] | None = None) -> dict[str, Any]:
        """Wait until every agent (and every one in `expect`, e.g. "ztunnel/node-1") ACKed the latest config."""
        return self.call("POST", "/v1/proxy-status/wait", {"timeout": timeout, "expect": expect or []})

    def reload(self) -> dict[str, Any]:
        return self.call("POST", "/v1/reload", {})

    def apply(self, documents: list[tuple[str, str]], namespace: str | None = None) -> dict[str, Any]:
        """Apply (source name, YAML text) documents atomically; `namespace` for those that name none."""
        return self.call("POST", "/v1/config", {"documents": [{"source": s, "text": t} for s, t in documents],
                                                "namespace": namespace})

    def get_config(self, kind: str | None = None, name: str | None = None,
                   namespace: str | None = None) -> dict[str, Any]:
        return self.call("GET", "/v1/config", query={"kind": kind or "", "name": name or "",
                                                     "namespace": namespace or ""})

    def delete_config(self, **body: Any) -> dict[str, Any]:
        return self.call("DELETE", "/v1/config", body)

    def certs(self) -> dict[str, Any]:
        return self.call("GET", "/v1/certs")

    def issue_cert(self, identity: str, ttl_seconds: float | None = None) -> dict[str, Any]:
        return self.call("POST", "/v1/certs", {"identity": identity, "ttlSeconds": ttl_seconds})

    def set_mode(self, namespace: str, mode: str) -> dict[str, Any]:
        return self.call("POST", "/v1/mode", {"namespace": namespace, "mode": mode})

    def set_waypoint(self, namespace: str, enabled: bool, service: str | None = None) -> dict[str, Any]:
        return self.call("POST", "/v1/waypoints", {"namespace": namespace, "enabled": enabled, "service": service})

    def waypoints(self) -> dict[str, Any]:
        return self.call("GET", "/v1/waypoints")

    def config_dump(self, agent: str = "ztunnel", node: str | None = None) -> dict[str, Any]:
        """An agent's config dump from its admin port: `agent` as proxy-status names it ("ztunnel" with `node`,
        "waypoint:NS/NAME", "sidecar:WORKLOAD")."""
        return self.call("GET", "/v1/config-dump", query={"agent": agent, "node": node or ""})

    def nodes(self) -> dict[str, Any]:
        """The lab's state with what each node reports now (processes, restarts)."""
        return self.call("GET", "/v1/nodes")

    def traffic(self) -> dict[str, Any]:
        """Per-edge traffic: totals from every agent's metrics, and rates since the previous call."""
        return self.call("GET", "/v1/traffic")

    def logs(self, node: str, process: str, tail: int = 100) -> dict[str, Any]:
        return self.call("GET", "/v1/logs", query={"node": node, "process": process, "tail": str(tail)})

    def events(self, since: float = 0.0) -> dict[str, Any]:
        return self.call("GET", "/v1/events", query={"since": str(since)})

    def start_load(self, target: str, **options: Any) -> dict[str, Any]:
        """Start a bounded load run (options: from, qps, connections, duration, n, headers); returns the run."""
        return self.call("POST", "/v1/loads", {"target": target, **options})

    def loads(self) -> dict[str, Any]:
        return self.call("GET", "/v1/loads")

    def stop_load(self, run_id: str) -> dict[str, Any]:
        return self.call("POST", "/v1/loads/stop", {"id": run_id})

    def usage(self) -> dict[str, Any]:
        """RSS and CPU of every process on every node, with its role."""
        return self.call("GET", "/v1/usage")

    def faults(self) -> dict[str, Any]:
        """The live faults, with the time each has left."""
        return self.call("GET", "/v1/faults")

    def fault_kinds(self) -> dict[str, Any]:
        """The fault catalogue: every kind with its layer, targets, parameters (type, unit, default), directions."""
        return self.call("GET", "/v1/faults/kinds")

    def add_fault(self, kind: str, target: str | None = None, params: dict[str, Any] | None = None,
                  ttl_seconds: float | None = None, toxicity: float | None = None,
                  direction: str | None = None) -> dict[str, Any]:
        """Add a live fault (see `meshlab fault add --help` for kinds and params); returns it with its id."""
        return self.call("POST", "/v1/faults", {"kind": kind, "target": target, "params": params or {},
                                                "ttlSeconds": ttl_seconds, "toxicity": toxicity,
                                                "direction": direction})

    def remove_fault(self, fault_id: str | None = None, everything: bool = False) -> dict[str, Any]:
        return self.call("DELETE", "/v1/faults", {"id": fault_id, "all": everything})
