"""A test-only lab API client that answers with recorded answers of a real lab (tests/tui/recorded/*.json)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from lab.client import LabApiError

RECORDED = Path(__file__).parent / "recorded"
FROZEN_NOW = 1795777200.0  # 2026-11-27 11:00:00 UTC: about an hour after the recorded certificates were issued


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
        if mode == "sidecar":
            raise LabApiError(400, "mode 'sidecar' is not supported yet (sidecar mode arrives with the L7 proxies); "
                                   "use ambient or none")
        return {"namespace": namespace, "mode": mode, "previous": "none", "changed": True, "version": 9,
                "synced": True}

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
