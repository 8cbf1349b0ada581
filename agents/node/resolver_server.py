"""The mesh resolver over HTTP/1.1: `GET /resolve` and `GET /table` on the node's address.

`answer` is pure (query in, status and JSON out); the server is the agents'
small admin server (`agents.common.admin_http`) with these two routes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from agents.common.admin_http import AdminServer, Reply
from agents.node.resolver import ResolveError, Resolver


def answer(resolver: Resolver, query: Mapping[str, str]) -> tuple[int, Any]:
    """The status and JSON body of `GET /resolve?service=S[&port=P][&namespace=N][&source=W]`."""
    service = query.get("service")
    if not service:
        return 400, {"error": "missing query parameter 'service'"}
    port: int | None = None
    if query.get("port"):
        try:
            port = int(query["port"])
        except ValueError:
            return 400, {"error": f"bad port {query['port']!r}"}
    try:
        return 200, resolver.resolve(service, port, query.get("namespace") or None,
                                     query.get("source") or None).to_json()
    except ResolveError as e:
        return e.status, {"error": str(e)}


class ResolverServer(AdminServer):
    """Serves the resolver of `current()` (re-read per request, so a pushed table applies at once)."""

    def __init__(self, current: Callable[[], Resolver]) -> None:
        def resolve(query: Mapping[str, str]) -> Reply:
            status, body = answer(current(), query)
            return Reply.json(body, status)

        super().__init__({"/resolve": resolve, "/table": lambda query: Reply.json(current().table)})
