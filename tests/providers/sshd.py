"""Real OpenSSH servers for the ssh provider's tests: containers of the node image running `sshd`.

`SshHosts` makes a Docker network of its own (a free 10.212.x.0/24), a generated key pair and a
known_hosts file it fills with each host's key as read from the host itself. Hosts can be made
bad on purpose: no python3, a python3 that says it is 3.8, a login that is not root (`mesh`, no sudo);
and they can have a login that is not root but may use sudo without a password (`meshsudo`).
Everything carries the label `meshlab.test=ssh` and is removed by `close()`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import shlex
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import asyncssh

from lab.providers.docker import _taken_subnets, engine

TEST_LABEL = "meshlab.test"

BOOT = """
set -e
ssh-keygen -A >/dev/null
mkdir -p /run/sshd /root/.ssh
printf '%s\\n' "$PUBKEY" > /root/.ssh/authorized_keys
chmod 700 /root/.ssh; chmod 600 /root/.ssh/authorized_keys
{extra}
exec /usr/sbin/sshd -D -e
"""
NO_PYTHON = "rm -f /usr/bin/python3 /usr/bin/python3.*"
OLD_PYTHON = "rm -f /usr/bin/python3; printf '#!/bin/sh\\necho Python 3.8.10\\n' > /usr/bin/python3; chmod 755 /usr/bin/python3"


def _login(user: str) -> str:
    return (f"useradd -m -s /bin/sh {user}; mkdir -p /home/{user}/.ssh; "
            f"cp /root/.ssh/authorized_keys /home/{user}/.ssh/; chown -R {user}:{user} /home/{user}/.ssh; "
            f"chmod 700 /home/{user}/.ssh")


PLAIN_USER = _login("mesh")  # no sudo
SUDO_LOGIN = "meshsudo"
SUDO_USER = (_login(SUDO_LOGIN) + f"; echo '{SUDO_LOGIN} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/{SUDO_LOGIN}; "
             f"chmod 440 /etc/sudoers.d/{SUDO_LOGIN}")


class SshHosts:
    """sshd containers on a network of the test's own, reached with a generated key."""

    def __init__(self, image: str, folder: Path) -> None:
        self.image, self.folder = image, folder
        self.tag = f"sshtest-{uuid.uuid4().hex[:8]}"
        self.client = engine()
        self.key_file = folder / "id_ed25519"
        self.known_hosts = folder / "known_hosts"
        key = asyncssh.generate_private_key("ssh-ed25519")
        key.write_private_key(str(self.key_file))
        self.key_file.chmod(0o600)
        self.public_key = key.export_public_key().decode().strip()
        self.known_hosts.write_text("")
        taken = _taken_subnets(self.client)
        for _ in range(1000):
            net = ipaddress.ip_network(f"10.212.{random.randrange(0, 256)}.0/24")
            if not any(net.overlaps(t) for t in taken):
                break
        self.subnet = net
        self.network = self.client.networks.create(
            self.tag, driver="bridge", labels={TEST_LABEL: "ssh"},
            ipam={"Driver": "default", "Config": [{"Subnet": str(net), "Gateway": str(net.network_address + 1)}]})
        self._next = 10
        self.containers: dict[str, Any] = {}

    def start(self, name: str, *, extra: str = "", trust: bool = True) -> str:
        """A host running sshd; its address. `extra` is shell run before sshd starts (as root)."""
        address = str(self.subnet.network_address + self._next)
        self._next += 1
        container = self.client.containers.create(
            self.image, ["sh", "-c", BOOT.format(extra=extra)], name=f"{self.tag}-{name}", hostname=name,
            environment={"PUBKEY": self.public_key}, labels={TEST_LABEL: "ssh"}, init=True, detach=True,
            cap_add=["NET_ADMIN"])  # iptables: transparent capture, and tests that close ports to the lab host
        self.client.api.disconnect_container_from_network(container.id, "bridge")
        self.client.api.connect_container_to_network(container.id, self.network.id, ipv4_address=address)
        container.start()
        self.containers[name] = container
        _wait_port(address, 22)
        if trust:
            self.trust(address)
        return address

    def close_agent_ports(self, name: str) -> None:
        """Drop TCP to the agents' metrics and ready ports (15020, 15021) but from the host itself: the lab
        host must reach them through its forwards, as with a VM whose firewall lets only SSH in."""
        code, out = self.sh(name, "iptables -w -I INPUT ! -i lo -p tcp -m multiport --dports 15020,15021 -j DROP")
        assert code == 0, out

    def trust(self, address: str) -> None:
        key = asyncio.run(asyncssh.get_server_host_key(address, 22))
        with open(self.known_hosts, "a") as f:
            f.write(f"{address} {key.export_public_key().decode().strip()}\n")

    def settings(self, address: str, **more: Any) -> dict[str, Any]:
        return {"ssh": {"host": address, "user": "root", "identity": str(self.key_file),
                        "known_hosts": str(self.known_hosts), **more}}

    def sh(self, name: str, line: str) -> tuple[int, str]:
        """Run a shell line in a host (as root, outside SSH)."""
        code, out = self.containers[name].exec_run(["sh", "-c", line])
        return code, out.decode(errors="replace")

    def lab_processes(self, name: str, lab: str) -> list[str]:
        """Command lines of the processes on a host whose environment names `lab`."""
        script = ("import os\nfor p in filter(str.isdigit, os.listdir('/proc')):\n"
                  "    try: env = open(f'/proc/{p}/environ','rb').read(); cmd = open(f'/proc/{p}/cmdline','rb').read()\n"
                  "    except OSError: continue\n"
                  f"    if b'MESHLAB_LAB={lab}\\0' in env: print(p, cmd.replace(b'\\0', b' ').decode())\n")
        # Root in a container lacks CAP_SYS_PTRACE: it reads other users' /proc/<pid>/environ only as them
        # (with CAP_NET_ADMIN, as a sudo login's agents hold it, which hides it from readers without).
        line = (f"S={shlex.quote(script)}; python3 -c \"$S\" && ps -eo uid=,gid= | sort -u | "
                "while read u g; do [ $u = 0 ] || setpriv --reuid=$u --regid=$g --clear-groups "
                "--inh-caps=+net_admin --ambient-caps=+net_admin python3 -c \"$S\" || exit 1; done")
        code, out = self.sh(name, line)
        assert code == 0, out
        return sorted(set(out.splitlines()))

    def proc_status(self, name: str, pid: int | str) -> dict[str, str]:
        """The fields of /proc/<pid>/status of a process on a host (Uid, CapAmb, CapEff, ...)."""
        code, out = self.sh(name, f"cat /proc/{int(pid)}/status")
        assert code == 0, out
        return dict(line.split(":", 1) for line in out.splitlines() if ":" in line)

    def capture_leftovers(self, name: str) -> str:
        """The host's MESHLAB nat rules and its route of the service CIDR ('' when none)."""
        code, out = self.sh(name, "iptables -w -t nat -S | grep MESHLAB; ip route show 10.96.0.0/16")
        return out.strip()

    def lab_files(self, name: str, lab: str) -> list[str]:
        """Files and folders on a host whose path names `lab` (under / but /proc and /sys)."""
        code, out = self.sh(name, f"find / -xdev -path /proc -prune -o -path /sys -prune -o -name {shlex.quote(lab)} -print")
        return out.split()

    def close(self) -> None:
        for container in self.containers.values():
            container.remove(force=True)
        self.network.remove()
        self.client.close()


def _wait_port(address: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
