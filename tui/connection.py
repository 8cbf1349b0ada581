"""The TUI's one way to the lab: the lab API client, called off the event loop, re-created when the lab comes back."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from lab.client import LabApiError, LabClient
from lab.errors import LabError
from tui.faultcatalogue import FaultCatalogue

T = TypeVar("T")


class LabApi(Protocol):
    """The calls of `lab.client.LabClient` the TUI makes (a test double implements the same)."""

    lab: str

    def nodes(self) -> dict[str, Any]: ...
    def proxy_status(self) -> dict[str, Any]: ...
    def traffic(self) -> dict[str, Any]: ...
    def loads(self) -> dict[str, Any]: ...
    def get_config(self, kind: str | None = None, name: str | None = None,
                   namespace: str | None = None) -> dict[str, Any]: ...
    def events(self, since: float = 0.0) -> dict[str, Any]: ...
    def certs(self) -> dict[str, Any]: ...
    def usage(self) -> dict[str, Any]: ...
    def logs(self, node: str, process: str, tail: int = 100) -> dict[str, Any]: ...
    def set_mode(self, namespace: str, mode: str) -> dict[str, Any]: ...
    def apply(self, documents: list[tuple[str, str]]) -> dict[str, Any]: ...
    def delete_config(self, **body: Any) -> dict[str, Any]: ...
    def start_load(self, target: str, **options: Any) -> dict[str, Any]: ...
    def stop_load(self, run_id: str) -> dict[str, Any]: ...
    def set_waypoint(self, namespace: str, enabled: bool, service: str | None = None) -> dict[str, Any]: ...
    def faults(self) -> dict[str, Any]: ...
    def fault_kinds(self) -> dict[str, Any]: ...
    def config_dump(self, agent: str = "ztunnel", node: str | None = None) -> dict[str, Any]: ...
    def add_fault(self, kind: str, target: str | None = None, params: dict[str, Any] | None = None,
                  ttl_seconds: float | None = None, toxicity: float | None = None,
                  direction: str | None = None) -> dict[str, Any]: ...
    def remove_fault(self, fault_id: str | None = None, everything: bool = False) -> dict[str, Any]: ...


ClientFactory = Callable[[str], LabApi]


class LabConnection:
    """One lab's API client: made on first use, dropped when the control plane stops answering."""

    def __init__(self, lab: str, factory: ClientFactory = LabClient) -> None:
        self.lab = lab
        self._factory = factory
        self._client: LabApi | None = None
        self._lock = threading.Lock()
        self._catalogue: FaultCatalogue | None = None  # the lab's fault kinds: asked once a session

    def client(self) -> LabApi:
        """The client, made now if there is none (raises LabError when the lab is not there)."""
        with self._lock:
            if self._client is None:
                self._client = self._factory(self.lab)
            return self._client

    def call_blocking(self, verb: Callable[[LabApi], T]) -> T:
        """Run `verb` on the client; a lab that does not answer drops the client so the next call looks again."""
        try:
            return verb(self.client())
        except LabApiError:
            raise
        except LabError:
            with self._lock:
                self._client = None
            raise
        except Exception as e:  # an answer the client could not make sense of: a message, never a traceback
            raise LabError(f"unexpected answer from the lab API ({type(e).__name__}: {e})") from e

    async def call(self, verb: Callable[[LabApi], T]) -> T:
        """`call_blocking` in a thread, so the UI keeps painting while the lab answers."""
        return await asyncio.to_thread(self.call_blocking, verb)

    async def fault_catalogue(self) -> FaultCatalogue:
        """The lab's fault kinds, asked on first use and kept for the session (a failed ask is asked again)."""
        if self._catalogue is None:
            answer = await self.call(lambda api: api.fault_kinds())
            try:
                self._catalogue = FaultCatalogue.from_json(answer)
            except (TypeError, ValueError, AttributeError) as e:
                raise LabError(f"unexpected fault catalogue from the lab API ({e})") from e
        return self._catalogue


def describe(error: LabError) -> str:
    """A one-message text of a lab error, with the config problems (file:line, field) on their own lines."""
    if isinstance(error, LabApiError) and error.problems:
        return str(error).split("\n", 1)[0] + "\n" + "\n".join(error.problems)
    return str(error)
