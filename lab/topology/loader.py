"""Read a lab-native topology YAML file into the dataclasses of `lab.topology.model`.

The file is *composed* (not loaded) with PyYAML's SafeLoader, so every value keeps its
line (`lab.yamlsource`); `_Walker` checks each YAML node against the schema and collects
every problem before raising one `TopologyError`. The schema, in short (`?` = optional):

    name, provider?, trustDomain?, addressBlock?, nodes[], namespaces[], config[]?
    services[]?:  name, namespace, ports[] (port, name?, protocol?, targetPort?), workloads[] or selector{}
    workload:     name, node, version?, serviceAccount?, labels?, run
    workloads[]?: client workloads (serving nothing), which also name their namespace
    run:          {demo, args?, env?} or {command, env?}
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

from yaml.nodes import MappingNode, SequenceNode
from yaml.nodes import Node as YamlNode

from lab.errors import TopologyError
from lab.topology.model import DEMO_APPS, MODES, PROVIDERS, Namespace, Node, Run, Service, ServicePort, Topology
from lab.topology.model import Workload
from lab.yamlsource import DNS_LABEL, LABEL_KEY, LABEL_VALUE, Problem, YamlWalker, describe, join

__all__ = ["Problem", "load_topology", "parse_topology"]

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
PROTOCOLS = ("http", "tcp")

# The fields each kind of mapping accepts: {field: required}.
TOP_FIELDS = {"name": True, "provider": False, "trustDomain": False, "addressBlock": False, "nodes": True,
              "namespaces": True, "services": False, "workloads": False, "config": False}
NODE_FIELDS = {"name": True, "provider": False, "docker": False, "ssh": False}
NAMESPACE_FIELDS = {"name": True, "mode": False, "waypoint": False}
SERVICE_FIELDS = {"name": True, "namespace": True, "ports": True, "workloads": False, "selector": False}
PORT_FIELDS = {"port": True, "name": False, "protocol": False, "targetPort": False}
WORKLOAD_FIELDS = {"name": True, "node": True, "version": False, "serviceAccount": False, "labels": False, "run": True}
CLIENT_FIELDS = {**WORKLOAD_FIELDS, "namespace": True}
RUN_FIELDS = {"demo": False, "args": False, "command": False, "env": False}


def load_topology(path: str | Path) -> Topology:
    """Read and validate the topology file at `path`."""
    path = Path(path)
    if path.is_dir():
        reason = "it is a directory"
    elif path.exists() and not path.is_file():
        reason = "it is not a regular file"  # a FIFO or a device would block or never end
    else:
        try:
            return parse_topology(path.read_bytes(), str(path))
        except FileNotFoundError:
            reason = "no such file"
        except PermissionError:
            reason = "permission denied"
        except OSError as e:
            reason = e.strerror or str(e)
    raise TopologyError([Problem(str(path), None, "", f"cannot read topology file {path}: {reason}")])


def parse_topology(text: str | bytes, source: str = "<memory>") -> Topology:
    """Validate topology YAML `text` (from the file named `source`) and build the model."""
    walker = _Walker(source)
    root = walker.compose(text)
    try:
        topology = walker.topology(root) if root is not None else None
    except RecursionError:  # free-form values nested deeper than Python's stack (YAML itself was fine)
        walker.report(None, "", "values are nested too deeply")
        topology = None
    if walker.problems or topology is None:
        raise TopologyError(sorted(walker.problems, key=lambda p: p.line or 0))
    return topology


class _Walker(YamlWalker):
    """Walks a composed YAML tree against the schema, collecting problems and building the model."""

    document = "a topology"
    empty_message = "the file is empty; expected a mapping with name, nodes and namespaces"

    def __init__(self, source: str) -> None:
        super().__init__(source)
        self.nodes: dict[str, int] | None = None  # declared name -> line; None: no list, so references go unchecked
        self.namespaces: dict[str, int] | None = None
        self.services: dict[tuple[str, str], int] = {}  # (namespace, name) -> line
        self.workloads: dict[str, int] = {}

    # --- the schema -------------------------------------------------------------------------------------

    def topology(self, root: YamlNode) -> Topology | None:
        """The whole topology."""
        if not isinstance(root, MappingNode):
            expected = "the top level must be a mapping with name, nodes and namespaces"
            self.report(root, "", f"{expected}, got {describe(root)}")
            return None
        f = self.fields(root, "", TOP_FIELDS)
        provider = self.choice(f.get("provider"), "provider", PROVIDERS, "provider") or "local"
        node_entries = self.items(f, "nodes", "", "node", required=True)
        namespace_entries = self.items(f, "namespaces", "", "namespace", required=True)
        self.nodes = None if node_entries is None else {}
        self.namespaces = None if namespace_entries is None else {}
        return Topology(
            name=self.name(f.get("name"), "name", "lab name") or "",
            provider=provider,
            trust_domain=self.trust_domain(f.get("trustDomain")),
            nodes=tuple(self.node(p, n) for p, n in node_entries or []),
            namespaces=tuple(self.namespace(p, n) for p, n in namespace_entries or []),
            services=tuple(self.service(p, n) for p, n in self.items(f, "services", "", "service") or []),
            clients=tuple(self.workload(p, n, None, None) for p, n in self.items(f, "workloads", "", "workload") or []),
            config=tuple(self.config(f)),
            source=self.source,
            address_block=self.address_block(f.get("addressBlock"), provider),
        )

    def reference(self, node: YamlNode | None, path: str, what: str, declared: dict[str, int] | None) -> str | None:
        """A name that must refer to a declared node or namespace (unchecked if there is no list of them)."""
        value = self.string(node, path)
        if value is not None and declared is not None and value not in declared:
            self.report(node, path, f"unknown {what} '{value}'")
        return value

    def node(self, path: str, yaml_node: YamlNode) -> Node:
        """One node (host) of the lab, with its provider settings kept verbatim."""
        f = self.fields(yaml_node, path, NODE_FIELDS)
        name = self.name(f.get("name"), join(path, "name"), "node name")
        if name is not None and self.nodes is not None:
            self.unique(self.nodes, name, f"node '{name}'", f["name"], join(path, "name"))
        provider = self.choice(f.get("provider"), join(path, "provider"), PROVIDERS, "provider")
        settings = {}
        for key in (k for k in ("docker", "ssh") if k in f):
            if isinstance(f[key], MappingNode):
                settings[key] = self.plain(f[key], join(path, key))
            else:
                self.report(f[key], join(path, key), f"expected a mapping of {key} settings, got {describe(f[key])}")
        return Node(name=name or "", provider=provider, settings=settings)

    def namespace(self, path: str, node: YamlNode) -> Namespace:
        """One namespace, with its data-plane mode."""
        f = self.fields(node, path, NAMESPACE_FIELDS)
        name = self.name(f.get("name"), join(path, "name"), "namespace name")
        if name is not None and self.namespaces is not None:
            self.unique(self.namespaces, name, f"namespace '{name}'", f["name"], join(path, "name"))
        mode = self.choice(f.get("mode"), join(path, "mode"), MODES, "mode") or "none"
        waypoint = self.boolean(f.get("waypoint"), join(path, "waypoint"))
        return Namespace(name=name or "", mode=mode, waypoint=waypoint)  # type: ignore[arg-type]

    def service(self, path: str, node: YamlNode) -> Service:
        """One service: its ports and the workloads behind it."""
        f = self.fields(node, path, SERVICE_FIELDS)
        name = self.name(f.get("name"), join(path, "name"), "service name")
        namespace = self.reference(f.get("namespace"), join(path, "namespace"), "namespace", self.namespaces)
        if name is not None and namespace is not None:
            shown = f"service '{name}' in namespace '{namespace}'"
            self.unique(self.services, (namespace, name), shown, f["name"], join(path, "name"))
        ports = self.ports(self.items(f, "ports", path, "port", required=True) or [])
        selector = None
        if "selector" in f:
            # A service over workloads declared elsewhere, chosen by labels (like Istio's bookinfo-versions.yaml:
            # reviews-v1 selects app=reviews,version=v1) — what HTTPRoute backendRefs name.
            if "workloads" in f:
                self.report(f["selector"], join(path, "selector"), "give either workloads or a selector, not both")
            selector = self.text_map(f["selector"], join(path, "selector"), "label name", LABEL_KEY, numbers=False)
            if not selector:
                self.report(f["selector"], join(path, "selector"), "a selector needs at least one label")
            return Service(name=name or "", namespace=namespace or "", ports=tuple(ports), workloads=(),
                           selector=selector or {})
        entries = self.items(f, "workloads", path, "workload", required=True) or []
        workloads = tuple(self.workload(p, n, name or "", namespace) for p, n in entries)
        return Service(name=name or "", namespace=namespace or "", ports=tuple(ports), workloads=workloads)

    def ports(self, entries: list[tuple[str, YamlNode]]) -> list[ServicePort]:
        """A service's ports; an unnamed port is called after its protocol (the first) or `<protocol>-<port>`."""
        ports: list[ServicePort] = []
        numbers: dict[int, int] = {}
        names: dict[str, int] = {}
        for path, node in entries:
            f = self.fields(node, path, PORT_FIELDS)
            port = self.port(f.get("port"), join(path, "port"))
            protocol = self.choice(f.get("protocol"), join(path, "protocol"), PROTOCOLS, "protocol") or "http"
            target = self.port(f.get("targetPort"), join(path, "targetPort"))
            name = self.name(f.get("name"), join(path, "name"), "port name")
            if port is not None:
                self.unique(numbers, port, f"port {port}", f["port"], join(path, "port"))
            if name is None and "name" not in f:
                name = protocol if not ports else f"{protocol}-{port}"
            if name is not None:
                self.unique(names, name, f"port name '{name}'", f.get("name", node), join(path, "name"))
            ports.append(ServicePort(port or 0, name or "", protocol, target))  # type: ignore[arg-type]
        return ports

    def workload(self, path: str, node: YamlNode, service: str | None, namespace: str | None) -> Workload:
        """One workload of `service`, or a client (service None) that names its own namespace."""
        f = self.fields(node, path, WORKLOAD_FIELDS if service is not None else CLIENT_FIELDS)
        name = self.name(f.get("name"), join(path, "name"), "workload name")
        if name is not None:
            self.unique(self.workloads, name, f"workload '{name}'", f["name"], join(path, "name"))
        if service is None:
            namespace = self.reference(f.get("namespace"), join(path, "namespace"), "namespace", self.namespaces)
        host = self.reference(f.get("node"), join(path, "node"), "node", self.nodes)
        version = self.name(f.get("version"), join(path, "version"), "version", LABEL_VALUE) or "v1"
        account = self.name(f.get("serviceAccount"), join(path, "serviceAccount"), "service account") or "default"
        extra = self.text_map(f.get("labels"), join(path, "labels"), "label name", LABEL_KEY, numbers=False)
        for reserved in ("app", "version"):
            if reserved in extra:
                self.report(f["labels"], join(path, "labels"), f"label '{reserved}' is set by the lab; remove it")
        app = service or name or ""
        run = self.run(f.get("run"), join(path, "run"))
        return Workload(name=name or "", namespace=namespace or "", node=host or "", run=run, service=service, app=app,
                        version=version, service_account=account, labels={**extra, "app": app, "version": version})

    def run(self, node: YamlNode | None, path: str) -> Run:
        """What a workload runs: `demo` (+ `args`) or `command`, plus `env`."""
        f = self.fields(node, path, RUN_FIELDS)
        if "demo" in f and "command" in f:
            self.report(node, path, "run has both 'demo' and 'command'; choose one")
        elif "demo" not in f and "command" not in f and isinstance(node, MappingNode):
            self.report(node, path, "run needs 'demo' (a built-in app) or 'command'")
        if "args" in f and "demo" not in f:
            self.report(f["args"], join(path, "args"), "args are only for demo apps; put arguments in 'command'")
        return Run(
            demo=self.choice(f.get("demo"), join(path, "demo"), DEMO_APPS, "demo app"),
            args=tuple(self.text_list(f.get("args"), join(path, "args"))),
            command=self.command(f.get("command"), join(path, "command")),
            env=self.text_map(f.get("env"), join(path, "env"), "environment variable name", ENV_NAME, numbers=True),
        )

    def command(self, node: YamlNode | None, path: str) -> str | tuple[str, ...] | None:
        """A shell command (a string, run with `sh -c`) or an argv (a non-empty list of strings)."""
        if isinstance(node, SequenceNode):
            command: str | tuple[str, ...] | None = tuple(self.text_list(node, path))
            empty = not node.value
        else:
            command = self.string(node, path)
            empty = command is not None and not command.strip()
        if empty:
            self.report(node, path, "command is empty")
        return command

    def trust_domain(self, node: YamlNode | None) -> str:
        """The SPIFFE trust domain, a DNS name (default cluster.local)."""
        value = self.string(node, "trustDomain")
        if value is None:
            return "cluster.local"
        if len(value) > 253 or not all(DNS_LABEL.match(label) for label in value.split(".")):
            self.report(node, "trustDomain", f"invalid trust domain '{value}': must be a DNS name like cluster.local")
        return value

    def address_block(self, node: YamlNode | None, provider: str) -> str | None:
        """The local provider's /16 inside 127.0.0.0/8, when the topology fixes one."""
        value = self.string(node, "addressBlock")
        if value is None:
            return None
        try:
            block = ipaddress.ip_network(value)
        except ValueError:
            block = None
        if not (isinstance(block, ipaddress.IPv4Network) and block.prefixlen == 16 and block.subnet_of(LOOPBACK)):
            self.report(node, "addressBlock", f"invalid address block '{value}': expected a /16 inside 127.0.0.0/8, "
                                              "like 127.101.0.0/16")
            return None
        if provider != "local":
            self.report(node, "addressBlock", f"addressBlock is only for the local provider "
                                              f"(this lab's provider is '{provider}')")
        return str(block)

    def config(self, f: dict[str, YamlNode]) -> list[dict[str, Any]]:
        """The initial mesh config documents, kept as plain data (checked later by the mesh config code)."""
        documents = []
        for path, node in self.items(f, "config", "", "config document") or []:
            if not isinstance(node, MappingNode):
                self.report(node, path, f"expected a mesh config document (a mapping), got {describe(node)}")
                continue
            document = self.plain(node, path)
            if not isinstance(document, dict):  # refused as a whole (too many values); already reported
                continue
            for key in ("apiVersion", "kind"):
                if not isinstance(document.get(key), str):
                    self.report(node, join(path, key), f"a config document needs a string '{key}'")
            documents.append(document)
        return documents
