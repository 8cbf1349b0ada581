"""A lab addressed by name: its state and the providers of its nodes; where a load run starts from."""

from __future__ import annotations

from typing import Any

from lab.errors import LabError
from lab.plan import RESOLVER_PORT
from lab.providers import provider_class
from lab.providers.base import Provider
from lab.state import LabState, lab_dir


class Lab:
    """A lab addressed by name: its state and one provider instance per provider it uses."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dir = lab_dir(name)
        self.state = LabState(name)
        self._providers: dict[str, Provider] = {}

    def provider(self, kind: str) -> Provider:
        if kind not in self._providers:
            self._providers[kind] = provider_class(kind)(self.name, self.dir)
        return self._providers[kind]

    def provider_of(self, node: str, state: dict[str, Any]) -> Provider:
        return self.provider(state["nodes"][node]["provider"])

    async def close(self) -> None:
        for p in self._providers.values():
            await p.close()


def load_origin(doc: dict[str, Any], source: str | None) -> tuple[str, dict[str, str]]:
    """Which node the load runs on and the mesh environment it runs with."""
    workloads, nodes = doc["workloads"], doc["nodes"]
    if source is None:  # a client workload if there is one, else the first node
        clients = [w for w, v in workloads.items() if not v.get("service")]
        source = clients[0] if clients else next(iter(nodes))
    if source in workloads:
        w = workloads[source]
        env = {"MESH_NAMESPACE": w["namespace"], "MESHLAB_WORKLOAD": source, "MESH_BIND_ADDR": w["address"]}
        node = w["node"]
    elif source in nodes:
        node, env = source, {}
    else:
        raise LabError(f"--from: no workload or node named '{source}' in lab '{doc['lab']}' "
                       f"(workloads: {', '.join(workloads)}; nodes: {', '.join(nodes)})")
    env["MESH_RESOLVER"] = f"{nodes[node]['address']}:{RESOLVER_PORT}"
    return node, env
