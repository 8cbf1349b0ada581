"""Outbound HBONE connections, one `HboneClient` pool per source identity.

Why one pool per identity: HBONE pools connections per (source identity,
destination identity, address), so after a source's certificate is renewed the
pool would keep reusing connections made with the old one. Closing them would
cut the tunnels they carry. Instead the identity's client is *retired*: new
tunnels go through a fresh client (new handshakes, new certificate), and the
retired one is closed once none of its connections carries a stream.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Mapping

from agents.hbone import HboneClient, Tunnel

log = logging.getLogger("meshlab.ztunnel.dialer")
SWEEP_SECONDS = 2.0


class HboneDialer:
    """Opens CONNECT tunnels as a given source identity."""

    def __init__(self, contexts: Callable[[str], ssl.SSLContext | None], connect_timeout: float = 5.0) -> None:
        self.contexts = contexts
        self.connect_timeout = connect_timeout
        self._clients: dict[str, HboneClient] = {}
        self._retired: list[HboneClient] = []
        self._sweeper: asyncio.Task[None] | None = None

    async def connect(self, dest_addr: tuple[str, int], authority: str, src_identity: str, dst_identity: str,
                      headers: Mapping[str, str]) -> Tunnel:
        """A tunnel to `authority` via the HBONE server at `dest_addr`; raises HboneError."""
        client = self._clients.get(src_identity)
        if client is None:
            client = self._clients[src_identity] = HboneClient(
                self.contexts, connect_timeout=self.connect_timeout, response_timeout=self.connect_timeout * 2)
        return await client.connect(dest_addr, authority, src_identity, dst_identity, headers)

    def rotated(self, identity: str) -> None:
        """The identity has a new certificate: new tunnels use new connections."""
        client = self._clients.pop(identity, None)
        if client is not None:
            self._retired.append(client)
            if self._sweeper is None or self._sweeper.done():
                self._sweeper = asyncio.create_task(self._sweep(), name="hbone-retired-sweep")

    def connections(self) -> int:
        """Live pooled connections, retired ones included."""
        return sum(len(c.pooled()) for c in [*self._clients.values(), *self._retired])

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for client in [*self._clients.values(), *self._retired]:
            await client.aclose()
        self._clients.clear()
        self._retired.clear()

    async def _sweep(self) -> None:
        """Close retired pools once their connections are idle."""
        while self._retired:
            await asyncio.sleep(SWEEP_SECONDS)
            for client in list(self._retired):
                if not any(conn.streams for conn in client.pooled()):
                    self._retired.remove(client)
                    await client.aclose()
