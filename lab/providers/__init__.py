"""Providers by name: where a lab's nodes run (see `lab.providers.base` for the interface)."""

from __future__ import annotations

import importlib

from lab.errors import LabError
from lab.providers.base import Provider

# name -> "module:Class"; imported on first use, so a provider's optional dependencies
# (a Docker client, asyncssh) are only needed by labs that use it.
_PROVIDERS: dict[str, str] = {
    "local": "lab.providers.local:LocalProvider",
    "fake": "lab.providers.fake:FakeProvider",  # in memory, for tests
    "docker": "lab.providers.docker:DockerProvider",
    "ssh": "lab.providers.ssh:SshProvider",
}


def provider_names() -> tuple[str, ...]:
    return tuple(_PROVIDERS)


def provider_class(name: str) -> type[Provider]:
    """The provider class registered as `name`; LabError listing the known ones otherwise."""
    if name not in _PROVIDERS:
        raise LabError(f"unknown provider {name!r} (known: {', '.join(_PROVIDERS)})")
    module, _, cls = _PROVIDERS[name].partition(":")
    found: type[Provider] = getattr(importlib.import_module(module), cls)
    return found
