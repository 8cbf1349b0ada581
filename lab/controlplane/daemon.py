"""The control plane daemon of one lab: CA, config store, agent channel and lab API.

Started detached by `meshlab up` (`python -m lab.controlplane --lab NAME`),
tagged like every lab process so `down` finds it. It announces where it
listens in `<lab>/controlplane.json`. Everything it knows lives in the lab
folder, so a restarted control plane picks up where the last one stopped and
the agents, which kept serving meanwhile, resync on reconnect.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import json
import logging
import os
import signal
import ssl
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from lab import capture, dataplane, mesh
from lab.ca import LabCA, NodeAuthorizer
from lab.controlplane.api import LabApi
from lab.controlplane.bootstrap import AGENT_CHANNEL_PORT, api_token, channel_addresses, node_tokens
from lab.controlplane.channel import AgentChannelServer
from lab.controlplane import reach, readiness
from lab.controlplane.httpserver import JsonApiServer
from lab.controlplane.loads import LoadRuns
from lab.controlplane.proxies import (ProxyControl, failures_between, mesh_failures, sidecar_process_of,
                                      wait_proxies_ready)
from lab.controlplane.telemetry import TrafficView
from lab.errors import LabError
from lab.faults.live import LiveFaults
from lab.meshconfig import ConfigStore, to_agent_json
from lab.state import LabState, atomic_write, lab_dir

log = logging.getLogger("meshlab.controlplane")
MODES = ("none", "ambient", "sidecar")
SIDECAR_START_TIMEOUT = 60.0

class ControlPlane:
    """Holds the lab's state and serves agents and clients from it."""

    def __init__(self, lab: str) -> None:
        self.lab = lab
        self.dir = lab_dir(lab)
        self.state_file = LabState(lab)
        self.state = self.state_file.load()
        self.ca = LabCA.load_or_create(self.dir / "ca", self.state["trustDomain"])
        self.store = ConfigStore(self.dir / "config.json")
        self.started = time.time()
        self.channel = AgentChannelServer(node_tokens(self.dir, list(self.state["nodes"])), self.snapshot_for,
                                          self.sign, self.ttl)
        self._authorizer = NodeAuthorizer(mesh.node_identities(self.state))
        self._retired_waypoints: dict[str, dict[str, Any]] = {}  # disabled, still draining: keep their config
        self.proxies = ProxyControl(lab)
        self.traffic = TrafficView()
        self.loads = LoadRuns(lab)
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=500)
        self.faults = LiveFaults(self)  # faults.json: survives a restart
        self._channel_contexts: list[ssl.SSLContext] = []  # re-loaded after a root rotation
        self.event("control plane started")

    def event(self, message: str, **fields: Any) -> None:
        """Something a person watching the lab should see (mode switched, config applied, ...)."""
        self.events.append({"time": time.time(), "message": message, **fields})
        log.info("%s", message)

    @property
    def ttl(self) -> timedelta:
        return timedelta(seconds=int(self.state.get("certTtlSeconds") or 86400))

    def snapshot_for(self, node: str, agent: str) -> dict[str, Any]:
        """The config of one agent, with every live fault agents enforce (`faults`: each agent picks its own)."""
        snapshot = self._agent_snapshot(node, agent)
        snapshot["faults"] = self.faults.for_agents(self.state)
        snapshot["trust"] = self.ca.trust_json()  # the roots agents verify peers against (a rotation changes them)
        return snapshot

    def _agent_snapshot(self, node: str, agent: str) -> dict[str, Any]:
        """The config of one agent: a node's ztunnel, a waypoint (`waypoint:ns/name`) or a sidecar (`sidecar:w`)."""
        policy, ttl = to_agent_json(self.store.objects()), int(self.ttl.total_seconds())
        kind, _, who = agent.partition(":")
        if kind == "waypoint":
            entry = dataplane.waypoints(self.state).get(who) or self._retired_waypoints.get(who)
            if entry is not None:
                return mesh.waypoint_snapshot(self.state, entry, policy, ttl)
        elif kind == "sidecar" and who in self.state["workloads"]:
            return mesh.sidecar_snapshot(self.state, who, policy, ttl)
        return mesh.ztunnel_snapshot(self.state, node, policy, ttl)

    def sign(self, node: str, holder: str, identity: str, csr: bytes) -> tuple[bytes, bytes]:
        """Sign a CSR for an agent of `node`, if a workload of that identity is scheduled there."""
        self._authorizer.check(node, identity)
        issued = self.faults.issue(csr, identity, self.ttl, holder)  # the lab CA, unless a security fault says
        return issued.leaf_pem, issued.root_pem

    async def reload(self) -> int:
        """Re-read the lab state (after `up` reconciled it), listen where new nodes need it, push a new version."""
        self.state = self.state_file.load()
        await self.listen()
        self.channel.tokens.update(node_tokens(self.dir, list(self.state["nodes"])))
        self._authorizer = NodeAuthorizer(mesh.node_identities(self.state))
        return self.channel.publish()

    def config_changed(self, what: str = "mesh config changed") -> int:
        version = self.channel.publish()
        self.event(f"{what} (config version {version})")
        return version

    async def set_mode(self, namespace: str, mode: str, timeout: float = 20.0) -> dict[str, Any]:
        """Move a namespace between modes none, ambient and sidecar, live.

        Ambient enrolment restarts nothing, as in Istio: new connections are captured from the
        moment the node's resolver says so. Into the mesh, the proxies get the new config
        (listeners, certificates) before any resolver hands out their addresses; out of it,
        the resolvers stop first. Moving into or out of sidecar mode restarts the namespace's
        workloads one by one (injection happens at start, as in Kubernetes), with their sidecars
        started before and stopped after.
        """
        self.state = self.state_file.load()  # `up` may have rewritten it since
        if namespace not in self.state["namespaces"]:
            raise LabError(f"no namespace '{namespace}' in lab '{self.lab}' "
                           f"(namespaces: {', '.join(self.state['namespaces'])})")
        if mode not in MODES:
            raise LabError(f"unknown mode '{mode}'; use one of {', '.join(MODES)}")
        before = self.state["namespaces"][namespace]["mode"]
        if before == mode:
            return {"namespace": namespace, "mode": mode, "changed": False, "version": self.channel.version}
        began = time.monotonic()
        previous_state = copy.deepcopy(self.state)
        failures_before = await mesh_failures(self.state)
        members = sorted(n for n, w in self.state["workloads"].items() if w["namespace"] == namespace)
        if mode == "sidecar":
            for name in members:  # refuse before changing anything
                dataplane.check_sidecar(self.state, name)
        self.state["namespaces"][namespace]["mode"] = mode
        self.state_file.save(self.state)
        self._authorizer = NodeAuthorizer(mesh.node_identities(self.state))
        if mode == "sidecar":
            await self.proxies.start_sidecars(self.state, members)
            # one new Python process per workload, all at once: on a busy 2-CPU node that takes a while
            await wait_proxies_ready([self.state["workloads"][w]["sidecarAddress"] for w in members],
                                     max(timeout, SIDECAR_START_TIMEOUT), f"sidecars of namespace {namespace}",
                                     reach.routes(self.state))
        expect = [f"ztunnel/{node}" for node in self.state["nodes"]]
        if mode == "none":
            await self.push_resolver_tables()
            await self.push_capture_rules()
            version = self.channel.publish()
            synced = await self.channel.wait_synced(timeout, expect)
        else:
            version = self.channel.publish()
            synced = await self.channel.wait_synced(timeout, expect)
            if mode == "ambient":
                nodes = [self.state["nodes"][n]["address"] for n in readiness.ambient_nodes(self.state)]
                not_ready = await readiness.wait_ready(nodes, timeout, reach.routes(self.state))
                if not_ready:
                    raise LabError(f"ztunnels at {', '.join(not_ready)} are not ready after {timeout:.0f}s; "
                                   f"namespace {namespace} stays enrolled, but callers keep going direct "
                                   f"(see `meshlab logs NODE/ztunnel`)")
            await self.push_capture_rules()
            await self.push_resolver_tables()
        restarted: list[str] = []
        if "sidecar" in (before, mode):
            injected = mode == "sidecar"
            env = {w: {"MESH_SIDECAR": self.state["workloads"][w]["sidecarAddress"] if injected else ""}
                   for w in members}
            restarted = await self.proxies.restart_workloads(self.state, members, env)
        # Read the counters before the old sidecars go (with them, what they counted).
        failed = failures_between(failures_before, await mesh_failures(previous_state, self.state))
        if before == "sidecar":
            await self.proxies.stop(self.state, [sidecar_process_of(self.state, w) for w in members])
            self._forget_soon([f"{dataplane.sidecar_agent(w)}/{self.state['workloads'][w]['node']}" for w in members])
        seconds = round(time.monotonic() - began, 3)
        self.event(f"namespace {namespace}: mode {before} -> {mode} (config version {version}"
                   + (f", restarted {len(restarted)} workloads" if restarted else "") + ")")
        return {"namespace": namespace, "mode": mode, "previous": before, "changed": True, "version": version,
                "synced": synced, "restarted": restarted, "seconds": seconds, "failedRequests": failed}

    async def set_waypoint(self, namespace: str, enabled: bool, service: str | None = None,
                           timeout: float = 20.0) -> dict[str, Any]:
        """Deploy or remove a waypoint for a namespace (or one service of it), live.

        Enabling starts the waypoint and waits until it serves before any ztunnel sends it traffic;
        disabling points the ztunnels back at the workloads first, then stops the waypoint.
        """
        self.state = self.state_file.load()
        key = f"{namespace}/{dataplane.waypoint_name(service)}"
        expect = [f"ztunnel/{node}" for node in self.state["nodes"]]
        if enabled:
            if key in dataplane.waypoints(self.state):
                return {"waypoint": dataplane.waypoints(self.state)[key], "changed": False,
                        "version": self.channel.version}
            entry = dataplane.add_waypoint(self.state, namespace, service)
            if service is None:
                self.state["namespaces"][namespace]["waypoint"] = True
            self.state_file.save(self.state)
            self._authorizer = NodeAuthorizer(mesh.node_identities(self.state))
            self.channel.publish()  # the waypoint's own config exists from here on
            await self.proxies.start_waypoint(self.state, entry)
            await wait_proxies_ready([entry["address"]], timeout, f"waypoint {key}", reach.routes(self.state))
            version = self.channel.publish()
            synced = await self.channel.wait_synced(timeout, expect)
        else:
            entry = dataplane.remove_waypoint(self.state, namespace, service)
            if entry is None:
                if namespace not in self.state["namespaces"]:
                    raise LabError(f"no namespace '{namespace}' in lab '{self.lab}'")
                return {"waypoint": None, "changed": False, "version": self.channel.version}
            if service is None:
                self.state["namespaces"][namespace]["waypoint"] = False
            self.state_file.save(self.state)
            self._retired_waypoints[key] = entry
            version = self.channel.publish()
            synced = await self.channel.wait_synced(timeout, expect)
            await self.proxies.stop_waypoint(self.state, entry)
            self._forget_soon([f"{dataplane.waypoint_agent(entry)}/{entry['node']}"])
            self._retired_waypoints.pop(key, None)
            self._authorizer = NodeAuthorizer(mesh.node_identities(self.state))
        self.event(f"waypoint {key} {'enabled' if enabled else 'disabled'} (config version {version})")
        return {"waypoint": entry, "enabled": enabled, "changed": True, "version": version, "synced": synced}

    async def push_capture_rules(self) -> None:
        """Rewrite the iptables capture of every transparent (docker) node for the current state."""
        from lab.handle import Lab

        lab = Lab(self.lab)
        try:
            await capture.install_all(lab, self.state)
        finally:
            await lab.close()

    def _forget_soon(self, agents: list[str], delay: float = 2.0) -> None:
        """Drop stopped proxies from proxy-status once their channel sessions have closed."""
        asyncio.get_running_loop().call_later(delay, self.channel.forget, agents)

    async def push_resolver_tables(self) -> None:
        """Hand every node's resolver its table for the current state (through the node's provider)."""
        from lab.handle import Lab

        lab = Lab(self.lab)
        try:
            await asyncio.gather(*(lab.provider_of(node, self.state).push_config(
                node, "resolver", mesh.resolver_table(self.state, node)) for node in self.state["nodes"]))
        finally:
            await lab.close()

    async def listen(self) -> None:
        """Serve the agent channel on every address the lab's nodes reach it at (local block, docker gateway)."""
        wanted = [h for h in channel_addresses(self.state) if h not in self.channel.hosts]
        if not wanted:
            return
        key, cert = self.ca.issue_server_cert(sorted({*self.channel.hosts, *wanted}))
        context = _server_context(key, cert)
        self._channel_contexts.append(context)
        for host in wanted:
            port = await self.channel.start(host, self._channel_port, context)
            self._channel_port = port
            log.info("agent channel listening on %s:%d", host, port)
        self._announce()

    def refresh_channel_cert(self) -> None:
        """Serve the agent channel with a certificate from the current root (after a root rotation);
        connected agents keep their sessions, new handshakes get the new certificate."""
        if not self.channel.hosts:
            return
        key, cert = self.ca.issue_server_cert(sorted(self.channel.hosts))
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "key.pem").write_bytes(key)
            (Path(tmp) / "cert.pem").write_bytes(cert)
            for context in self._channel_contexts:
                context.load_cert_chain(Path(tmp) / "cert.pem", Path(tmp) / "key.pem")

    def _announce(self) -> None:
        hosts = self.channel.hosts
        atomic_write(self.dir / "controlplane.json", json.dumps({
            "pid": os.getpid(), "api": f"http://127.0.0.1:{self._api_port}",
            "channel": f"{hosts[0]}:{self._channel_port}",
            "channels": [f"{h}:{self._channel_port}" for h in hosts],
            "startedAt": self.started}, indent=2), mode=0o600)

    async def run(self) -> None:
        self._channel_port = int(os.environ.get("MESHLAB_CP_PORT", AGENT_CHANNEL_PORT))
        api = JsonApiServer(LabApi(self, api_token(self.dir)).handle)
        self._api_port = await api.start("127.0.0.1", 0)
        await self.listen()
        log.info("control plane of lab %s: agent channel %s port %d, lab API 127.0.0.1:%d", self.lab,
                 ", ".join(self.channel.hosts), self._channel_port, self._api_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        expiry = asyncio.create_task(self.faults.expire_forever(), name="fault expiry")
        await stop.wait()
        expiry.cancel()
        await api.close()
        await self.channel.close()
        (self.dir / "controlplane.json").unlink(missing_ok=True)


def _server_context(key_pem: bytes, cert_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "key.pem").write_bytes(key_pem)
        (Path(tmp) / "cert.pem").write_bytes(cert_pem)
        ctx.load_cert_chain(Path(tmp) / "cert.pem", Path(tmp) / "key.pem")
    return ctx


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lab.controlplane")
    parser.add_argument("--lab", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(ControlPlane(args.lab).run())
    except LabError as e:
        log.error("%s", e)
        return 1
    return 0
