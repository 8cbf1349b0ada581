"""Client side of the mesh resolver protocol: where does a connection to service:port go?"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import urllib.parse
from collections.abc import Mapping


class ResolveError(Exception):
    """The resolver could not give an address (unknown service, no endpoint, resolver down)."""


def resolver_address(resolver: str | None = None) -> tuple[str, int]:
    """The resolver's (host, port), from the argument or `MESH_RESOLVER`."""
    text = resolver or os.environ.get("MESH_RESOLVER", "")
    if not text:
        raise ResolveError("no mesh resolver: MESH_RESOLVER is not set")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ResolveError(f"bad mesh resolver address {text!r} (want host:port)")
    return host.strip("[]"), int(port)


def is_ip_address(text: str) -> bool:
    """True for a literal IPv4/IPv6 address (those need no resolving)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def resolve(
    service: str,
    port: int,
    resolver: str | None = None,
    namespace: str | None = None,
    timeout: float = 2.0,
) -> tuple[str, int]:
    """Ask the node's mesh resolver where a new connection to service:port must go."""
    if is_ip_address(service):
        return service, port
    host, resolver_port = resolver_address(resolver)
    namespace = namespace if namespace is not None else os.environ.get("MESH_NAMESPACE") or None
    query = {"service": service, "port": str(port)}
    if namespace:
        query["namespace"] = namespace
    source = source_address()
    if source:
        query["source"] = source[0]  # a workload with a sidecar is answered with its sidecar
    status, answer = _get_json(host, resolver_port, "/resolve?" + urllib.parse.urlencode(query), timeout)
    if status != 200:
        message = answer.get("error") or f"resolver answered {status}"
        raise ResolveError(str(message))
    try:
        return str(answer["address"]), int(answer["port"])
    except (KeyError, TypeError, ValueError):
        raise ResolveError(f"bad resolver answer for {service}:{port}: {answer!r}") from None


def _get_json(host: str, port: int, path: str, timeout: float) -> tuple[int, dict]:
    """One GET to the resolver; (status, JSON object) or ResolveError."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
    except TimeoutError:
        raise ResolveError(f"mesh resolver {host}:{port} timed out") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ResolveError(f"mesh resolver {host}:{port} unreachable: {exc}") from None
    finally:
        conn.close()
    try:
        answer = json.loads(body or b"{}")
    except ValueError:
        answer = {}
    if not isinstance(answer, dict):
        answer = {}
    return response.status, answer


def env_identity(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Who this workload is, from the lab's environment variables."""
    env = os.environ if environ is None else environ
    return {
        "namespace": env.get("MESH_NAMESPACE", ""),
        "service": env.get("MESH_SERVICE", ""),
        "app": env.get("MESH_APP", ""),
        "version": env.get("MESH_VERSION", ""),
        "sa": env.get("MESH_SERVICE_ACCOUNT", ""),
        "workload": env.get("MESHLAB_WORKLOAD", ""),
        "node": env.get("MESHLAB_NODE", ""),
    }


def source_address() -> tuple[str, int] | None:
    """Where a workload's outgoing connections come from: its own address (`MESH_BIND_ADDR`), if it has one.

    The mesh identifies the workload behind a connection by its source address, like a pod by its IP.
    """
    addr = os.environ.get("MESH_BIND_ADDR")
    return (addr, 0) if addr else None
