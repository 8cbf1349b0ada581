"""Rotating the lab's root CA live (the `rotate_root` fault), with or without an overlap.

With overlap, as Istio's documented plug-in-CA rotation: (1) every agent trusts
the old and the new root (a `trust` section with both in every snapshot, waited
for until each agent ACKed it); (2) the new root signs, the agents renew every
leaf whose issuer is not the new root at once, and the control plane polls each
agent's admin `/certs` until none holds a leaf of the old root; (3) the old
root is dropped from the bundle. At every moment both ends of a handshake trust
the root of the other's leaf, so no request fails.

Without overlap the three steps are one: agents trust only the new root while
they still hold leaves of the old one, so new connections fail until both ends
of each have renewed; the answer says how long that took and how many requests
the mesh's proxies saw fail meanwhile.

An agent away during a rotation (paused, disconnected, not running) misses the
snapshots that announce the new root, and the control plane's agent-channel
certificate is signed by a root it does not trust. So, like Istio's
`istio-ca-root-cert` ConfigMap mounted into every pod, the trust bundle is also
written out of band into every node's `bootstrap/root-cert.pem` whenever it
changes: old and new root from step 1 on, only the new one once the old is
dropped. An agent whose handshake fails verification re-reads that file
(agents/common/channel.py). Best effort: a node that cannot be reached is named
in the answer (`bundleNotDelivered`) and gets the file on the next `meshlab up`.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import TYPE_CHECKING, Any

from lab.controlplane.proxies import agent_addresses, failures_between, mesh_failures
from lab.errors import LabError

if TYPE_CHECKING:
    from lab.controlplane.daemon import ControlPlane

ADMIN_PORT = 15000
SYNC_TIMEOUT = 15.0
REISSUE_TIMEOUT = 25.0
COPY_TIMEOUT = 10.0
NODE_BUNDLE = "bootstrap/root-cert.pem"  # where agents' `--root-file` points, in the node's folder


async def rotate_root(cp: ControlPlane, overlap: bool) -> dict[str, Any]:
    """Rotate the root; returns what happened (roots, steps with their seconds, failures seen)."""
    began = time.monotonic()
    state = cp.state
    failures_before = await mesh_failures(state)
    old = cp.ca.root.subject.rfc4514_string()
    steps: list[dict[str, Any]] = []
    left: list[str] = []

    async def step(what: str, wait_reissue: bool = False) -> None:
        t0 = time.monotonic()
        version = cp.config_changed(f"root rotation: {what}")
        synced = await cp.channel.wait_synced(SYNC_TIMEOUT)
        entry: dict[str, Any] = {"step": what, "version": version, "synced": synced}
        if wait_reissue:
            left[:] = entry["stillOnOldRoot"] = await wait_reissued(state, old, REISSUE_TIMEOUT)
        entry["seconds"] = round(time.monotonic() - t0, 3)
        steps.append(entry)

    undelivered: dict[str, str] = {}  # node -> why the latest bundle could not be written there

    async def write_bundle() -> None:
        undelivered.clear()
        undelivered.update(await distribute_bundle(cp))

    if overlap:
        cp.ca.prepare_root()
        await write_bundle()  # both roots: whichever signs the channel's certificate, an agent trusts it
        await step("agents trust the old and the new root")
        cp.ca.activate_next_root()
        cp.refresh_channel_cert()
        await step("the new root signs; every leaf is re-issued", wait_reissue=True)
        cp.ca.drop_old_roots()
        await write_bundle()
        await step("the old root is dropped")
    else:
        cp.ca.prepare_root()
        cp.ca.activate_next_root()
        cp.ca.drop_old_roots()
        cp.refresh_channel_cert()
        await write_bundle()
        await step("the root is swapped at once (no overlap); every leaf is re-issued", wait_reissue=True)
    failed = failures_between(failures_before, await mesh_failures(state, cp.state))
    new = cp.ca.root.subject.rfc4514_string()
    return {"overlap": overlap, "oldRoot": old, "newRoot": new, "steps": steps,
            "seconds": round(time.monotonic() - began, 3), "failedRequests": failed, "stillOnOldRoot": left,
            "bundleNotDelivered": [f"{node}: {why}" for node, why in sorted(undelivered.items())]}


async def distribute_bundle(cp: ControlPlane) -> dict[str, str]:
    """Write the CA's current trust bundle into every node's bootstrap root file, through the node's
    provider; returns the nodes it could not be written to, with why (best effort: never raises)."""
    from lab.handle import Lab  # the providers: only when a rotation needs them

    bundle = cp.ca.bundle_file()
    nodes = list(cp.state["nodes"])
    lab = Lab(cp.lab)

    async def copy(node: str) -> str | None:
        try:
            provider = lab.provider_of(node, cp.state)
            await asyncio.wait_for(provider.copy_file(node, bundle, NODE_BUNDLE), COPY_TIMEOUT)
        except (LabError, OSError, NotImplementedError) as e:
            return str(e) or type(e).__name__
        except TimeoutError:
            return f"no answer within {COPY_TIMEOUT:.0f}s"
        return None

    try:
        results = await asyncio.gather(*(copy(node) for node in nodes))
    finally:
        await lab.close()
    failed = {node: why for node, why in zip(nodes, results) if why is not None}
    for node, why in failed.items():
        cp.event(f"root rotation: the trust bundle could not be written to node {node} ({why}); "
                 f"the next `meshlab up` copies it there")
    return failed


async def wait_reissued(state: dict[str, Any], old_issuer: str, timeout: float) -> list[str]:
    """Poll every agent's `/certs` until none holds a leaf issued by `old_issuer`; returns what still did."""
    deadline = time.monotonic() + timeout
    while True:
        held = await asyncio.gather(*(asyncio.to_thread(_old_leaves, a, old_issuer) for a in agent_addresses(state)))
        left = [f"{address}: {identity}" for address, identities in zip(agent_addresses(state), held)
                for identity in identities]
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.1)


def _old_leaves(address: str, old_issuer: str) -> list[str]:
    """The identities an agent holds a leaf of `old_issuer` for (none when it does not answer: not running)."""
    try:
        with urllib.request.urlopen(f"http://{address}:{ADMIN_PORT}/certs", timeout=2) as r:
            doc = json.loads(r.read())
    except (OSError, ValueError):
        return []
    return [str(c.get("identity")) for c in doc.get("certificates", []) if c.get("issuer") == old_issuer]
