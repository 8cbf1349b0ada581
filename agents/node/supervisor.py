"""The node supervisor: owns a node's processes and serves its control socket and mesh resolver.

`python3 agents.pyz node --lab LAB --node NODE --dir NODE_DIR --address ADDR [--resolver-port 15053]`

It keeps running after the lab's own process exits. Everything it knows that
must survive it is on disk in NODE_DIR: `supervisor.pid`, `supervisor.json`
(its processes, rewritten atomically on every change) and `config/<section>.json`
(reloaded on start). Protocol: docs/architecture.md, "Node supervisor control protocol".

When it shuts down (the `shutdown` op, SIGTERM: a stopped container) it records the
specs of the processes it was keeping up in `restore.json`, like a machine whose
services are enabled; after a start, the `restore` op launches them again (by role,
so the lab can bring the ztunnel back before the workloads it captures).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agents.node.control import ControlServer, socket_in_use
from agents.node.procfs import group_usage
from agents.node.processes import ProcessSpec, SupervisedProcess
from agents.node.resolver import Resolver
from agents.node.resolver_server import ResolverServer

RESOLVER_PORT = 15053
_SECTION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def write_json_atomic(path: Path, doc: Any) -> None:
    """Readers see the old or the new file, never a mix: temp file, fsync, rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StartupError(Exception):
    """The supervisor cannot start (socket taken, resolver port taken, ...)."""


class NodeSupervisor:
    """One node: its supervised processes, its config sections and its resolver."""

    def __init__(self, lab: str, node: str, node_dir: Path, address: str,
                 resolver_port: int = RESOLVER_PORT) -> None:
        self.lab, self.node, self.dir, self.address = lab, node, node_dir, address
        self.resolver_port = resolver_port
        self.processes: dict[str, SupervisedProcess] = {}
        self.config: dict[str, Any] = {}
        self.resolver = Resolver()
        self.socket_path = node_dir / "control.sock"
        self.pid_path = node_dir / "supervisor.pid"
        self.state_path = node_dir / "supervisor.json"
        self.restore_path = node_dir / "restore.json"
        self._pending: dict[str, dict[str, Any]] = {}  # recorded at the last shutdown, not restored yet
        self._recorded = False
        self._env = {**os.environ, "MESHLAB_LAB": lab, "MESHLAB_NODE": node}  # MESHLAB_HOME is inherited
        self._locks: dict[str, asyncio.Lock] = {}
        self._dirty = asyncio.Event()
        self._shutdown = asyncio.Event()
        self._control = ControlServer(self.handle)
        self._resolver_server = ResolverServer(lambda: self.resolver)

    # -- lifecycle ---------------------------------------------------------
    async def run(self) -> None:
        """Serve until a `shutdown` request or SIGTERM; then stop every process and clean up."""
        await self._start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._shutdown.set)
        writer = asyncio.create_task(self._write_state_forever())
        _say(f"supervisor of node {self.node} (lab {self.lab}) pid {os.getpid()}: control {self.socket_path}, "
             f"resolver {self.address}:{self.resolver_port}")
        try:
            await self._shutdown.wait()
            _say("shutting down")
            self._record_restore()  # a no-op after the `shutdown` op, which recorded first
            await self._stop_all()
        finally:
            writer.cancel()
            await self._resolver_server.close()
            await self._control.close()
            self._write_state(running=False)
            self.socket_path.unlink(missing_ok=True)
            self.pid_path.unlink(missing_ok=True)

    async def _start(self) -> None:
        for sub in ("logs", "config"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists() or self.socket_path.is_symlink():
            if socket_in_use(self.socket_path):
                raise StartupError(f"another supervisor already serves {self.socket_path}")
            self.socket_path.unlink()
        self.pid_path.write_text(f"{os.getpid()}\n")
        self._load_config()
        self._load_restore()
        try:
            self.resolver_port = await self._resolver_server.start(self.address, self.resolver_port)
        except OSError as e:
            self.pid_path.unlink(missing_ok=True)
            raise StartupError(f"cannot serve the mesh resolver on {self.address}:{self.resolver_port}: {e}")
        # The control socket comes last: a provider takes an answering socket to mean "up".
        await self._control.start(self.socket_path)
        self._write_state(running=True)

    def _load_config(self) -> None:
        for path in sorted((self.dir / "config").glob("*.json")):
            try:
                self._apply_config(path.stem, json.loads(path.read_text()))
            except (OSError, ValueError) as e:
                _say(f"ignoring config {path}: {e}")

    def _apply_config(self, section: str, value: Any) -> None:
        """Take a config section into use; ValueError (and no change) if it is malformed."""
        if section == "resolver":
            try:
                resolver = Resolver(value)
            except (AttributeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(f"bad resolver table: {e!r}") from None
            self.resolver = resolver
        self.config[section] = value

    # -- restore record ----------------------------------------------------------
    def _load_restore(self) -> None:
        try:
            doc = json.loads(self.restore_path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            _say(f"ignoring {self.restore_path}: {e}")
            return
        for entry in doc.get("processes", []) if isinstance(doc, dict) else []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                self._pending[entry["name"]] = entry

    def _record_restore(self) -> None:
        """Write what this node keeps running (and what it had yet to restore) for the next start; once."""
        if self._recorded:
            return
        self._recorded = True
        # Bounded runs (restart=never) and processes that finished for good are not services to bring back.
        kept = {name: spec_json(p.spec) for name, p in self.processes.items()
                if p.active and p.spec.restart != "never"}
        kept.update({name: doc for name, doc in self._pending.items() if name not in self.processes})
        self._pending = kept
        self._save_restore()

    def _save_restore(self) -> None:
        try:
            if self._pending:
                write_json_atomic(self.restore_path, {"node": self.node, "recorded_at": time.time(),
                                                      "processes": list(self._pending.values())})
            else:
                self.restore_path.unlink(missing_ok=True)
        except OSError as e:
            _say(f"cannot write {self.restore_path}: {e}")

    def _drop_pending(self, name: str) -> None:
        """A process started or stopped by request supersedes its record: it must not come back from it."""
        if self._pending.pop(name, None) is not None:
            self._save_restore()

    # -- state file ----------------------------------------------------------
    def _changed(self) -> None:
        self._dirty.set()

    def snapshot(self, running: bool = True) -> dict[str, Any]:
        return {"lab": self.lab, "node": self.node, "address": self.address, "pid": os.getpid(),
                "resolver": f"{self.address}:{self.resolver_port}", "running": running,
                "updated_at": time.time(),
                "processes": [p.status() for _, p in sorted(self.processes.items())]}

    def _write_state(self, running: bool) -> None:
        try:
            write_json_atomic(self.state_path, self.snapshot(running))
        except OSError as e:
            _say(f"cannot write {self.state_path}: {e}")

    async def _write_state_forever(self) -> None:
        # Changes come in bursts (start, running, ready); one write per burst, off the event loop.
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            doc = self.snapshot()
            try:
                await asyncio.to_thread(write_json_atomic, self.state_path, doc)
            except OSError as e:
                _say(f"cannot write {self.state_path}: {e}")

    # -- control operations ------------------------------------------------
    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one control request; every failure becomes {"ok": false, "error": ...}."""
        op = request.get("op")
        method = getattr(self, f"_op_{op}", None) if isinstance(op, str) and op.isidentifier() else None
        if method is None:
            return {"ok": False, "error": f"unknown op {op!r}"}
        try:
            return {"ok": True, **(await method(request))}
        except (KeyError, TypeError, ValueError, OSError) as e:
            detail = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            return {"ok": False, "error": f"{op}: {detail}"}
        except Exception as e:  # a bug must not kill the node; say what happened
            return {"ok": False, "error": f"{op}: internal error: {e!r}"}

    async def _op_ping(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"node": self.node, "lab": self.lab, "pid": os.getpid(), "address": self.address,
                "resolver": f"{self.address}:{self.resolver_port}"}

    async def _op_start(self, request: dict[str, Any]) -> dict[str, Any]:
        spec = ProcessSpec.from_json(request["spec"])
        self._drop_pending(spec.name)
        async with self._lock(spec.name):
            current = self.processes.get(spec.name)
            if current is not None and current.active and current.spec == spec:
                return {"changed": False}
            if current is not None:
                await current.stop()
            self._launch(spec)
            return {"changed": True}

    def _launch(self, spec: ProcessSpec) -> None:
        """Start a supervised process for `spec` (replacing the record of one of that name)."""
        env = {**self._env, **spec.env, "MESHLAB_LAB": self.lab, "MESHLAB_NODE": self.node,
               "MESHLAB_WORKLOAD": spec.name}
        process = SupervisedProcess(spec, env, self.dir, self.dir / "logs" / f"{spec.name}.log", self._changed)
        self.processes[spec.name] = process
        process.start()
        self._changed()

    async def _op_restart(self, request: dict[str, Any]) -> dict[str, Any]:
        """Restart a process with changes to its environment (`env`; an empty value removes a variable).

        This is how a workload gets (or loses) its sidecar: like a pod, it is restarted with a new spec.
        """
        process = self._process(request["name"])
        env = {k: v for k, v in {**process.spec.env, **(request.get("env") or {})}.items() if v != ""}
        spec = dataclasses.replace(process.spec, env=env)
        async with self._lock(spec.name):
            await process.stop()
            self._launch(spec)
        return {}

    async def _op_stop(self, request: dict[str, Any]) -> dict[str, Any]:
        """Stop a process and forget it: `list` no longer shows it (its log stays)."""
        process = self._process(request["name"])
        self._drop_pending(process.spec.name)
        async with self._lock(process.spec.name):
            await process.stop()
            if self.processes.get(process.spec.name) is process:
                del self.processes[process.spec.name]
        self._changed()
        return {}

    async def _op_list(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"processes": [p.status() for _, p in sorted(self.processes.items())]}

    async def _op_signal(self, request: dict[str, Any]) -> dict[str, Any]:
        self._process(request["name"]).signal(int(request["signal"]))
        return {}

    async def _op_usage(self, request: dict[str, Any]) -> dict[str, Any]:
        running = {name: p.pid for name, p in self.processes.items() if p.pid is not None}

        def measure() -> dict[str, Any]:
            found = group_usage(list(running.values()))
            return {name: found[pid].to_json() for name, pid in running.items() if pid in found}

        return {"usage": await asyncio.to_thread(measure)}

    async def _op_config(self, request: dict[str, Any]) -> dict[str, Any]:
        section, value = request["section"], request["value"]
        if not isinstance(section, str) or not _SECTION.match(section):
            raise ValueError(f"bad section name {section!r}")
        self._apply_config(section, value)  # first: a malformed section is refused, not kept
        await asyncio.to_thread(write_json_atomic, self.dir / "config" / f"{section}.json", value)
        return {}

    async def _op_restore(self, request: dict[str, Any]) -> dict[str, Any]:
        """Launch the processes recorded at the last shutdown (only those of `roles`, when given).

        A name that runs already is skipped (someone started it meanwhile); either way its record goes.
        """
        roles = request.get("roles")
        if roles is not None and (not isinstance(roles, list) or not all(isinstance(r, str) for r in roles)):
            raise ValueError("roles must be a list of role names")
        restored, skipped = [], []
        for name, doc in list(self._pending.items()):
            if roles is not None and (doc.get("labels") or {}).get("role", "") not in roles:
                continue
            try:
                spec = ProcessSpec.from_json(doc)
            except ValueError as e:  # a damaged record must not keep the others from coming back
                _say(f"not restoring {name}: {e}")
                del self._pending[name]
                skipped.append(name)
                continue
            async with self._lock(name):
                current = self.processes.get(name)
                if current is not None and current.active:
                    skipped.append(name)
                else:
                    self._launch(spec)
                    restored.append(name)
            del self._pending[name]
        if restored or skipped:
            await asyncio.to_thread(self._save_restore)
        return {"restored": restored, "skipped": skipped, "pending": sorted(self._pending)}

    async def _op_shutdown(self, request: dict[str, Any]) -> dict[str, Any]:
        self._record_restore()
        await self._stop_all()
        # Exit after this answer is on its way: the control server writes it as soon as we return.
        asyncio.get_running_loop().call_soon(self._shutdown.set)
        return {}

    # -- helpers -------------------------------------------------------------
    def _process(self, name: Any) -> SupervisedProcess:
        if name not in self.processes:
            raise ValueError(f"no process named {name!r} on node {self.node}")
        return self.processes[name]

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _stop_all(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.processes.values() if p.state != "stopped"))


def spec_json(spec: ProcessSpec) -> dict[str, Any]:
    """A spec as the control protocol's `start` takes it (what `ProcessSpec.from_json` reads)."""
    return {"name": spec.name, "argv": list(spec.argv), "env": dict(spec.env), "restart": spec.restart,
            "ready_tcp": list(spec.ready_tcp) if spec.ready_tcp else None, "labels": dict(spec.labels)}


def _say(message: str) -> None:
    print(f"[meshlab supervisor {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="agents.pyz node", description="Run a meshlab node supervisor.")
    parser.add_argument("--lab", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--dir", required=True, type=Path, help="the node's folder")
    parser.add_argument("--address", required=True, help="the node's own address (resolver, later ztunnel)")
    parser.add_argument("--resolver-port", type=int, default=RESOLVER_PORT, help="0 picks a free port")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)

    async def run() -> None:
        await NodeSupervisor(args.lab, args.node, args.dir.resolve(), args.address, args.resolver_port).run()

    try:
        asyncio.run(run())
    except StartupError as e:
        _say(f"cannot start: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
