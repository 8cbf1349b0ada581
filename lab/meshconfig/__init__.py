"""Mesh config: Istio's API accepted verbatim (the supported subset), validated, stored, and given to agents."""

from lab.meshconfig.parse import ConfigObject, load_config, objects_to_yaml, parse_config, resolve_kind
from lab.meshconfig.snapshot import to_agent_json
from lab.meshconfig.store import ConfigNotFound, ConfigStore

__all__ = ["ConfigNotFound", "ConfigObject", "ConfigStore", "load_config", "objects_to_yaml", "parse_config",
           "resolve_kind", "to_agent_json"]
