"""Read mesh config, the Istio API written as Kubernetes objects, into validated `ConfigObject`s.

A file holds one or more YAML documents (`---`), each an object with apiVersion, kind,
metadata (name, namespace?, labels?, annotations?) and spec, exactly as in Istio's
documentation. Supported: PeerAuthentication and AuthorizationPolicy (security.istio.io/v1,
v1beta1; `lab.meshconfig.security`), VirtualService and DestinationRule
(networking.istio.io/v1, v1beta1, v1alpha3; `lab.meshconfig.networking`) and HTTPRoute
(gateway.networking.k8s.io/v1; `lab.meshconfig.httproute`); any other kind or field is
refused by name. Every problem of every document is collected before one `ConfigError` is
raised.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode
from yaml.nodes import Node as YamlNode

from lab.errors import ConfigError, LabError
from lab.meshconfig.httproute import GatewayWalker
from lab.yamlsource import DNS_LABEL, DNS_SUBDOMAIN, LABEL_KEY, LABEL_VALUE, Problem, describe, join

DEFAULT_NAMESPACE = "default"

# Kinds meshlab accepts: {kind: (API group, versions)}.
KINDS = {
    "PeerAuthentication": ("security.istio.io", ("v1", "v1beta1")),
    "AuthorizationPolicy": ("security.istio.io", ("v1", "v1beta1")),
    "VirtualService": ("networking.istio.io", ("v1", "v1beta1", "v1alpha3")),
    "DestinationRule": ("networking.istio.io", ("v1", "v1beta1", "v1alpha3")),
    "HTTPRoute": ("gateway.networking.k8s.io", ("v1",)),
}
SHORT_NAMES = {"PeerAuthentication": "pa", "AuthorizationPolicy": "ap", "VirtualService": "vs",
               "DestinationRule": "dr"}

OBJECT_FIELDS = {"apiVersion": True, "kind": True, "metadata": True, "spec": False}
METADATA_FIELDS = {"name": True, "namespace": False, "labels": False, "annotations": False}
SERVER_SET = frozenset({"status", "uid", "resourceVersion", "generation", "creationTimestamp", "managedFields",
                        "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds"})


@dataclass(frozen=True)
class ConfigObject:
    """One validated mesh config object; `spec` is canonical plain data (see `lab.meshconfig.security`)."""

    api_version: str
    kind: str
    name: str
    namespace: str
    spec: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        """What identifies the object in the store: (kind, namespace, name)."""
        return (self.kind, self.namespace, self.name)

    @property
    def ref(self) -> str:
        """`namespace/name`, as messages and the agent snapshot name the object."""
        return f"{self.namespace}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        """The object as Kubernetes-style plain data (what the store writes and `get -o yaml` prints)."""
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.labels:
            metadata["labels"] = dict(self.labels)
        if self.annotations:
            metadata["annotations"] = dict(self.annotations)
        return {"apiVersion": self.api_version, "kind": self.kind, "metadata": metadata, "spec": self.spec}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConfigObject:
        """An object from `to_dict()` output (trusted: the store's own file)."""
        metadata = data["metadata"]
        return cls(api_version=data["apiVersion"], kind=data["kind"], name=metadata["name"],
                   namespace=metadata["namespace"], spec=data.get("spec") or {},
                   labels=metadata.get("labels") or {}, annotations=metadata.get("annotations") or {})

    def to_yaml(self) -> str:
        """The object as a YAML document that `parse_config` reads back to an equal object."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False, allow_unicode=True)


def objects_to_yaml(objects: list[ConfigObject]) -> str:
    """Several objects as one multi-document YAML text."""
    return "---\n".join(obj.to_yaml() for obj in objects)


def load_config(path: str | Path, default_namespace: str = DEFAULT_NAMESPACE) -> list[ConfigObject]:
    """Read and validate the mesh config file at `path`."""
    path = Path(path)
    if path.is_dir():
        reason = "it is a directory"
    elif path.exists() and not path.is_file():
        reason = "it is not a regular file"
    else:
        try:
            return parse_config(path.read_bytes(), str(path), default_namespace)
        except FileNotFoundError:
            reason = "no such file"
        except PermissionError:
            reason = "permission denied"
        except OSError as e:
            reason = e.strerror or str(e)
    raise ConfigError([Problem(str(path), None, "", f"cannot read mesh config file {path}: {reason}")])


def parse_config(text: str | bytes, source: str = "<memory>",
                 default_namespace: str = DEFAULT_NAMESPACE) -> list[ConfigObject]:
    """Validate the mesh config YAML `text` (from the file named `source`) into objects, in file order."""
    walker = _ConfigWalker(source, default_namespace)
    objects: list[ConfigObject] = []
    try:
        for root in walker.compose_all(text) or []:
            obj = walker.config_object(root)
            if obj is not None:
                objects.append(obj)
    except RecursionError:  # values nested deeper than Python's stack (the YAML itself was fine)
        walker.report(None, "", "values are nested too deeply")
    if walker.problems:
        raise ConfigError(sorted(walker.problems, key=lambda p: p.line or 0))
    return objects


def resolve_kind(name: str) -> str:
    """The kind meant by `name`: any case, singular or plural, short (`pa`, `ap`), or `<plural>.<group>`."""
    wanted = name.strip().lower()
    for kind, (group, _) in KINDS.items():
        singular = kind.lower()
        plural = singular[:-1] + "ies" if singular.endswith("y") else singular + "s"
        forms = {singular, plural, f"{singular}.{group}", f"{plural}.{group}", SHORT_NAMES.get(kind)}
        if wanted in forms:
            return kind
    raise LabError(f"unknown kind '{name}'; expected one of: {', '.join(KINDS)} "
                   f"(or {', '.join(SHORT_NAMES[k] for k in KINDS if k in SHORT_NAMES)})")


class _ConfigWalker(GatewayWalker):
    """Checks each document's object envelope and hands its spec to the kind's check."""

    document = "mesh config"
    empty_message = "the file has no objects; expected Istio config such as a PeerAuthentication"

    def __init__(self, source: str, default_namespace: str) -> None:
        super().__init__(source)
        self.default_namespace = default_namespace
        self.seen: dict[tuple[str, str, str], int] = {}  # (kind, namespace, name) -> line

    def unknown(self, name: str, schema: dict[str, bool]) -> str:
        """Fields the Kubernetes API server sets are named as such."""
        if name in SERVER_SET and (schema is OBJECT_FIELDS or schema is METADATA_FIELDS):
            return f"field '{name}' is set by the Kubernetes API server and means nothing here; remove it"
        return super().unknown(name, schema)

    def config_object(self, root: YamlNode) -> ConfigObject | None:
        """One document: the object it describes, or None (reported) if it is not one meshlab accepts."""
        if not isinstance(root, MappingNode):
            self.report(root, "", f"expected an object (a mapping with apiVersion, kind, metadata and spec), "
                                  f"got {describe(root)}")
            return None
        f = self.fields(root, "", OBJECT_FIELDS)
        kind = self.kind(f.get("kind"), f.get("apiVersion"))
        name, namespace, labels, annotations = self.metadata(f.get("metadata"), kind)
        if kind is None or name is None:
            return None
        if kind == "PeerAuthentication":
            spec = self.peer_authentication(f.get("spec"), "spec", namespace)
        elif kind == "AuthorizationPolicy":
            spec = self.authorization_policy(f.get("spec"), "spec")
        elif kind == "VirtualService":
            spec = self.virtual_service(self.required_spec(f, root), "spec", namespace)
        elif kind == "DestinationRule":
            spec = self.destination_rule(self.required_spec(f, root), "spec", namespace)
        else:
            spec = self.http_route_spec(self.required_spec(f, root), "spec", namespace)
        return ConfigObject(api_version=self.string(f["apiVersion"], "apiVersion") or "", kind=kind, name=name,
                            namespace=namespace, spec=spec, labels=labels, annotations=annotations)

    def kind(self, kind_node: YamlNode | None, version_node: YamlNode | None) -> str | None:
        """The kind, if meshlab accepts it under the given apiVersion (reported otherwise)."""
        kind = self.string(kind_node, "kind")
        api_version = self.string(version_node, "apiVersion")
        if kind is None or kind_node is None:
            return None
        if kind not in KINDS:
            close = difflib.get_close_matches(kind, list(KINDS), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"meshlab accepts {', '.join(KINDS)}"
            self.report(kind_node, "kind", f"unknown kind '{kind}'; {hint}")
            return None
        if api_version is None:
            return None
        group, versions = KINDS[kind]
        if api_version not in {f"{group}/{v}" for v in versions}:
            wanted = " or ".join(f"{group}/{v}" for v in versions)
            self.report(version_node, "apiVersion", f"apiVersion '{api_version}' does not serve {kind}; "
                                                    f"use {wanted}")
            return None
        return kind

    def required_spec(self, fields: dict[str, YamlNode], root: YamlNode) -> YamlNode | None:
        """The spec of a kind that cannot do without one (reported when absent)."""
        if "spec" not in fields:
            self.report(root, "", "missing required field 'spec'")
        return fields.get("spec")

    def metadata(self, node: YamlNode | None,
                 kind: str | None) -> tuple[str | None, str, dict[str, str], dict[str, str]]:
        """The object's name, namespace (the default namespace when absent), labels and annotations."""
        f = self.fields(node, "metadata", METADATA_FIELDS)
        name = self.name(f.get("name"), "metadata.name", "name", DNS_SUBDOMAIN)
        namespace = self.name(f.get("namespace"), "metadata.namespace", "namespace", DNS_LABEL)
        namespace = namespace or self.default_namespace
        if kind is not None and name is not None:
            shown = f"{kind} {namespace}/{name}"
            self.unique(self.seen, (kind, namespace, name), shown, f["name"], "metadata.name")
        labels = self.text_map(f.get("labels"), "metadata.labels", "label name", LABEL_KEY, numbers=False)
        for label, value in labels.items():
            if value and not LABEL_VALUE.match(value):
                self.report(f["labels"], join("metadata.labels", label), f"invalid label value '{value}'")
        annotations = self.text_map(f.get("annotations"), "metadata.annotations", "annotation name", LABEL_KEY,
                                    numbers=False)
        return name, namespace, labels, annotations
