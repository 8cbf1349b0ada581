"""The HBONE request headers the ztunnel writes and reads: Forwarded (RFC 7239), W3C baggage and traceparent.

Pure functions: the outbound side builds the headers of a CONNECT, the inbound
side reads the original client address and the source's description back.
"""

from __future__ import annotations

import re
import secrets
import urllib.parse

from agents.ztunnel.config import Service, Workload

_FOR = re.compile(r'(?:^|[;,\s])for=(?:"([^"]*)"|([^;,\s]*))', re.I)
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def connect_headers(client: tuple[str, int], source: Workload, service: Service,
                    cluster: str | None = None, traceparent: str | None = None) -> dict[str, str]:
    """forwarded, baggage and traceparent for a CONNECT on behalf of `source` towards `service`."""
    host = f"[{client[0]}]" if ":" in client[0] else client[0]
    return {
        "forwarded": f'for="{host}:{client[1]}";host={service.hostname}',
        "baggage": baggage(source, cluster),
        "traceparent": traceparent or new_traceparent(),
    }


def baggage(source: Workload, cluster: str | None = None) -> str:
    """W3C baggage describing the source workload, with the keys Istio's ztunnel reads.

    `service.name`/`service.version` are the source's canonical service and revision
    (its app and version labels), as in Istio, not the destination service.
    """
    items = [("k8s.namespace.name", source.namespace), ("k8s.workload.name", source.name),
             ("service.name", source.canonical_service), ("service.version", source.canonical_revision)]
    if cluster and cluster != "unknown":
        items.insert(0, ("k8s.cluster.name", cluster))
    return ",".join(f"{key}={urllib.parse.quote(value, safe='')}" for key, value in items)


def parse_baggage(header: str | None) -> dict[str, str]:
    """key -> value of a baggage header (properties after `;` dropped, malformed members skipped)."""
    values: dict[str, str] = {}
    for member in (header or "").split(","):
        key, sep, value = member.split(";", 1)[0].partition("=")
        if sep and key.strip():
            values[key.strip()] = urllib.parse.unquote(value.strip())
    return values


def forwarded_node(header: str | None) -> str | None:
    """The first `for=` node of a Forwarded header as written (`ip:port`, `[v6]:port`, `ip`), or None."""
    m = _FOR.search(header or "")
    if m is None:
        return None
    return m.group(1) if m.group(1) is not None else m.group(2)


def forwarded_for(header: str | None) -> str | None:
    """The client IP of the first `for=` of a Forwarded header (port and brackets removed), or None."""
    node = forwarded_node(header)
    if node is None:
        return None
    if node.startswith("["):
        end = node.find("]")
        return node[1:end] if end > 1 else None
    host = node.rsplit(":", 1)[0] if node.count(":") == 1 else node
    return host or None


def new_traceparent() -> str:
    """A new W3C trace context: version 00, random trace and span ids, sampled."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a traceparent header, or None when it is absent or malformed."""
    m = _TRACEPARENT.match((traceparent or "").strip().lower())
    return m.group(1) if m else None
