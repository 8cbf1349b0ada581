"""Read a lab-native topology YAML file into the dataclasses of `lab.topology.model`.

The file is *composed* (not loaded) with PyYAML's SafeLoader, so every value keeps its
line; `_Walker` checks each YAML node against the schema and collects every problem
before raising one `TopologyError`. The schema, in short (`?` = optional):

    name, provider?, trustDomain?, addressBlock?, nodes[], namespaces[], config[]?
    services[]?:  name, namespace, ports[] (port, name?, protocol?, targetPort?), workloads[]
    workload:     name, node, version?, serviceAccount?, labels?, run
    workloads[]?: client workloads (serving nothing), which also name their namespace
    run:          {demo, args?, env?} or {command, env?}
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.nodes import Node as YamlNode

from lab.errors import TopologyError
from lab.topology.model import DEMO_APPS, MODES, PROVIDERS, Namespace, Node, Run, Service, ServicePort, Topology
from lab.topology.model import Workload

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")  # a Kubernetes label value
LABEL_KEY = re.compile(r"([a-z0-9][-a-z0-9.]*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
ENDS = "starting and ending with a letter or digit, at most 63 characters"
RULES = {DNS_LABEL: f"use lowercase letters, digits and '-', {ENDS}",
         LABEL_VALUE: f"use letters, digits, '-', '_' and '.', {ENDS}"}
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
PROTOCOLS = ("http", "tcp")
MAX_EXPANDED_VALUES = 100_000  # free-form values expanded through aliases (a "billion laughs" guard)

# The fields each kind of mapping accepts: {field: required}.
TOP_FIELDS = {"name": True, "provider": False, "trustDomain": False, "addressBlock": False, "nodes": True,
              "namespaces": True, "services": False, "workloads": False, "config": False}
NODE_FIELDS = {"name": True, "provider": False, "docker": False, "ssh": False}
NAMESPACE_FIELDS = {"name": True, "mode": False, "waypoint": False}
SERVICE_FIELDS = {"name": True, "namespace": True, "ports": True, "workloads": True}
PORT_FIELDS = {"port": True, "name": False, "protocol": False, "targetPort": False}
WORKLOAD_FIELDS = {"name": True, "node": True, "version": False, "serviceAccount": False, "labels": False, "run": True}
CLIENT_FIELDS = {**WORKLOAD_FIELDS, "namespace": True}
RUN_FIELDS = {"demo": False, "args": False, "command": False, "env": False}

YAML_TAG = "tag:yaml.org,2002:"
KINDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean",
         "null": "nothing (null)", "timestamp": "a date", "binary": "binary data"}
QUOTABLE = {YAML_TAG + kind for kind in ("int", "float", "bool", "timestamp")}  # scalars quoting turns into strings


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a topology file, located by line and field path."""

    source: str  # the file (or "<memory>")
    line: int | None  # 1-based; None when it concerns the whole file
    path: str  # e.g. "services[2].workloads[0].node"; "" for the file as a whole
    message: str

    def __str__(self) -> str:
        where = os.path.basename(self.source) + (f":{self.line}" if self.line else "")
        return f"{self.path}: {self.message} ({where})" if self.path else f"{self.message} ({where})"


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


def join(path: str, key: str) -> str:
    """The path of field `key` inside `path`."""
    return f"{path}.{key}" if path else key


def line_of(node: YamlNode) -> int:
    """The 1-based line a YAML node starts on."""
    return node.start_mark.line + 1


def is_scalar(node: YamlNode, kind: str) -> bool:
    """Whether `node` is a scalar of the YAML type `kind` (str, int, bool, null, ...)."""
    return isinstance(node, ScalarNode) and node.tag == YAML_TAG + kind


def describe(node: YamlNode) -> str:
    """What a YAML node is, for messages: "a list", "a string 'x'", "an integer (3)"."""
    if not isinstance(node, ScalarNode):
        return "a mapping" if isinstance(node, MappingNode) else "a list"
    kind = KINDS.get(node.tag[len(YAML_TAG):]) if node.tag.startswith(YAML_TAG) else None
    shown = node.value if len(node.value) <= 40 else node.value[:37] + "..."
    if kind is None or is_scalar(node, "null"):
        return kind or f"a value tagged {node.tag}"
    return f"{kind} '{shown}'" if kind == "a string" else f"{kind} ({shown})"


def unknown_field(name: str, allowed: dict[str, bool]) -> str:
    """The message for a field the schema does not know, naming the closest valid one."""
    close = difflib.get_close_matches(name, list(allowed), n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"expected one of: {', '.join(allowed)}"
    return f"unknown field '{name}'; {hint}"


def yaml_error_message(error: yaml.MarkedYAMLError) -> str:
    """A one-line message for a YAML syntax error."""
    problem = error.problem or "syntax error"
    if "'\\t'" in problem:
        return "tab character in indentation; YAML needs spaces"
    if error.context and not error.context.startswith("while"):  # "expected a single document ..."
        return f"invalid YAML: {error.context}, {problem}"
    return f"invalid YAML: {problem}" + (f" ({error.context})" if error.context else "")


class _Walker:
    """Walks a composed YAML tree against the schema, collecting problems and building the model."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []
        self.constructor = yaml.constructor.SafeConstructor()
        self.expanded = 0  # free-form values converted so far
        self.nodes: dict[str, int] | None = None  # declared name -> line; None: no list, so references go unchecked
        self.namespaces: dict[str, int] | None = None
        self.services: dict[tuple[str, str], int] = {}  # (namespace, name) -> line
        self.workloads: dict[str, int] = {}

    def report(self, at: YamlNode | int | None, path: str, message: str) -> None:
        """Record a problem at a YAML node (or a line)."""
        line = line_of(at) if isinstance(at, YamlNode) else at
        self.problems.append(Problem(self.source, line, path, message))

    # --- text and YAML ----------------------------------------------------------------------------------

    def compose(self, text: str | bytes) -> YamlNode | None:
        """The YAML tree of `text`, or None (with a problem reported) if there is none."""
        decoded = self.decode(text)
        if decoded is None:
            return None
        try:
            root = yaml.compose(decoded, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            self.report(mark.line + 1 if mark else None, "", yaml_error_message(e))
            return None
        except yaml.reader.ReaderError as e:
            line = decoded[: e.position].count("\n") + 1
            self.report(line, "", f"unexpected control character #x{e.character:04x} (is this a text file?)")
            return None
        except (yaml.YAMLError, RecursionError) as e:
            self.report(None, "", f"invalid YAML: {'nesting too deep' if isinstance(e, RecursionError) else e}")
            return None
        if root is None:
            self.report(None, "", "the file is empty; expected a mapping with name, nodes and namespaces")
        return root

    def decode(self, text: str | bytes) -> str | None:
        """The text as a string, or None (reported) if it is binary or not UTF-8."""
        data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
        if b"\0" in data:
            line = data[: data.index(b"\0")].count(b"\n") + 1
            self.report(line, "", "the file contains binary data (a NUL byte); a topology is UTF-8 YAML text")
            return None
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            byte = f"byte 0x{data[e.start]:02x}"
            self.report(line, "", f"the file is not valid UTF-8 ({byte}); a topology is UTF-8 YAML text")
            return None

    # --- shapes -----------------------------------------------------------------------------------------

    def pairs(self, node: YamlNode, path: str) -> list[tuple[str, YamlNode, YamlNode]]:
        """The (key, key node, value node) entries of a mapping with string keys, reporting duplicate keys."""
        if not isinstance(node, MappingNode):
            self.report(node, path, f"expected a mapping, got {describe(node)}")
            return []
        entries, seen = [], {}
        for key, value in node.value:
            if key.tag == YAML_TAG + "merge":
                self.report(key, path, "merge keys ('<<') are not supported")
            elif not is_scalar(key, "str"):
                self.report(key, path, f"keys must be strings, got {describe(key)}")
            elif key.value in seen:
                first = seen[key.value]
                self.report(key, join(path, key.value), f"duplicate key '{key.value}' (first at line {first})")
            else:
                seen[key.value] = line_of(key)
                entries.append((key.value, key, value))
        return entries

    def fields(self, node: YamlNode | None, path: str, schema: dict[str, bool]) -> dict[str, YamlNode]:
        """The non-null fields of a schema mapping, reporting unknown and missing ones."""
        if node is None:
            return {}
        found, keys = {}, {}
        for name, key, value in self.pairs(node, path):
            keys[name] = key
            if name not in schema:
                self.report(key, join(path, name), unknown_field(name, schema))
            elif not is_scalar(value, "null"):
                found[name] = value
        for name in [n for n, required in schema.items() if required and n not in found]:
            if name in keys:
                self.report(keys[name], path, f"required field '{name}' has no value")
            elif isinstance(node, MappingNode):
                self.report(node, path, f"missing required field '{name}'")
        return found

    def items(self, fields: dict[str, YamlNode], key: str, path: str, what: str,
              required: bool = False) -> list[tuple[str, YamlNode]] | None:
        """The (path, node) entries of list field `key`; None if it is absent or not a list."""
        node, path = fields.get(key), join(path, key)
        if node is None:
            return None
        if not isinstance(node, SequenceNode):
            self.report(node, path, f"expected a list of {what}s, got {describe(node)}")
            return None
        if required and not node.value:
            self.report(node, path, f"at least one {what} is required")
        return [(f"{path}[{i}]", item) for i, item in enumerate(node.value)]

    def plain(self, node: YamlNode, path: str, outer: tuple[YamlNode, ...] = ()) -> Any:
        """A free-form value (provider settings, mesh config) as plain Python data."""
        self.expanded += 1
        if self.expanded >= MAX_EXPANDED_VALUES:
            if self.expanded == MAX_EXPANDED_VALUES:
                self.report(node, path, "too many values (aliases expanding without end?)")
            return None
        if any(node is o for o in outer):
            self.report(node, path, "recursive alias is not supported")
            return None
        if isinstance(node, MappingNode):
            return {k: self.plain(v, join(path, k), outer + (node,)) for k, _, v in self.pairs(node, path)}
        if isinstance(node, SequenceNode):
            return [self.plain(v, f"{path}[{i}]", outer + (node,)) for i, v in enumerate(node.value)]
        try:
            return self.constructor.construct_object(node)
        except Exception as e:  # any scalar PyYAML cannot build: an unknown tag, an impossible date, ...
            self.report(node, path, f"unsupported value: {getattr(e, 'problem', None) or e}")
            return None

    # --- scalars ----------------------------------------------------------------------------------------

    def string(self, node: YamlNode | None, path: str) -> str | None:
        """A string value, or None (reported if it is another type)."""
        if node is None or is_scalar(node, "str"):
            return None if node is None else node.value
        quote = "; quote it" if node.tag in QUOTABLE and isinstance(node, ScalarNode) else ""
        self.report(node, path, f"expected a string, got {describe(node)}{quote}")
        return None

    def name(self, node: YamlNode | None, path: str, what: str, pattern: re.Pattern[str] = DNS_LABEL) -> str | None:
        """A name that must match `pattern` (a DNS-1123 label by default); returned even when invalid."""
        value = self.string(node, path)
        if value is not None and not pattern.match(value):
            self.report(node, path, f"invalid {what} '{value}': {RULES[pattern]}")
        return value

    def choice(self, node: YamlNode | None, path: str, options: tuple[str, ...], what: str) -> str | None:
        """A string that must be one of `options`."""
        value = self.string(node, path)
        if value is not None and value not in options:
            self.report(node, path, f"unknown {what} '{value}'; expected one of: {', '.join(options)}")
            return None
        return value

    def port(self, node: YamlNode | None, path: str) -> int | None:
        """A TCP port number, an integer (not a boolean) in 1..65535."""
        if node is None:
            return None
        try:
            value = self.constructor.construct_yaml_int(node) if is_scalar(node, "int") else None
        except ValueError:  # int-looking oddities such as 0x_
            value = None
        if value is None:
            self.report(node, path, f"expected an integer, got {describe(node)}")
        elif not 1 <= value <= 65535:
            self.report(node, path, f"port {value} is out of range 1-65535")
            return None
        return value

    def boolean(self, node: YamlNode | None, path: str) -> bool:
        """A true/false value (false if absent)."""
        if node is None or is_scalar(node, "bool"):
            return node is not None and self.constructor.construct_yaml_bool(node)
        self.report(node, path, f"expected true or false, got {describe(node)}")
        return False

    def text(self, node: YamlNode, path: str, numbers: bool = True) -> str | None:
        """A string, or a number kept as the text it was written as (args, command, env)."""
        if numbers and (is_scalar(node, "int") or is_scalar(node, "float")):
            return node.value
        return self.string(node, path)

    def text_list(self, node: YamlNode | None, path: str) -> list[str]:
        """A list of strings (numbers allowed)."""
        if node is not None and not isinstance(node, SequenceNode):
            self.report(node, path, f"expected a list of strings, got {describe(node)}")
            return []
        values = [self.text(item, f"{path}[{i}]") for i, item in enumerate(node.value if node else [])]
        return [v for v in values if v is not None]

    def text_map(self, node: YamlNode | None, path: str, what: str, key: re.Pattern[str],
                 numbers: bool) -> dict[str, str]:
        """A mapping of names to strings (labels, env)."""
        result = {}
        for name, key_node, value in self.pairs(node, path) if node is not None else []:
            if not key.match(name):
                self.report(key_node, join(path, name), f"invalid {what} '{name}'")
            text = self.text(value, join(path, name), numbers)
            if text is not None:
                result[name] = text
        return result

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

    def unique(self, seen: dict[Any, int], key: Any, shown: str, node: YamlNode, path: str) -> None:
        """Remember `key`, reporting it if it was declared before."""
        if key in seen:
            self.report(node, path, f"duplicate {shown} (first at line {seen[key]})")
        else:
            seen[key] = line_of(node)

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
