"""YAML with line numbers: compose (not load) a file so every value keeps its line, and check it.

`YamlWalker` walks a tree composed by PyYAML's SafeLoader against a schema that its
subclasses spell out (the topology loader, the mesh config parser). It rejects duplicate
keys, merge keys and unknown fields by name, and collects every `Problem` it finds, each
located by file, line and field path, so the caller can raise one error listing them all.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from typing import Any, TypeGuard

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.nodes import Node as YamlNode

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")  # a Kubernetes label value
LABEL_KEY = re.compile(r"([a-z0-9][-a-z0-9.]*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}\Z)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
ENDS = "starting and ending with a letter or digit, at most 63 characters"
RULES = {DNS_LABEL: f"use lowercase letters, digits and '-', {ENDS}",
         LABEL_VALUE: f"use letters, digits, '-', '_' and '.', {ENDS}",
         DNS_SUBDOMAIN: "use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, "
                        "at most 253 characters"}
MAX_EXPANDED_VALUES = 100_000  # free-form values expanded through aliases (a "billion laughs" guard)

YAML_TAG = "tag:yaml.org,2002:"
KINDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean",
         "null": "nothing (null)", "timestamp": "a date", "binary": "binary data"}
QUOTABLE = {YAML_TAG + kind for kind in ("int", "float", "bool", "timestamp")}  # scalars quoting turns into strings


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a YAML file, located by line and field path."""

    source: str  # the file (or "<memory>")
    line: int | None  # 1-based; None when it concerns the whole file
    path: str  # e.g. "services[2].workloads[0].node"; "" for the file as a whole
    message: str

    def __str__(self) -> str:
        where = os.path.basename(self.source) + (f":{self.line}" if self.line else "")
        return f"{self.path}: {self.message} ({where})" if self.path else f"{self.message} ({where})"


def join(path: str, key: str) -> str:
    """The path of field `key` inside `path`."""
    return f"{path}.{key}" if path else key


def line_of(node: YamlNode) -> int:
    """The 1-based line a YAML node starts on."""
    return node.start_mark.line + 1


def is_scalar(node: YamlNode | None, kind: str) -> TypeGuard[ScalarNode]:
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


class YamlWalker:
    """Checks composed YAML nodes against a schema, collecting problems; subclasses add the schema."""

    document = "a YAML document"  # what the file should hold, for messages about its text
    empty_message = "the file is empty"

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []
        self.constructor = yaml.constructor.SafeConstructor()
        self.expanded = 0  # free-form values converted so far

    def report(self, at: YamlNode | int | None, path: str, message: str) -> None:
        """Record a problem at a YAML node (or a line)."""
        line = line_of(at) if isinstance(at, YamlNode) else at
        self.problems.append(Problem(self.source, line, path, message))

    # --- text and YAML ----------------------------------------------------------------------------------

    def compose(self, text: str | bytes) -> YamlNode | None:
        """The YAML tree of `text`, or None (with a problem reported) if there is none."""
        roots = self.composed(text, every_document=False)
        return roots[0] if roots else None

    def compose_all(self, text: str | bytes) -> list[YamlNode] | None:
        """The trees of the non-empty documents in `text` (`---` separated); None if the text is not YAML."""
        return self.composed(text, every_document=True)

    def composed(self, text: str | bytes, every_document: bool) -> list[YamlNode] | None:
        """The YAML trees of `text`, reporting syntax errors and an empty file."""
        decoded = self.decode(text)
        if decoded is None:
            return None
        try:
            if every_document:
                roots = [root for root in yaml.compose_all(decoded, Loader=yaml.SafeLoader)
                         if not is_scalar(root, "null")]
            else:
                root = yaml.compose(decoded, Loader=yaml.SafeLoader)
                roots = [] if root is None else [root]
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
        if not roots:
            self.report(None, "", self.empty_message)
        return roots

    def decode(self, text: str | bytes) -> str | None:
        """The text as a string, or None (reported) if it is binary or not UTF-8."""
        data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
        if b"\0" in data:
            line = data[: data.index(b"\0")].count(b"\n") + 1
            self.report(line, "", f"the file contains binary data (a NUL byte); {self.document} is UTF-8 YAML text")
            return None
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            byte = f"byte 0x{data[e.start]:02x}"
            self.report(line, "", f"the file is not valid UTF-8 ({byte}); {self.document} is UTF-8 YAML text")
            return None

    # --- shapes -----------------------------------------------------------------------------------------

    def pairs(self, node: YamlNode, path: str) -> list[tuple[str, YamlNode, YamlNode]]:
        """The (key, key node, value node) entries of a mapping with string keys, reporting duplicate keys."""
        if not isinstance(node, MappingNode):
            self.report(node, path, f"expected a mapping, got {describe(node)}")
            return []
        entries: list[tuple[str, YamlNode, YamlNode]] = []
        seen: dict[str, int] = {}
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
                self.report(key, join(path, name), self.unknown(name, schema))
            elif not is_scalar(value, "null"):
                found[name] = value
        for name in [n for n, required in schema.items() if required and n not in found]:
            if name in keys:
                self.report(keys[name], path, f"required field '{name}' has no value")
            elif isinstance(node, MappingNode):
                self.report(node, path, f"missing required field '{name}'")
        return found

    def unknown(self, name: str, schema: dict[str, bool]) -> str:
        """The message for field `name` that `schema` does not have (subclasses may explain known omissions)."""
        return unknown_field(name, schema)

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

    def unique(self, seen: dict[Any, int], key: Any, shown: str, node: YamlNode, path: str) -> None:
        """Remember `key`, reporting it if it was declared before."""
        if key in seen:
            self.report(node, path, f"duplicate {shown} (first at line {seen[key]})")
        else:
            seen[key] = line_of(node)
