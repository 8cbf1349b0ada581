"""What the ssh provider does on a host over one connection: checks, install, detached start, tags, files.

Everything runs as commands of the login (no agent of ours needed before the install), and the
scripts that find a lab's processes by their tags (MESHLAB_LAB/NODE/HOME in /proc/<pid>/environ,
as `lab.providers.proctags` does locally) run on the host's own python3.

Transparent capture without a root login: the node supervisor is started through `sudo -n setpriv`
as the login, with CAP_NET_ADMIN as an ambient capability, which every process it starts inherits
(the proxies mark their own sockets with SO_MARK, which needs it). Its files stay the login's. The
kernel hides /proc/<pid>/environ of a process holding capabilities its reader lacks, and root may
read another user's only with CAP_SYS_PTRACE (which root in a container lacks), so on such a node the
tag scripts run with the agents' own credentials: through the same `sudo -n setpriv` (`_as_agents`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import ProvisionError
from lab.providers.base import ExecResult
from lab.providers.sshconn import SshTarget, asyncssh

# The agents catch asyncio's timeouts as the builtin TimeoutError, which they are from 3.11 on.
MIN_PYTHON = (3, 11)

# Finds the tagged processes of a lab (and node, if given) of one MESHLAB_HOME, and signals them.
# argv: action (list|stop|cont|kill) lab node home grace; prints [[pid, node, cmdline], ...] as JSON.
TAGS_SCRIPT = r"""
import json, os, signal, sys, time
action, lab, node, home, grace = sys.argv[1:6]
me = os.getpid()
def tags(pid):
    try:
        raw = open(f"/proc/{pid}/environ", "rb").read()
        stat = open(f"/proc/{pid}/stat", "rb").read()
    except OSError:
        return None
    if stat[stat.rfind(b")") + 2:].split()[0] == b"Z":
        return None
    env = dict(e.split(b"=", 1) for e in raw.split(b"\0") if b"=" in e)
    return [env.get(k, b"").decode(errors="replace") for k in (b"MESHLAB_LAB", b"MESHLAB_NODE", b"MESHLAB_HOME")]
def scan():
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (me, os.getppid()):
            continue
        t = tags(int(entry))
        if t and t[0] == lab and t[2] == home and (not node or t[1] == node):
            try:
                cmd = open(f"/proc/{entry}/cmdline", "rb").read().rstrip(b"\0").split(b"\0")
            except OSError:
                continue
            found[int(entry)] = [int(entry), t[1], " ".join(c.decode(errors="replace") for c in cmd)]
    return found
def send(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
found = scan()
if action in ("stop", "kill"):
    for _ in range(10):  # frozen first: a supervisor cannot restart what is being killed
        send(found, signal.SIGSTOP)
        new = {p: v for p, v in scan().items() if p not in found}
        if not new:
            break
        found.update(new)
if action == "cont":
    send(found, signal.SIGCONT)
if action == "kill":
    send(found, signal.SIGTERM)
    send(found, signal.SIGCONT)
    deadline = time.monotonic() + float(grace)
    while time.monotonic() < deadline and any(tags(p) for p in found):
        time.sleep(0.02)
    send([p for p in found if tags(p)], signal.SIGKILL)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and any(tags(p) for p in found):
        time.sleep(0.02)
print(json.dumps(list(found.values())))
"""

# The lab nodes on the host that capture transparently (their processes carry MESHLAB_CAPTURE=transparent):
# the wildcard ports 15001/15006 and the MESHLAB nat chains are the host's, so one such node per host.
# prints [[lab, node, home, pid], ...] as JSON, one entry per node.
HOLDERS_SCRIPT = r"""
import json, os
holders = {}
for entry in os.listdir("/proc"):
    if not entry.isdigit() or int(entry) in (os.getpid(), os.getppid()):
        continue
    try:
        raw = open(f"/proc/{entry}/environ", "rb").read()
    except OSError:
        continue
    env = dict(e.split(b"=", 1) for e in raw.split(b"\0") if b"=" in e)
    if env.get(b"MESHLAB_CAPTURE") == b"transparent":
        key = tuple(env.get(k, b"").decode(errors="replace")
                    for k in (b"MESHLAB_LAB", b"MESHLAB_NODE", b"MESHLAB_HOME"))
        holders[key] = min(holders.get(key, int(entry)), int(entry))
print(json.dumps([[*k, pid] for k, pid in sorted(holders.items())]))
"""
CAPTURE_TAG = "MESHLAB_CAPTURE"  # on a transparent node's supervisor (and so on all it starts)

# The state letter of the pid in a pid file ('' when there is no live process).
STATE_SCRIPT = r"""
import sys
try:
    pid = int(open(sys.argv[1]).read().strip())
    raw = open(f"/proc/{pid}/stat", "rb").read()
    env = open(f"/proc/{pid}/environ", "rb").read()
except (OSError, ValueError):
    print(""); sys.exit(0)
print(raw[raw.rfind(b")") + 2:].split()[0].decode() if f"MESHLAB_NODE={sys.argv[2]}".encode() in env else "")
"""


@dataclass(frozen=True)
class HostFacts:
    """What the provider learned about a host when it installed a node there."""

    python: str  # e.g. "3.11.2"
    home: str  # the login's home folder
    root: bool
    sudo: bool  # passwordless sudo works

    @property
    def capture(self) -> str:
        """The capture this host allows: transparent needs root or passwordless sudo (for iptables)."""
        return "transparent" if self.root or self.sudo else "explicit"

    @property
    def capture_reason(self) -> str:
        return "login is root" if self.root else "passwordless sudo" if self.sudo else "no root, no passwordless sudo"

    def reason_for(self, target: SshTarget) -> str:
        """`capture_reason`, saying how the agents got their privilege when a sudo login captures transparently."""
        if target.capture == "transparent" and not self.root and self.sudo:
            return "passwordless sudo; the agents run as the login with CAP_NET_ADMIN"
        return self.capture_reason


class HostConnectionLost(ProvisionError):
    """The SSH connection broke under a command: a new connection may well succeed."""


async def run(conn: Any, command: str, timeout: float = 60.0) -> ExecResult:
    """A shell command on the host (no env requests: sshd drops them unless AcceptEnv)."""
    try:
        done = await conn.run(command, timeout=timeout, encoding=None)
    except asyncssh.TimeoutError as e:
        return ExecResult(124, _text(e.stdout), _text(e.stderr))
    except (asyncssh.Error, ConnectionError) as e:
        raise HostConnectionLost(f"the SSH connection broke: {getattr(e, 'reason', None) or e}") from None
    code = done.exit_status if done.exit_status is not None and done.exit_status >= 0 else 255  # killed by a signal
    return ExecResult(code, _text(done.stdout), _text(done.stderr))


def _text(raw: Any) -> str:
    if raw is None:
        return ""
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


async def host_facts(conn: Any, target: SshTarget) -> HostFacts:
    """Python version, home, root or sudo; ProvisionError when python3 is missing or too old."""
    py = shlex.quote(target.python)
    probe = await run(conn, f"command -v {py} >/dev/null 2>&1 || exit 127; {py} --version; echo \"home=$HOME\"; "
                            "echo \"uid=$(id -u)\"; sudo -n true >/dev/null 2>&1 && echo sudo=yes; true", 30)
    if probe.exit_code == 127:
        raise ProvisionError(f"node {target.node}: no {target.python} on {target.where}: the node agents need "
                             f"Python {'.'.join(map(str, MIN_PYTHON))} or newer there (install python3, or set "
                             "ssh.python to the interpreter's path)")
    text = probe.stdout + probe.stderr
    found = re.search(r"Python (\d+)\.(\d+)(?:\.(\d+))?", text)
    if probe.exit_code != 0 or not found:
        raise ProvisionError(f"node {target.node}: `{target.python} --version` on {target.where} said "
                             f"{text.strip()[:120]!r} (exit {probe.exit_code}), not a Python version")
    version = tuple(int(x) for x in found.groups() if x is not None)
    if version[:2] < MIN_PYTHON:
        raise ProvisionError(f"node {target.node}: {target.python} on {target.where} is Python "
                             f"{'.'.join(map(str, version))}, too old: the node agents need "
                             f"{'.'.join(map(str, MIN_PYTHON))} or newer (set ssh.python to a newer interpreter)")
    fields = dict(line.split("=", 1) for line in probe.stdout.splitlines() if "=" in line)
    return HostFacts(python=".".join(map(str, version)), home=fields.get("home", "").strip(),
                     root=fields.get("uid", "").strip() == "0", sudo=fields.get("sudo") == "yes")


def check_capture(target: SshTarget, facts: HostFacts) -> None:
    """Refuse `capture: transparent` on a host where the login can neither write iptables rules nor give the
    proxies CAP_NET_ADMIN (for SO_MARK on their own sockets): not root, and no passwordless sudo."""
    if target.capture == "transparent" and facts.capture != "transparent":
        raise ProvisionError(f"node {target.node}: ssh.capture is transparent, but on {target.where} the login can "
                             "neither act as root nor use sudo without a password (`sudo -n true` failed), so it "
                             "cannot set iptables rules nor let the proxies mark their own sockets (CAP_NET_ADMIN); "
                             "log in as root, allow the login passwordless sudo, or set `capture: explicit`")


async def check_capture_free(conn: Any, target: SshTarget, lab: str, node: str, home: str) -> bool:
    """Refuse a second transparent node on a host: the capture's wildcard ports (15001/15006), nat chains and
    service route are the host's. The node itself (made before, adopted again) is no conflict: True when it
    runs there as a transparent node already."""
    holders = await capture_holders(conn, target)
    others = [h for h in holders if h[:3] != [lab, node, home]]
    if others:
        o_lab, o_node, o_home, pid = others[0]
        where = "" if o_home == home else f" of another lab host (MESHLAB_HOME {o_home})"
        raise ProvisionError(f"node {node}: ssh.capture is transparent, but on {target.where} node {o_node} of lab "
                             f"{o_lab}{where} captures transparently already (pid {pid}): a host holds one "
                             "transparent node (its ports 15001/15006 and iptables chains are the host's); "
                             f"put node {node} on another host, set `capture: explicit`, or take lab {o_lab} "
                             f"down first (`meshlab down {o_lab}`)")
    return len(others) < len(holders)


async def capture_holders(conn: Any, target: SshTarget) -> list[list[Any]]:
    """[lab, node, home, pid] of every node capturing transparently on the host.

    Read with the agents' credentials (the login's nodes), and for a login that is not root also as root
    (root's nodes; every user's where root has CAP_SYS_PTRACE, as on a VM)."""
    line = shlex.join([target.python, "-c", HOLDERS_SCRIPT])
    done = await run(conn, f'{_as_agents(target, line)} && {{ [ "$(id -u)" = 0 ] || sudo -n {line}; }}', 30)
    if done.exit_code != 0:
        raise ProvisionError(f"node {target.node}: cannot list the transparent nodes on {target.where}: "
                             f"{(done.stderr or done.stdout).strip()[-300:]}")
    found: dict[tuple[str, ...], list[Any]] = {}
    for text in done.stdout.splitlines():
        for holder in json.loads(text or "[]"):
            found.setdefault(tuple(holder[:3]), holder)
    return list(found.values())


def _as_agents(target: SshTarget, line: str) -> str:
    """A shell line run with the credentials of the node's agents: on a transparent node whose login is not
    root, as the login with CAP_NET_ADMIN (through sudo and setpriv), so that it may read their
    /proc/<pid>/environ (where the tags are) and signal them; as the login itself otherwise."""
    if target.capture != "transparent":
        return line
    return f'if [ "$(id -u)" = 0 ]; then {line}; else sudo -n {SETPRIV} {line}; fi'


async def install_file(conn: Any, src: Path, dest: str, mode: int | None = None) -> None:
    """Copy a file onto the host over SFTP, renamed into place: a reader never sees half a file."""
    parent, _, name = dest.rpartition("/")
    tmp = f"{parent}/.{name}.meshlab-tmp"
    async with conn.start_sftp_client() as sftp:
        await sftp.makedirs(parent, exist_ok=True)
        await sftp.put(str(src), tmp)
        if mode is not None:
            await sftp.chmod(tmp, mode)
        await sftp.posix_rename(tmp, dest)


async def same_file(conn: Any, src: Path, dest: str) -> bool:
    """Whether `dest` on the host already holds `src` (its sha256)."""
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    done = await run(conn, f"sha256sum {shlex.quote(dest)} 2>/dev/null", 30)
    return done.exit_code == 0 and done.stdout.split()[:1] == [digest]


# sudo resets the environment (HOME and USER would be root's): the login's own go after it, through `env`.
LOGIN_ENV = 'HOME="$HOME" USER="$(id -un)" LOGNAME="$(id -un)" PATH="$PATH" LANG="${LANG:-C.UTF-8}"'
# As the login again, keeping CAP_NET_ADMIN as an ambient capability: inherited by every process it starts.
SETPRIV = ('setpriv --reuid="$(id -u)" --regid="$(id -g)" --init-groups --inh-caps=+net_admin '
           '--ambient-caps=+net_admin --')


async def start_detached(conn: Any, folder: str, argv: list[str], env: dict[str, str], log: str,
                         net_admin: bool = False) -> ExecResult:
    """Start a process in its own session, cut off from this SSH session: it outlives the connection.

    `net_admin`: with CAP_NET_ADMIN, through `sudo -n` and setpriv, as the login still (its files stay its own);
    setsid runs under sudo, so no root sudo process stays behind as the parent."""
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    if net_admin:
        start = f"sudo -n env {LOGIN_ENV} {assignments} setsid -f {SETPRIV} {shlex.join(argv)}"
    else:
        start = f"{assignments} setsid -f {shlex.join(argv)}"
    line = f"cd {shlex.quote(folder)} && {start} </dev/null >/dev/null 2>>{shlex.quote(log)}"
    done = await run(conn, line, 30)
    if done.exit_code != 0 and not done.stderr.strip():  # sudo's or setsid's own words went to the log
        tail = await run(conn, f"tail -n 3 {shlex.quote(log)}", 10)
        return ExecResult(done.exit_code, done.stdout, tail.stdout)
    return done


async def tagged(conn: Any, target: SshTarget, action: str, lab: str, node: str, home: str,
                 grace: float = 2.0) -> list[list[Any]]:
    """Run TAGS_SCRIPT: the [pid, node, cmdline] of the lab's processes on the host, after `action`."""
    argv = [target.python, "-c", TAGS_SCRIPT, action, lab, node, home, str(grace)]
    done = await run(conn, _as_agents(target, shlex.join(argv)), 60)
    if done.exit_code == 127:
        return []  # no python there: nothing of ours can run there either
    if done.exit_code != 0:
        raise ProvisionError(f"node {target.node}: cannot list the lab's processes on {target.where}: "
                             f"{done.stderr.strip()[-300:]}")
    found: list[list[Any]] = json.loads(done.stdout or "[]")
    return found


async def supervisor_state(conn: Any, target: SshTarget, folder: str, node: str) -> str:
    """The /proc state letter of the node's supervisor ('T' paused), '' when none runs."""
    argv = [target.python, "-c", STATE_SCRIPT, f"{folder}/supervisor.pid", node]
    done = await run(conn, _as_agents(target, shlex.join(argv)), 30)
    return done.stdout.strip() if done.exit_code == 0 else ""


async def remove_tree(conn: Any, folder: str, stop_at: str) -> None:
    """Remove `folder`, then its parents up to `stop_at` (exclusive) that are left empty."""
    parents = []
    current = folder.rsplit("/", 1)[0]
    while current.startswith(stop_at + "/") or current == stop_at:
        parents.append(current)
        if current == stop_at:
            break
        current = current.rsplit("/", 1)[0]
    line = f"rm -rf {shlex.quote(folder)}"
    for p in parents:
        line += f"; rmdir {shlex.quote(p)} 2>/dev/null"
    await run(conn, line + "; true", 30)

