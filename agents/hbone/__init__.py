"""HBONE: HTTP/2 CONNECT (RFC 9113 §8.5) over mutual TLS 1.3 with ALPN h2 (DESIGN §4).

The transport the ztunnel, the waypoint and the sidecar share:

* `HboneClient.connect(...) -> Tunnel` opens a tunnel over a pooled connection;
* `HboneServer(host, port, contexts, on_connect)` serves CONNECT requests and
  pipes accepted ones to their target;
* `pipe` / `pipe_socket` move a tunnel's bytes to and from a TCP connection;
* `tls` makes the contexts and names identities in SNI.

Layout: frames.py (sans-IO framing and flow control), tls.py (contexts, SNI,
the TLS channel), connection.py (one HTTP/2 connection and its threads),
stream.py (the tunnel), pipe.py (tunnel <-> TCP), client.py, server.py.
"""

from agents.hbone.client import HboneClient
from agents.hbone.server import ConnectDecision, ConnectRequest, HboneServer, split_authority
from agents.hbone.pipe import pipe, pipe_socket
from agents.hbone.stream import HboneError, Tunnel
from agents.hbone.tls import (
    CertSource,
    StaticCertSource,
    client_context,
    identity_from_sni,
    peer_identity,
    server_context,
    sni_for_identity,
)

__all__ = [
    "CertSource", "ConnectDecision", "ConnectRequest", "HboneClient", "HboneError", "HboneServer",
    "StaticCertSource", "Tunnel", "client_context", "identity_from_sni", "peer_identity", "pipe",
    "pipe_socket", "server_context", "sni_for_identity", "split_authority",
]
