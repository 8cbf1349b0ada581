"""Addresses of the local provider: each lab a /16 inside 127.0.0.0/8, each node a /24 of it.

Linux routes all of 127/8 to `lo`, so a node is just a block of loopback
addresses: nothing to create, nothing to clean up.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import tempfile
from pathlib import Path
from typing import Callable

from lab.errors import LabError

FIRST_BLOCK = 100  # 127.100.0.0/16 is the first lab block; 127.0.x.x stays free for other uses
LAST_BLOCK = 254
FIRST_WORKLOAD_HOST = 10  # .1 is the node itself, .2-.9 are kept for node agents


def allocate_block(used: set[str], in_use: Callable[[str], bool] = lambda block: False) -> str:
    """The first lab block not in `used` (blocks as '127.B.0.0/16') and not `in_use` on this machine."""
    for b in range(FIRST_BLOCK, LAST_BLOCK + 1):
        block = f"127.{b}.0.0/16"
        if block not in used and not in_use(block):
            return block
    raise LabError("no free address block left in 127.0.0.0/8; run `meshlab clean`")


def node_address(block: str, index: int) -> str:
    """The node's own address: `.1` of its /24."""
    return _host(block, index, 1)


def workload_address(block: str, index: int, slot: int) -> str:
    """The address of the `slot`-th workload (0-based) on node `index`."""
    if FIRST_WORKLOAD_HOST + slot >= FIRST_SIDECAR_HOST:
        raise LabError(f"too many workloads on one node (at most {FIRST_SIDECAR_HOST - FIRST_WORKLOAD_HOST})")
    return _host(block, index, FIRST_WORKLOAD_HOST + slot)


def _host(block: str, index: int, host: int) -> str:
    net = ipaddress.ip_network(block)
    if index > 254:
        raise LabError("too many nodes in one lab (at most 255 on the local provider)")
    return str(net.network_address + (index + 1) * 256 + host)


CLAIM_FILE = Path(tempfile.gettempdir()) / "meshlab-address-blocks.lock"


class BlockClaim:
    """Held from picking a free block until the lab serves on it (machine-wide, across MESHLAB_HOMEs).

    A block counts as taken once another lab's state names it or something serves on it; between
    the pick and the first bind, two `meshlab up` at once could pick the same one without this.
    """

    def __init__(self) -> None:
        self._fd: int | None = None

    def acquire(self) -> None:
        """Wait for the claim (blocking: call it off the event loop)."""
        # Read-only is enough for flock, and works on a file another user made.
        fd = os.open(CLAIM_FILE, os.O_RDONLY | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor lets the lock go
            self._fd = None


def block_in_use(block: str, probes: list[tuple[int, int]]) -> bool:
    """Whether something on this machine (a lab of another MESHLAB_HOME) already serves the block.

    `probes` are (host number in the block, port) pairs, e.g. the control plane's and a node's.
    """
    net = ipaddress.ip_network(block)
    for host, port in probes:
        with socket.socket() as s:
            try:
                s.bind((str(net.network_address + host), port))
            except OSError:
                return True
    return False


CAPTURE_OFFSET = 129  # node i's capture range is 127.<b>.<129+i>.0/24
FIRST_INBOUND_CAPTURE = 100


def service_vip(block: str, node_index: int, service_index: int) -> str:
    """The VIP of the `service_index`-th service on node `node_index` (explicit capture, local provider)."""
    if service_index >= FIRST_INBOUND_CAPTURE - 1:
        raise LabError(f"too many services in one lab (at most {FIRST_INBOUND_CAPTURE - 1} on the local provider)")
    return _capture(block, node_index, 1 + service_index)


def inbound_capture(block: str, node_index: int, slot: int) -> str:
    """Where plaintext callers reach the `slot`-th workload of a node through its ztunnel."""
    return _capture(block, node_index, FIRST_INBOUND_CAPTURE + slot)


def _capture(block: str, node_index: int, host: int) -> str:
    if node_index + CAPTURE_OFFSET > 255:
        raise LabError(f"too many nodes for explicit capture (at most {256 - CAPTURE_OFFSET} on the local provider)")
    net = ipaddress.ip_network(block)
    return str(net.network_address + (node_index + CAPTURE_OFFSET) * 256 + host)


# -- docker provider -----------------------------------------------------------------------------------
# A lab with docker nodes gets one private /24 for them (the lab network): `.1` is the gateway, the host
# side of the bridge, where the control plane listens for them; node i (topology index) is `.<2+i>`;
# the workloads of every docker node are `.32`, `.33`, ... in topology order (secondary addresses of
# their node's eth0). The local provider's 127 block is allocated as before and serves local nodes.

DOCKER_RANGE = "10.210.0.0/16"
DOCKER_FIRST_NODE_HOST = 2
DOCKER_FIRST_WORKLOAD_HOST = 32


def docker_candidates() -> list[str]:
    """The /24s a docker lab may get, in order of preference."""
    return [str(net) for net in ipaddress.ip_network(DOCKER_RANGE).subnets(new_prefix=24)][1:]


def docker_gateway(subnet: str) -> str:
    return str(ipaddress.ip_network(subnet).network_address + 1)


def docker_node_address(subnet: str, index: int) -> str:
    """Node `index`'s address on the lab network."""
    if DOCKER_FIRST_NODE_HOST + index >= DOCKER_FIRST_WORKLOAD_HOST:
        raise LabError(f"too many nodes in one lab (at most {DOCKER_FIRST_WORKLOAD_HOST - DOCKER_FIRST_NODE_HOST}"
                       " on the docker provider)")
    return _docker_host(subnet, DOCKER_FIRST_NODE_HOST + index)


def docker_workload_address(subnet: str, slot: int) -> str:
    """The `slot`-th (0-based, lab-wide) workload on a docker node."""
    if DOCKER_FIRST_WORKLOAD_HOST + slot >= DOCKER_FIRST_SIDECAR_HOST:
        raise LabError(f"too many workloads on the docker nodes of one lab (at most "
                       f"{DOCKER_FIRST_SIDECAR_HOST - DOCKER_FIRST_WORKLOAD_HOST})")
    return _docker_host(subnet, DOCKER_FIRST_WORKLOAD_HOST + slot)


# The L7 proxies of docker nodes live on the lab network too (secondary addresses of their node's eth0):
# the sidecar of the k-th docker workload at `.<128+k>` (its admin, metrics and readiness ports), the
# lab's waypoints at `.224`-`.253`. A sidecar's capture ports are its own (every workload of a node shares
# the container's network namespace): the s-th workload of a node gets 15101+10s (outbound, its 15001)
# and 15106+10s (inbound, its 15006).
DOCKER_FIRST_SIDECAR_HOST = 128
DOCKER_FIRST_WAYPOINT_HOST, DOCKER_LAST_WAYPOINT_HOST = 224, 253
SIDECAR_CAPTURE_BASE, SIDECAR_CAPTURE_STEP, SIDECAR_CAPTURE_SLOTS = 15100, 10, 90


def docker_sidecar_address(subnet: str, slot: int) -> str:
    """The address of the sidecar of the `slot`-th (lab-wide) docker workload."""
    return _docker_host(subnet, DOCKER_FIRST_SIDECAR_HOST + slot)


def docker_waypoint_address(subnet: str, slot: int) -> str:
    """The address of the `slot`-th waypoint of the lab's docker nodes."""
    if DOCKER_FIRST_WAYPOINT_HOST + slot > DOCKER_LAST_WAYPOINT_HOST:
        raise LabError(f"too many waypoints on the docker nodes of one lab (at most "
                       f"{DOCKER_LAST_WAYPOINT_HOST - DOCKER_FIRST_WAYPOINT_HOST + 1})")
    return _docker_host(subnet, DOCKER_FIRST_WAYPOINT_HOST + slot)


def sidecar_capture_ports(slot: int) -> tuple[int, int]:
    """(outbound, inbound) ports the sidecar of the `slot`-th workload of a node is sent its traffic on."""
    if slot >= SIDECAR_CAPTURE_SLOTS:
        raise LabError(f"too many sidecar workloads on one node (at most {SIDECAR_CAPTURE_SLOTS} with "
                       "transparent capture)")
    base = SIDECAR_CAPTURE_BASE + SIDECAR_CAPTURE_STEP * slot
    return base + 1, base + 6


def _docker_host(subnet: str, host: int) -> str:
    net = ipaddress.ip_network(subnet)
    if host >= net.num_addresses - 1:
        raise LabError(f"the lab network {subnet} is too small for this topology (host .{host} needed)")
    return str(net.network_address + host)


# Transparent capture (docker nodes) uses cluster VIPs, as a Kubernetes service CIDR does: the k-th service
# (topology order) is `.<16+k>` of 10.96.0.0/16 on every node. They live only in the nodes' iptables rules
# (lab.capture), never on an interface, so labs on one host cannot collide.
SERVICE_CIDR = "10.96.0.0/16"
FIRST_CLUSTER_VIP = 16


def cluster_vip(service_index: int) -> str:
    """The cluster VIP of the `service_index`-th service (transparent capture)."""
    net = ipaddress.ip_network(SERVICE_CIDR)
    if FIRST_CLUSTER_VIP + service_index >= net.num_addresses - 1:
        raise LabError(f"too many services for the service CIDR {SERVICE_CIDR}")
    return str(net.network_address + FIRST_CLUSTER_VIP + service_index)


# -- L7 proxies on the local provider ------------------------------------------------------------------
# A node's /24 also holds its L7 proxies: waypoints at `.2`-`.9` (the hosts kept for node agents) and, in
# sidecar namespaces, each workload's sidecar at `.<130+slot>` (its outbound listener; the workload's
# inbound-capture address and its own address:15008 are the sidecar's inbound side).

FIRST_WAYPOINT_HOST, LAST_WAYPOINT_HOST = 2, 9
FIRST_SIDECAR_HOST = 130


def waypoint_address(block: str, node_index: int, slot: int) -> str:
    """The address of the `slot`-th waypoint placed on node `node_index`."""
    if FIRST_WAYPOINT_HOST + slot > LAST_WAYPOINT_HOST:
        raise LabError(f"too many waypoints on one node (at most {LAST_WAYPOINT_HOST - FIRST_WAYPOINT_HOST + 1})")
    return _host(block, node_index, FIRST_WAYPOINT_HOST + slot)


def sidecar_address(block: str, node_index: int, slot: int) -> str:
    """Where the sidecar of the `slot`-th workload of a node listens for its workload's outbound traffic."""
    if FIRST_SIDECAR_HOST + slot > 254:
        raise LabError(f"too many sidecar workloads on one node (at most {255 - FIRST_SIDECAR_HOST})")
    return _host(block, node_index, FIRST_SIDECAR_HOST + slot)
