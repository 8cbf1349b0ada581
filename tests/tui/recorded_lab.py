"""A test-only lab API client that answers with recorded answers of a real lab (tests/tui/recorded/*.json)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from lab.client import LabApiError

RECORDED = Path(__file__).parent / "recorded"
FROZEN_NOW = 1795780500.0  # 2026-11-27 11:55 UTC: minutes after the recording, its fault f1 still counting down


def load_recording(name: str = "bookinfo") -> dict[str, Any]:
    return json.loads((RECORDED / f"{name}.json").read_text())


class RecordedLab:
    """Implements `tui.connection.LabApi` from a recording; writes are remembered, never sent anywhere."""

    def __init__(self, lab: str = "bookinfo", recording: dict[str, Any] | None = None) -> None:
        self.lab = lab
        self.rec = copy.deepcopy(recording or load_recording())
        self.calls: list[tuple[str, Any]] = []

    def nodes(self) -> dict[str, Any]:
        return self.rec["nodes"]

    def proxy_status(self) -> dict[str, Any]:
        return self.rec["proxyStatus"]

    def traffic(self) -> dict[str, Any]:
        return self.rec["traffic"][-1]

    def loads(self) -> dict[str, Any]:
        return self.rec["loads"]

    def get_config(self, kind: str | None = None, name: str | None = None,
                   namespace: str | None = None) -> dict[str, Any]:
        return self.rec["config"]

    def events(self, since: float = 0.0) -> dict[str, Any]:
        return {"events": [e for e in self.rec["events"]["events"] if e["time"] > since]}

    def certs(self) -> dict[str, Any]:
        return self.rec["certs"]

    def usage(self) -> dict[str, Any]:
        return self.rec["usage"]

    def logs(self, node: str, process: str, tail: int = 100) -> dict[str, Any]:
        return {"node": node, "process": process, "text": self.rec["logs"].get(node, "")}

    def set_mode(self, namespace: str, mode: str) -> dict[str, Any]:
        self.calls.append(("set_mode", (namespace, mode)))
        previous = self.rec["nodes"]["namespaces"][namespace]["mode"]
        if mode == "sidecar":  # as the lab answered a switch into sidecar mode under a load run
            return {"namespace": namespace, "mode": mode, "previous": previous, "changed": True, "version": 9,
                    "synced": True, "seconds": 9.213, "failedRequests": 9,
                    "restarted": sorted(w for w, d in self.rec["nodes"]["workloads"].items()
                                        if d["namespace"] == namespace)}
        return {"namespace": namespace, "mode": mode, "previous": previous, "changed": mode != previous,
                "version": 9, "synced": True, "restarted": [], "seconds": 0.7, "failedRequests": 0}

    def set_waypoint(self, namespace: str, enabled: bool, service: str | None = None) -> dict[str, Any]:
        self.calls.append(("set_waypoint", (namespace, enabled, service)))
        name = f"{service}-waypoint" if service else "waypoint"
        return {"waypoint": {"name": name, "namespace": namespace, "service": service, "node": "node-1",
                             "address": "127.100.1.3", "identity": f"spiffe://cluster.local/ns/{namespace}/sa/{name}"},
                "enabled": enabled, "changed": True, "version": 9, "synced": True}

    def faults(self) -> dict[str, Any]:
        return self.rec.get("faults") or {"faults": [], "version": 1}

    def fault_kinds(self) -> dict[str, Any]:
        return self.rec["faultKinds"]

    def config_dump(self, agent: str = "ztunnel", node: str | None = None) -> dict[str, Any]:
        found = self.rec.get("configDumps", {}).get(f"{agent}@{node}")
        if found is None:
            raise LabApiError(404, f"no agent '{agent}' on node '{node}'")
        return found

    def add_fault(self, kind: str, target: str | None = None, params: dict[str, Any] | None = None,
                  ttl_seconds: float | None = None, toxicity: float | None = None,
                  direction: str | None = None) -> dict[str, Any]:
        self.calls.append(("add_fault", (kind, target, params, ttl_seconds, toxicity, direction)))
        if target == "nowhere":
            raise LabApiError(400, "target 'nowhere': no service, workload or node of that name (services: "
                                   "details.bookinfo, productpage.bookinfo, ratings.bookinfo, reviews.bookinfo; ...)")
        created = FROZEN_NOW
        return {"id": "f9", "kind": kind, "targetText": target, "params": params or {}, "created": created,
                "expires": None if ttl_seconds is None else created + ttl_seconds, "version": 9, "synced": True}

    def remove_fault(self, fault_id: str | None = None, everything: bool = False) -> dict[str, Any]:
        self.calls.append(("remove_fault", (fault_id, everything)))
        ids = [f["id"] for f in self.faults()["faults"]] if everything else [fault_id]
        return {"removed": ids, "errors": [], "version": 9}

    def apply(self, documents: list[tuple[str, str]]) -> dict[str, Any]:
        self.calls.append(("apply", documents))
        source, text = documents[0]
        if "STRICTX" in text:
            line = next(n for n, ln in enumerate(text.splitlines(), 1) if "STRICTX" in ln)
            raise LabApiError(400, "invalid config: 1 error(s)", [
                "spec.mtls.mode: unknown mTLS mode 'STRICTX'; expected one of: UNSET, DISABLE, PERMISSIVE, STRICT "
                f"({Path(source).name}:{line})"])
        return {"results": [["PeerAuthentication", "bookinfo/default", "configured"]], "version": 9, "synced": True}

    def delete_config(self, **body: Any) -> dict[str, Any]:
        self.calls.append(("delete_config", body))
        return {"results": [[body["kind"], f"{body['namespace']}/{body['name']}", "deleted"]], "version": 9,
                "synced": True}

    def start_load(self, target: str, **options: Any) -> dict[str, Any]:
        self.calls.append(("start_load", (target, options)))
        return {"id": "load-3-1795777200", "node": "node-1", "target": target, "state": "running"}

    def stop_load(self, run_id: str) -> dict[str, Any]:
        self.calls.append(("stop_load", run_id))
        return {"id": run_id, "state": "stopping"}
