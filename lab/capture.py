"""Transparent capture: the iptables rules that send a node's mesh traffic to its proxies.

Theory of operation. On a node with transparent capture (a docker node) workloads connect to plain
addresses: a service's cluster VIP (10.96.0.0/16, `lab.addressing.SERVICE_CIDR`) or a workload's own
address. Rules in the node's nat table, in two chains of our own hooked first from OUTPUT and PREROUTING,
decide where that goes (modelled on Istio's):

* outbound: TCP from an ambient workload's address to the service CIDR → REDIRECT to 15001, the
  ztunnel's outbound capture; it reads the VIP with SO_ORIGINAL_DST and names the source workload by
  the peer address (all workloads of a node share its network namespace, so the source address is what
  tells one pod from another);
* inbound plaintext: TCP to an ambient workload's port → REDIRECT to 15006, from other nodes
  (PREROUTING) and from this one (OUTPUT). Always, whatever the PeerAuthentication: the ztunnel refuses
  what STRICT forbids, so a policy change needs no rule change;
* never the proxies' own traffic: their sockets carry the mark 0x539 (skipped first), HBONE (15008) is
  skipped, and the node's control traffic matches no rule (it is neither from a workload address nor
  to a workload port).

`rules(spec)` is pure (spec → iptables-restore text) and `script(spec)` the shell that applies it
atomically per table and hooks the chains once; an empty spec unhooks and deletes the chains, so
`mode none` leaves nothing. `install` runs that script on a node through its provider.

* sidecar namespaces (as Istio's injected init container does it, per pod): TCP from a sidecar workload's
  address to anything but itself → REDIRECT to *its* sidecar's outbound port, TCP to its ports → its
  sidecar's inbound port. Every workload of a node shares the container's network namespace, so each
  sidecar has ports of its own (`lab.addressing.sidecar_capture_ports`: 15101/15106, 15111/15116, ...)
  and binds them on the wildcard address (REDIRECT sends to 127.0.0.1 from OUTPUT, to eth0's primary
  address from PREROUTING). Its own upstream sockets carry the mark, like the ztunnel's.

Every outbound rule comes before every inbound rule: a sidecar workload calling another workload of its
node by address must reach its own sidecar first, not the other one's inbound side.

An L7 proxy of a docker node (a waypoint, a sidecar) has an address of the lab network of its own, a /32
on the node's eth0 like the workloads' (`set_proxy_address` adds or removes one live).

An ssh node captures transparently when its settings say `capture: transparent` (the login is root or
has passwordless sudo; the provider checked). Its workloads keep their loopback addresses, so the rules
add a route of the service CIDR through `lo` (`loopback_workloads`): the kernel refuses a 127/8 source
on any other interface. Not root: the rules go through `sudo -n` (the provider's `as_root`), and the
agents hold CAP_NET_ADMIN for the mark (`lab.providers.sshhost`). The chains keep their plain names on ssh
hosts too: the ztunnel's wildcard ports 15001/15006 are the host's anyway, so the provider allows one
transparent node per host.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from lab.addressing import SERVICE_CIDR
from lab.errors import ProvisionError

PROXY_MARK = 0x539  # SO_MARK on the proxies' own upstream sockets (Istio's value)
OUTBOUND_PORT, INBOUND_PORT, HBONE_PORT = 15001, 15006, 15008
OUTPUT_CHAIN, PREROUTING_CHAIN = "MESHLAB_OUTPUT", "MESHLAB_PREROUTING"
HOOKS = (("OUTPUT", OUTPUT_CHAIN), ("PREROUTING", PREROUTING_CHAIN))
TRANSPARENT_PROVIDERS = ("docker",)


def capture_of(provider: str, settings: dict[str, Any] | None = None) -> str:
    """How a node of `provider` captures traffic: `transparent` (iptables) or `explicit` (the resolver).

    Docker nodes always capture transparently; an ssh node when its `ssh.capture` asks for it."""
    if provider == "ssh":
        wanted = ((settings or {}).get("ssh") or {}).get("capture")
        return "transparent" if wanted == "transparent" else "explicit"
    return "transparent" if provider in TRANSPARENT_PROVIDERS else "explicit"


@dataclass(frozen=True)
class CapturedWorkload:
    """An ambient workload of the node: its outbound goes to the ztunnel, and so do plaintext callers of it."""

    name: str
    address: str
    ports: tuple[int, ...]


@dataclass(frozen=True)
class SidecarCapture:
    """A workload in a sidecar namespace: its traffic goes to its own sidecar's ports."""

    name: str
    address: str
    ports: tuple[int, ...]
    outbound_port: int
    inbound_port: int


@dataclass(frozen=True)
class CaptureSpec:
    """What one node's rules must capture."""

    node: str
    ambient: tuple[CapturedWorkload, ...] = ()
    sidecars: tuple[SidecarCapture, ...] = ()
    service_cidr: str = SERVICE_CIDR
    loopback_workloads: bool = False  # workloads on 127/8 (an ssh node): the service CIDR is routed through lo

    @property
    def empty(self) -> bool:
        return not self.ambient and not self.sidecars


def capture_spec(state: dict[str, Any], node: str) -> CaptureSpec:
    """The capture of `node` for the lab's current state (its workloads in ambient and sidecar namespaces)."""
    modes = {ns: v.get("mode", "none") for ns, v in state["namespaces"].items()}
    mine = [(name, w) for name, w in state["workloads"].items() if w["node"] == node]
    ambient = tuple(CapturedWorkload(name, w["address"], _ports(w)) for name, w in mine
                    if modes.get(w["namespace"]) == "ambient")
    sidecars = []
    for name, w in mine:
        if modes.get(w["namespace"]) != "sidecar":
            continue
        ports = w.get("sidecarPorts")
        if not ports:
            raise ProvisionError(f"workload {name}: no sidecar capture ports in the lab state "
                                 f"(written by an older meshlab?): `meshlab up` the lab again")
        sidecars.append(SidecarCapture(name, w["address"], _ports(w), int(ports["outbound"]), int(ports["inbound"])))
    loopback = state["nodes"][node].get("provider") == "ssh"
    return CaptureSpec(node, ambient, tuple(sidecars), loopback_workloads=loopback)


def _ports(w: dict[str, Any]) -> tuple[int, ...]:
    return tuple(int(p) for p in w.get("ports") or ())


def node_capture(state: dict[str, Any], node: str) -> str:
    """The capture of a node of the lab: as `state.json` records it, else its provider's."""
    entry = state["nodes"][node]
    return str(entry.get("capture") or capture_of(str(entry.get("provider"))))


def transparent_nodes(state: dict[str, Any]) -> list[str]:
    """The lab's nodes whose capture is transparent."""
    return [n for n in state["nodes"] if node_capture(state, n) == "transparent"]


def _comment(text: str) -> list[str]:
    return ["-m", "comment", "--comment", f"meshlab: {text}"]


def _rule(chain: str, *words: str) -> str:
    # iptables-restore understands double quotes only (comments are the one argument with spaces)
    return " ".join(f'"{w}"' if " " in w else w for w in ("-A", chain, *words))


Rules = tuple[list[str], list[str]]  # (outbound rules, inbound rules)


def _inbound(address: str, ports: tuple[int, ...], comment: str, to_port: int) -> list[str]:
    """TCP to `address`:each port, from this node (OUTPUT) and from others (PREROUTING) → `to_port`."""
    return [_rule(chain, "-d", f"{address}/32", "-p", "tcp", "--dport", str(port), *_comment(comment),
                  "-j", "REDIRECT", "--to-ports", str(to_port))
            for port in ports for chain in (OUTPUT_CHAIN, PREROUTING_CHAIN)]


def ambient_rules(w: CapturedWorkload, service_cidr: str) -> Rules:
    """Outbound to services → the ztunnel's 15001; plaintext to the workload's ports → its 15006."""
    out = [_rule(OUTPUT_CHAIN, "-s", f"{w.address}/32", "-d", service_cidr, "-p", "tcp",
                 *_comment(f"outbound of {w.name}"), "-j", "REDIRECT", "--to-ports", str(OUTBOUND_PORT))]
    return out, _inbound(w.address, w.ports, f"inbound of {w.name}", INBOUND_PORT)


def sidecar_rules(s: SidecarCapture) -> Rules:
    """A sidecar workload: every outbound TCP (but to itself) → its sidecar, inbound to its ports → the sidecar.

    The sidecar's own upstream sockets carry PROXY_MARK, skipped before these rules, like the ztunnel's.
    """
    out = [_rule(OUTPUT_CHAIN, "-s", f"{s.address}/32", "!", "-d", f"{s.address}/32", "-p", "tcp",
                 *_comment(f"outbound of {s.name} to its sidecar"), "-j", "REDIRECT", "--to-ports",
                 str(s.outbound_port))]
    return out, _inbound(s.address, s.ports, f"inbound of {s.name} to its sidecar", s.inbound_port)


def rules(spec: CaptureSpec) -> str:
    """The iptables-restore text (nat table) of a node's capture; declaring the chains flushes them."""
    lines = ["*nat", f":{OUTPUT_CHAIN} - [0:0]", f":{PREROUTING_CHAIN} - [0:0]"]
    if not spec.empty:
        mark = f"{PROXY_MARK:#x}/0xfff"
        lines += [_rule(OUTPUT_CHAIN, "-m", "mark", "--mark", mark, *_comment("proxy traffic"),
                        "-j", "RETURN"),
                  _rule(OUTPUT_CHAIN, "-p", "tcp", "--dport", str(HBONE_PORT), *_comment("HBONE"), "-j", "RETURN"),
                  _rule(PREROUTING_CHAIN, "-p", "tcp", "--dport", str(HBONE_PORT), *_comment("HBONE"),
                        "-j", "RETURN")]
        # Every outbound rule before every inbound one (a caller's own proxy first); sidecars before ambient.
        parts = [sidecar_rules(s) for s in spec.sidecars] + [ambient_rules(w, spec.service_cidr)
                                                              for w in spec.ambient]
        lines += [rule for out, _ in parts for rule in out] + [rule for _, inbound in parts for rule in inbound]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def script(spec: CaptureSpec) -> str:
    """The shell that makes a node's nat table hold exactly `spec`'s capture (idempotent)."""
    if spec.empty:
        steps = []
        for hook, chain in HOOKS:
            steps += [f"while iptables -w -t nat -D {hook} -j {chain} 2>/dev/null; do :; done",
                      f"iptables -w -t nat -F {chain} 2>/dev/null", f"iptables -w -t nat -X {chain} 2>/dev/null"]
        if spec.loopback_workloads:
            steps.append(f"ip route del {spec.service_cidr} dev lo 2>/dev/null")
        return "\n".join(steps) + "\ntrue\n"
    steps = ["set -e", "iptables-restore -w --noflush <<'MESHLAB_RULES'", rules(spec) + "MESHLAB_RULES"]
    for hook, chain in HOOKS:  # hooked once, first: before Docker's own nat rules
        steps.append(f"iptables -w -t nat -C {hook} -j {chain} 2>/dev/null || iptables -w -t nat -I {hook} 1 -j {chain}")
    if spec.loopback_workloads:  # a 127/8 source may leave only through lo: VIPs go there, then REDIRECT
        steps.append(f"ip route replace {spec.service_cidr} dev lo")
    return "\n".join(steps) + "\n"


async def install(provider: Any, node: str, spec: CaptureSpec) -> None:
    """Apply `spec` in `node` through its provider; ProvisionError with iptables' own words on failure."""
    argv = ["sh", "-c", script(spec)]
    as_root = getattr(provider, "as_root", None)  # an ssh node whose login is not root: through sudo
    done = await provider.exec(node, as_root(node, argv) if as_root else argv, timeout=20)
    if done.exit_code != 0:
        raise ProvisionError(f"node {node}: cannot write its capture rules: {(done.stderr or done.stdout).strip()}")


async def set_proxy_address(provider: Any, node: str, address: str, present: bool = True) -> None:
    """Add (or remove) an L7 proxy's address on a docker node's eth0, a /32 like the workloads'; idempotent."""
    has = f"ip -4 -o addr show dev eth0 | grep -q ' {address}/'"
    step = (f"{has} || ip addr add {address}/32 dev eth0" if present
            else f"! {has} || ip addr del {address}/32 dev eth0")
    done = await provider.exec(node, ["sh", "-c", step], timeout=20)
    if done.exit_code != 0:
        what = "add" if present else "remove"
        raise ProvisionError(f"node {node}: cannot {what} the proxy address {address}: "
                             f"{(done.stderr or done.stdout).strip()}")


async def install_all(lab: Any, state: dict[str, Any]) -> None:
    """Rewrite the capture rules of every transparent node of the lab (`lab`: a `lab.handle.Lab`)."""
    await asyncio.gather(*(install(lab.provider_of(node, state), node, capture_spec(state, node))
                           for node in transparent_nodes(state)))
