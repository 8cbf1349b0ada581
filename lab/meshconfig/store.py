"""The lab's mesh config store: every applied object, in one JSON file, with a version.

The file is `{"version": N, "objects": [ConfigObject.to_dict(), ...]}`, objects oldest
first (an update keeps an object's place, as a Kubernetes update keeps its creation time).
Every change is checked in full first and then written with one atomic write, so an apply
or a delete takes effect entirely or not at all; `version` grows by one with each change
that alters something, and the control plane pushes a new snapshot when it does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.meshconfig.parse import KINDS, ConfigObject, resolve_kind
from lab.state import atomic_write

Key = tuple[str, str, str]  # (kind, namespace, name)
Outcome = tuple[str, str, str]  # (kind, "namespace/name", "created" | "configured" | "unchanged" | "deleted")


class ConfigNotFound(LabError):
    """The mesh config object asked for is not in the store."""

    exit_code = 3


class ConfigStore:
    """Applied mesh config objects, persisted in the JSON file at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.version, self._objects = self._load()

    def _load(self) -> tuple[int, dict[Key, ConfigObject]]:
        """The version and objects in the file (none yet if it does not exist)."""
        try:
            data = json.loads(self.path.read_text())
            objects = [ConfigObject.from_dict(item) for item in data["objects"]]
            version = int(data["version"])
        except FileNotFoundError:
            return 0, {}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LabError(f"cannot read the mesh config store {self.path}: {e}") from None
        return version, {obj.key: obj for obj in objects}

    def _save(self, objects: dict[Key, ConfigObject]) -> None:
        """Write `objects` as the next version, then make it the store's state."""
        data: dict[str, Any] = {"version": self.version + 1, "objects": [obj.to_dict() for obj in objects.values()]}
        atomic_write(self.path, json.dumps(data, indent=2) + "\n")
        self.version, self._objects = self.version + 1, objects

    def objects(self) -> list[ConfigObject]:
        """Every object, oldest first (the order the agent snapshot wants)."""
        return list(self._objects.values())

    def apply(self, objects: Iterable[ConfigObject]) -> list[Outcome]:
        """Create or update every object, or none of them if one is not acceptable."""
        batch = list(objects)
        seen: set[Key] = set()
        for obj in batch:
            if not isinstance(obj, ConfigObject) or obj.kind not in KINDS:
                raise LabError(f"cannot apply {getattr(obj, 'kind', type(obj).__name__)}: meshlab accepts "
                               f"{' and '.join(KINDS)}")
            if obj.key in seen:
                raise LabError(f"{obj.kind} {obj.ref} is given twice in one apply; give each object once")
            seen.add(obj.key)
        updated = dict(self._objects)
        outcomes = []
        for obj in batch:
            old = updated.get(obj.key)
            outcomes.append((obj.kind, obj.ref, "created" if old is None else
                             "unchanged" if old == obj else "configured"))
            updated[obj.key] = obj
        if any(outcome != "unchanged" for _, _, outcome in outcomes):
            self._save(updated)
        return outcomes

    def get(self, kind: str | None = None, name: str | None = None,
            namespace: str | None = None) -> list[ConfigObject]:
        """The objects of `kind` (any form `resolve_kind` takes), named `name`, in `namespace` (None: any)."""
        wanted = resolve_kind(kind) if kind is not None else None
        found = [obj for obj in self._objects.values()
                 if (wanted is None or obj.kind == wanted) and (name is None or obj.name == name)
                 and (namespace is None or obj.namespace == namespace)]
        return sorted(found, key=lambda obj: (obj.namespace, obj.kind, obj.name))

    def delete(self, kind: str, name: str, namespace: str = "default", missing_ok: bool = False) -> list[Outcome]:
        """Remove one object; a missing one is a `ConfigNotFound` unless `missing_ok`."""
        return self._delete([(resolve_kind(kind), namespace, name)], missing_ok)

    def delete_objects(self, objects: Iterable[ConfigObject], missing_ok: bool = False) -> list[Outcome]:
        """Remove the objects a file describes (`meshlab delete -f`): all of them, or none if one is missing."""
        return self._delete([obj.key for obj in objects], missing_ok)

    def _delete(self, keys: list[Key], missing_ok: bool) -> list[Outcome]:
        """Remove the objects at `keys` in one write."""
        missing = [key for key in keys if key not in self._objects]
        if missing and not missing_ok:
            raise ConfigNotFound("; ".join(f"{kind} '{name}' not found in namespace '{namespace}'"
                                           for kind, namespace, name in missing))
        remaining = {key: obj for key, obj in self._objects.items() if key not in keys}
        outcomes = [(kind, f"{namespace}/{name}", "deleted") for kind, namespace, name in dict.fromkeys(keys)
                    if (kind, namespace, name) in self._objects]
        if outcomes:
            self._save(remaining)
        return outcomes
