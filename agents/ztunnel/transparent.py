"""Transparent capture (docker nodes): iptables REDIRECTs workload traffic to 15001/15006 on this node.

The node's nat rules (`lab/capture.py`) send TCP from an ambient workload to the service CIDR to
0.0.0.0:15001 and plaintext to an ambient workload's port to 0.0.0.0:15006. What the client asked for is
then no longer the socket's own address: the kernel keeps it in the connection's conntrack entry, read
with SO_ORIGINAL_DST. The ztunnel's own upstream sockets carry PROXY_MARK, which the rules skip, so
what it sends is never captured again.
"""

from __future__ import annotations

import socket
import struct

OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
PROXY_MARK = 0x539
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h, at level SOL_IP


def listen_addresses() -> set[tuple[str, str, int]]:
    """(kind, ip, port) of the two wildcard capture sockets."""
    return {("outbound", "0.0.0.0", OUTBOUND_PORT), ("inbound", "0.0.0.0", INBOUND_PORT)}


def parse_sockaddr_in(raw: bytes) -> tuple[str, int]:
    """(ip, port) of a `struct sockaddr_in` (family, port in network order, address, padding)."""
    if len(raw) < 8:
        raise OSError(f"SO_ORIGINAL_DST: a short sockaddr ({len(raw)} bytes)")
    (family,) = struct.unpack_from("=H", raw)  # host order, like every sa_family
    (port,) = struct.unpack_from("!H", raw, 2)
    if family != socket.AF_INET:
        raise OSError(f"SO_ORIGINAL_DST: not an IPv4 address (family {family})")
    return socket.inet_ntoa(raw[4:8]), port


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where the client connected before iptables redirected it; its own address if it was not redirected."""
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:  # no conntrack entry (not NATed, or conntrack not loaded): it came here directly
        host, port = sock.getsockname()[:2]
        return str(host), int(port)
    return parse_sockaddr_in(raw)


def mark(sock: socket.socket, value: int = PROXY_MARK) -> None:
    """Mark a socket so the capture rules let its traffic through (needs CAP_NET_ADMIN, as the node has)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, value)
