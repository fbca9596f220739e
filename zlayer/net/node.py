"""Networking on one node: a bridge, a veth per container, addresses from the node subnet, NAT and port mappings.

Layout (per daemon, names derived from the data dir so several daemons coexist):

- bridge ``zl<8 hex>`` holding the gateway address (first host of the subnet, e.g. ``10.240.0.1/24``);
- per container a veth pair: ``zv<10 hex>`` on the bridge, the peer moved into the container's network namespace
  as ``eth0`` with the next free address and a default route via the gateway (``lo`` up too);
- nftables table ``ip zlayer_<8 hex>``: masquerade for traffic leaving the subnet (egress), and DNAT for each
  ``port_mappings`` entry (``host_ip:host_port`` → ``container_ip:container_port``), also for connections made from
  the node itself; nothing routed into the bridge from elsewhere (another daemon's containers) passes but published
  ports and replies; the daemon holds a socket on each fixed host port it maps, so no other program or daemon
  takes it unnoticed;
- nftables table ``bridge zlayer_<8 hex>``: containers on the bridge reach only those of their own deployment;
- addresses are persisted in ``{data}/agent_ipam.json`` (write-temp + fsync + rename) so a restarted daemon keeps
  the addresses of the containers it re-adopts.

Everything can be placed in a named network namespace (``node_netns``) instead of the host's: tests use that to
build a whole node inside a namespace they own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zlayer.errors import ZLayerError
from zlayer.net.ports import PortClaim, hold
from zlayer.paths import write_atomic

log = logging.getLogger("zlayer.net")

if TYPE_CHECKING:
    from zlayer.spec.models import PortMapping as SpecPortMapping


class NetworkError(ZLayerError):
    """Setting up the node network or a container's interface failed."""

    code = "network"


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = "0.0.0.0"


def _hash(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


class Ipam:
    """Addresses of one subnet: the gateway takes the first host address, containers the next free ones."""

    def __init__(self, path: Path, subnet: ipaddress.IPv4Network) -> None:
        self.path = path
        self.subnet = subnet
        self.gateway = next(subnet.hosts())
        self.leases: dict[str, str] = {}
        with contextlib.suppress(FileNotFoundError, ValueError):
            data = json.loads(path.read_text())
            if data.get("subnet") == str(subnet):
                self.leases = dict(data.get("leases", {}))

    def _save(self, leases: dict[str, str] | None = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(
            self.path, json.dumps({"subnet": str(self.subnet), "leases": self.leases if leases is None else leases})
        )

    def allocate(self, container: str, *, save: bool = True) -> ipaddress.IPv4Address:
        """The container's address (its existing lease, else the first free one); ``save=False`` leaves writing
        the leases to the caller."""
        if container in self.leases:
            return ipaddress.IPv4Address(self.leases[container])
        used = {ipaddress.IPv4Address(v) for v in self.leases.values()} | {self.gateway}
        for host in self.subnet.hosts():
            if host not in used:
                self.leases[container] = str(host)
                if save:
                    self._save()
                return host
        raise NetworkError(f"node subnet {self.subnet} has no free address left", where=container)

    def release(self, container: str, *, save: bool = True) -> None:
        if self.leases.pop(container, None) is not None and save:
            self._save()

    def owner(self, ip: str) -> str | None:
        for k, v in self.leases.items():
            if v == ip:
                return k
        return None


SUBNET_POOL = "10.240.0.0/16"


def _routed_networks() -> list[ipaddress.IPv4Network]:
    """Networks this network namespace already routes (from /proc/net/route)."""
    nets: list[ipaddress.IPv4Network] = []
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return nets
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[1] == "00000000":
            continue
        dest = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
        mask = bin(int(fields[7], 16)).count("1")
        nets.append(ipaddress.IPv4Network(f"{dest}/{mask}", strict=False))
    return nets


SUBNET_LOCKS = Path("/run/zlayer/subnets")
_reserved: dict[tuple[str, str], int] = {}  # (subnet, data dir) -> the open lock file held for this process's life


def _reserve(net: str, lock_dir: Path, owner: str) -> bool:
    """Take the host-wide lock of ``net`` for the node at data dir ``owner``; False when another node holds it (a
    flock is per open file, so this holds between nodes of one process too). Without a writable lock dir, nothing
    can be reserved and every subnet counts as free."""
    if (net, owner) in _reserved:
        return True
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_dir / f"{net.replace('/', '-')}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _reserved[(net, owner)] = fd
    return True


def choose_subnet(data_dir: Path, pool: str = SUBNET_POOL, lock_dir: Path = SUBNET_LOCKS) -> str:
    """The node's container subnet: the one it used before, else a /24 of ``pool`` no other network here uses.

    Several daemons on one host (tests, side-by-side nodes) each get their own /24, picked from a hash of the
    data dir so that a daemon keeps the same one across restarts. A daemon holds a lock on its /24 while it runs
    (under ``lock_dir``), so two starting at once never take the same one before either has made its bridge.
    """
    try:
        saved = json.loads((data_dir / "agent_ipam.json").read_text()).get("subnet")
        if saved:
            _reserve(str(saved), lock_dir, str(data_dir.absolute()))
            return str(saved)
    except (OSError, ValueError):
        pass
    candidates = list(ipaddress.IPv4Network(pool).subnets(new_prefix=24))
    start = int(_hash(str(data_dir.absolute()), 8), 16) % len(candidates)
    taken = _routed_networks()
    for i in range(len(candidates)):
        net = candidates[(start + i) % len(candidates)]
        if not any(net.overlaps(t) for t in taken) and _reserve(str(net), lock_dir, str(data_dir.absolute())):
            return str(net)
    raise NetworkError(f"every /24 of {pool} is already in use on this host", hint="set a node subnet explicitly")


_CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def _in_netns(path: str) -> Iterator[Any]:
    """An IPRoute bound to the network namespace at ``path``: this thread enters it just long enough to open the
    netlink socket (a socket stays in the namespace it was made in), then returns. pyroute2's NetNS forks a helper
    for the same job and costs ten times more, on every container start."""
    import ctypes

    from pyroute2 import IPRoute

    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(target, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise NetworkError(f"cannot enter network namespace {path}: {os.strerror(err)}")
            try:
                ipr = IPRoute()
            finally:
                if libc.setns(home, _CLONE_NEWNET) != 0:  # never leave a pool thread in a container's namespace
                    os._exit(70)
        finally:
            os.close(target)
    finally:
        os.close(home)
    try:
        yield ipr
    finally:
        ipr.close()


class NodeNetwork:
    """The node's container network; implements the agent's NetworkHook (attach/detach)."""

    def __init__(
        self,
        data_dir: Path,
        subnet: str = "10.240.0.0/24",
        *,
        node_netns: str | None = None,
        nat: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.subnet = ipaddress.IPv4Network(subnet)
        self.node_netns = node_netns
        self.nat = nat
        tag = _hash(str(self.data_dir.absolute()), 8)
        self.bridge = f"zl{tag}"
        self.table = f"zlayer_{tag}"
        self._tag = tag
        self.ipam = Ipam(self.data_dir / "agent_ipam.json", self.subnet)
        self.gateway = str(self.ipam.gateway)
        self.ports: dict[str, list[tuple[str, PortMapping]]] = {}
        self.members: dict[str, tuple[str, str]] = {}  # container -> (deployment, service)
        self._state = self.data_dir / "agent_net.json"  # members and port mappings, kept across daemon restarts
        self._load_state()
        self._lock = asyncio.Lock()
        self._persist_lock = asyncio.Lock()
        self._changes = self._persisted = 0
        self._rules_lock = asyncio.Lock()
        self._rule_changes = self._rules_written = 0
        self._held: dict[PortClaim, socket.socket] = {}  # the fixed host ports mapped, held open (see _hold)
        self._ready = False
        # the cluster overlay's interface and this node's slice: packets from it to the slice enter the bridge
        self.overlay_in: tuple[str, str] | None = None
        self.overlay_refused: set[str] = set()  # overlay addresses of replicas about to stop (see refuse_overlay)

    def _load_state(self) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError, TypeError, KeyError):
            data = json.loads(self._state.read_text())
            leased = self.ipam.leases
            self.members = {c: (d, s) for c, (d, s) in data["members"].items() if c in leased}
            self.ports = {
                c: [(ip, PortMapping(*m)) for ip, m in maps] for c, maps in data["ports"].items() if c in leased
            }

    def _save_state(self, data: dict[str, Any] | None = None) -> None:
        data = data or self._state_doc()
        self._state.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self._state, json.dumps(data))

    def _state_doc(self) -> dict[str, Any]:
        return {
            "members": {c: list(v) for c, v in self.members.items()},
            "ports": {
                c: [(ip, [m.host_port, m.container_port, m.protocol, m.host_ip]) for ip, m in v]
                for c, v in self.ports.items()
            },
        }

    async def _persist(self) -> None:
        """Write the leases and the membership (temp + fsync + rename, off the event loop), once for all changes
        made meanwhile: twenty containers attached at once cost a few writes, not forty fsyncs on the loop.
        Returns once a write that includes every change made before the call is on disk."""
        self._changes += 1
        want = self._changes
        async with self._persist_lock:
            if self._persisted >= want:
                return
            upto = self._changes
            leases, doc = dict(self.ipam.leases), self._state_doc()

            def write() -> None:
                self.ipam._save(leases)
                self._save_state(doc)

            await asyncio.to_thread(write)
            self._persisted = upto

    # ------------------------------------------------------------------------------------------- plumbing

    def _ipr(self) -> Any:
        from pyroute2 import IPRoute, NetNS

        return NetNS(self.node_netns) if self.node_netns else IPRoute()

    def _run(self, argv: list[str], stdin: str | None = None) -> None:
        if self.node_netns:
            argv = ["ip", "netns", "exec", self.node_netns, *argv]
        r = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise NetworkError(f"{' '.join(argv[:6])} failed: {r.stderr.strip()[:300]}")

    def _sysctl(self, key: str, value: str) -> None:
        self._run(["sysctl", "-qw", f"{key}={value}"])

    def veth_name(self, container: str) -> str:
        return f"zv{_hash(self._tag + container, 10)}"

    # ------------------------------------------------------------------------------------------- setup

    async def setup(self) -> None:
        async with self._lock:
            if not self._ready:
                await asyncio.to_thread(self._setup)
                await self._sync_rules()  # a restarted daemon puts back the rules of the replicas it re-adopts
                try:
                    self._hold()
                except ZLayerError as e:  # taken while no daemon held it: the mapping stays, the port is not ours
                    log.warning("port mappings of re-adopted replicas: %s", e)
                self._ready = True

    def _setup(self) -> None:
        with self._ipr() as ipr:
            if not ipr.link_lookup(ifname=self.bridge):
                ipr.link("add", ifname=self.bridge, kind="bridge")
            idx = ipr.link_lookup(ifname=self.bridge)[0]
            have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=2)}
            if self.gateway not in have:
                ipr.addr("add", index=idx, address=self.gateway, prefixlen=self.subnet.prefixlen)
            ipr.link("set", index=idx, state="up")
        self._sysctl("net.ipv4.ip_forward", "1")

    def _ruleset(self) -> str:
        """The node's two nftables tables (both named ``zlayer_<tag>``, the tag of its bridge), replaced in one
        transaction: nothing else on the host is touched, and teardown removes exactly these.

        ``ip``: NAT (masquerade out, DNAT of port mappings to addresses of this host) and the bridge's guard: a
        packet routed into the bridge from anywhere else (another daemon's bridge, another interface) passes only
        through a published port (DNAT to that mapping's address and port) or as the reply of a connection a
        container opened.

        ``bridge``: deployments apart on the shared bridge. Frames from or to a port of this node pass only between
        two ports of the same deployment (one set of veth names per deployment; a port joins the bridge only once
        it is in its set, see :meth:`attach`). Frames the node routes back into the bridge may carry a container's
        source address only as a published port, which is masqueraded to the gateway: anything else is one
        container reaching another through the gateway, around the bridge rule. Where ``br_netfilter`` hands
        bridged frames to the ``ip`` hooks, a published port reached from a container of the same node is DNATed
        at the bridge and then bridged, not routed: such a frame was sent to the gateway's MAC (``pkttype host``),
        which no container-to-container frame is. (Neither ``meta ibrname`` nor ``ct`` is available to ``bridge``
        tables on every kernel, so the node's ports are told from other bridges' by the set of them.)"""
        br = f'"{self.bridge}"'
        dnat, published = [], []
        for ip, pm in (p for v in self.ports.values() for p in v):
            # Only what is sent to an address of this host (from outside, from the node, from a container): a
            # container's packet to another container's address passes through the nat hooks too (bridged).
            match = f"ip daddr {pm.host_ip} " if pm.host_ip not in ("", "0.0.0.0") else ""
            dnat.append(
                f"fib daddr type local {match}{pm.protocol} dport {pm.host_port} dnat to {ip}:{pm.container_port}"
            )
            published.append(f"ct status dnat ip daddr {ip} {pm.protocol} dport {pm.container_port} accept")
        if self.overlay_in is not None:  # replicas on other nodes reach this node's by overlay address
            if self.overlay_refused:
                ov, stopping = f'iifname "{self.overlay_in[0]}"', ", ".join(sorted(self.overlay_refused))
                published.append(f"{ov} ip daddr {{ {stopping} }} meta l4proto tcp reject with tcp reset")
                published.append(f"{ov} ip daddr {{ {stopping} }} reject")
            published.append(f'iifname "{self.overlay_in[0]}" ip daddr {self.overlay_in[1]} accept')
        post = []
        if self.nat:
            post.append(f"ip saddr {self.subnet} oifname != {br} masquerade")
        if dnat:  # hairpin: a container reaching a mapped port of its own node comes back through the bridge
            post.append(f"ip saddr {self.subnet} ip daddr {self.subnet} oifname {br} ct status dnat masquerade")
        groups: dict[str, list[str]] = {}
        for c, (deployment, _) in sorted(self.members.items()):
            if c in self.ipam.leases:
                groups.setdefault(deployment, []).append(f'"{self.veth_name(c)}"')
        sets = [_ifname_set("ports", "every container port of this node", [p for g in groups.values() for p in g])]
        same = []
        for i, (deployment, ports) in enumerate(sorted(groups.items())):
            sets.append(_ifname_set(f"deployment{i}", deployment, ports))
            same.append(f"iifname @deployment{i} oifname @deployment{i} accept")
        lines = [
            f"table ip {self.table} {{}}",
            f"delete table ip {self.table}",
            f"table bridge {self.table} {{}}",
            f"delete table bridge {self.table}",
            f"table ip {self.table} {{",
            _chain("prerouting", "type nat hook prerouting priority dstnat", dnat),
            _chain("output", "type nat hook output priority -100", dnat),
            _chain("postrouting", "type nat hook postrouting priority srcnat", post),
            _chain("forward", "type filter hook forward priority filter",
                   [f"oifname {br} iifname != {br} jump into_bridge"]),
            _chain("into_bridge", None, ["ct state established,related accept", *published, "drop"]),
            "}",
            f"table bridge {self.table} {{",
            *sets,
            _chain("forward", "type filter hook forward priority filter",
                   ["iifname != @ports oifname != @ports accept", "meta pkttype host accept", *same, "drop"]),
            _chain("output", "type filter hook output priority filter",
                   [f"oifname @ports ip saddr {self.subnet} ip saddr != {self.gateway} drop"]),
            "}",
        ]  # fmt: skip
        return "\n".join(lines) + "\n"

    def _write_rules(self, ruleset: str) -> None:
        self._run(["nft", "-f", "-"], stdin=ruleset)

    async def _sync_rules(self) -> None:
        """Put the rules of the current members and port mappings in the kernel, once for all changes made
        meanwhile (twenty replicas attached at once cost a few ``nft`` runs, not twenty). Returns once rules that
        include every change made before the call are in place."""
        self._rule_changes += 1
        want = self._rule_changes
        async with self._rules_lock:
            if self._rules_written >= want:
                return
            upto, text = self._rule_changes, self._ruleset()
            await asyncio.to_thread(self._write_rules, text)
            self._rules_written = upto

    # ------------------------------------------------------------------------------------------- containers

    async def attach(self, deployment: str, service: str, container: str, pid: int) -> str:
        """Give the container whose init is ``pid`` an ``eth0`` on the node bridge; returns its address.

        Only the address lease is taken under the lock: the netlink work of several containers runs side by side
        (a deploy of 20 replicas plumbs them at once instead of one after another)."""
        await self.setup()
        async with self._lock:
            ip = self.ipam.allocate(container, save=False)
            self.members[container] = (deployment, service)
        try:
            # Its port is in its deployment's set before it joins the bridge, so it never reaches another's.
            await self._sync_rules()
            await asyncio.to_thread(self._attach, container, pid, str(ip))
        except BaseException as e:
            async with self._lock:
                self.ipam.release(container, save=False)
                self.members.pop(container, None)
            with contextlib.suppress(Exception):  # a veth made before the failure must not stay on the bridge
                await asyncio.to_thread(self._detach, container)
            with contextlib.suppress(Exception):
                await self._sync_rules()
            if isinstance(e, ZLayerError) or not isinstance(e, Exception):
                raise
            raise NetworkError(f"cannot attach {container} (pid {pid}): {e}", where=container) from e
        await self._persist()
        return str(ip)

    def _attach(self, container: str, pid: int, ip: str) -> None:
        from pyroute2 import NetlinkError

        host = self.veth_name(container)
        with self._ipr() as ipr:
            with contextlib.suppress(NetlinkError):
                ipr.link("del", ifname=host)  # a stale one from a crash (one request, no dump of every link)
            # The peer is made inside the container's namespace, already named eth0: no move, no rename.
            ipr.link("add", ifname=host, kind="veth", peer={"ifname": "eth0", "net_ns_pid": pid})
            hidx = ipr.link("get", ifname=host)[0]["index"]
            bidx = ipr.link("get", ifname=self.bridge)[0]["index"]
            # The address may have belonged to a container just removed: forget its MAC, or the node keeps
            # sending to it (for up to a minute) and the new container is unreachable.
            with contextlib.suppress(Exception):
                ipr.neigh("del", dst=ip, ifindex=bidx)
            ipr.link("set", index=hidx, master=bidx, state="up")
        with _in_netns(f"/proc/{pid}/ns/net") as ns:
            idx = ns.link("get", ifname="eth0")[0]["index"]
            ns.addr("add", index=idx, address=ip, prefixlen=self.subnet.prefixlen)
            ns.link("set", index=idx, state="up")
            with contextlib.suppress(NetlinkError):
                ns.link("set", ifname="lo", state="up")
            ns.route("add", dst="default", gateway=self.gateway)

    async def add_overlay(self, pid: int, address: str, cluster_cidr: str) -> None:
        """Give the container whose init is ``pid`` its overlay ``address`` too: a second address on its ``eth0``,
        the cluster CIDR routed through the gateway from that address, and a host route to it on the bridge."""
        await self._sync_rules()
        await asyncio.to_thread(self._add_overlay, pid, address, cluster_cidr)

    def _add_overlay(self, pid: int, address: str, cluster_cidr: str) -> None:
        net = ipaddress.ip_network(cluster_cidr)
        with _in_netns(f"/proc/{pid}/ns/net") as ns:
            idx = ns.link("get", ifname="eth0")[0]["index"]
            ns.addr("replace", index=idx, address=address, prefixlen=32)
            ns.route("replace", dst=str(net.network_address), dst_len=net.prefixlen, gateway=self.gateway,
                     prefsrc=address)  # fmt: skip
        with self._ipr() as ipr:
            bidx = ipr.link("get", ifname=self.bridge)[0]["index"]
            # as in _attach: the address may have been a removed replica's, whose MAC the node would keep using
            with contextlib.suppress(Exception):
                ipr.neigh("del", dst=address, ifindex=bidx)
            ipr.route("replace", dst=address, dst_len=32, oif=bidx)

    async def remove_overlay(self, address: str) -> None:
        def go() -> None:
            from pyroute2 import NetlinkError

            with self._ipr() as ipr, contextlib.suppress(NetlinkError):
                ipr.route("del", dst=address, dst_len=32)

        await asyncio.to_thread(go)
        if address in self.overlay_refused:
            self.overlay_refused.discard(address)
            await self._sync_rules()

    async def refuse_overlay(self, address: str) -> None:
        """A replica about to stop: a new connection to its overlay ``address`` from another node is refused at once,
        as one to its withdrawn port mappings is (see :meth:`withdraw`); established ones run on."""
        if address not in self.overlay_refused:
            self.overlay_refused.add(address)
            await self._sync_rules()

    async def detach(self, deployment: str, service: str, container: str) -> None:
        await asyncio.to_thread(self._detach, container)
        async with self._lock:
            self.ipam.release(container, save=False)
            self.members.pop(container, None)
            if self.ports.pop(container, None):
                self._hold()
        await self._sync_rules()
        await self._persist()

    def _detach(self, container: str) -> None:
        from pyroute2 import NetlinkError

        with self._ipr() as ipr:
            try:
                ipr.link("del", ifname=self.veth_name(container))
            except NetlinkError as e:
                if e.code != errno.ENODEV:  # the kernel removes the pair itself when the container's netns goes
                    raise NetworkError(f"cannot remove its veth: {e.args[-1]}", where=container) from None

    async def publish(self, container: str, mappings: list[PortMapping]) -> None:
        """DNAT ``host_port`` on the node to the container's address. A fixed host port another service's replica
        has published is refused (a replica of the same service may hold it: one rolling in replaces it)."""
        ip = self.ipam.leases.get(container)
        if ip is None:
            raise NetworkError(f"{container} has no address; port mappings need the node network", where=container)
        async with self._lock:
            mine = self.members.get(container)
            for m in mappings:
                for other, held in self.ports.items():
                    if other != container and self.members.get(other) != mine and any(_meet(m, h) for _, h in held):
                        raise NetworkError(f"{m.protocol} port {m.host_port} of the node is already published by "
                                           f"{other}", where=container)  # fmt: skip
            taken = {(m.protocol, m.host_port) for v in self.ports.values() for _, m in v}
            before = self.ports.get(container, [])
            self.ports[container] = [(ip, _with_host_port(m, taken)) for m in mappings]
            try:
                self._hold()
            except ZLayerError:
                self.ports[container] = before  # (closes what was held for the refused mappings)
                self._hold()
                raise
        # written off the event loop, once for the mappings published meanwhile (in a cluster every replica of a
        # fronted service publishes its port: each wrote and fsynced the state on the loop, under the lock)
        await asyncio.gather(self._persist(), self._sync_rules())

    def _hold(self) -> None:
        """Hold a socket on every fixed host port the node maps, and none other, as Docker does: the DNAT rule
        would silently take the port from a program listening on it, or another daemon's mapping of it; held, the
        port is refused to them (and a port already taken is refused here, naming its holder)."""
        wanted = {_claim(m) for v in self.ports.values() for _, m in v}
        for key in [k for k in self._held if k not in wanted]:
            self._held.pop(key).close()
        for key in wanted - set(self._held):
            self._held[key] = hold(key, self.node_netns)

    async def withdraw(self, container: str) -> None:
        """A replica about to stop: its port mappings go first. A new connection to them is then refused at once (the
        proxy of another node, which has not yet heard the replica left, tries another backend) instead of being
        sent on to an address that vanishes when the container exits; established connections run on."""
        async with self._lock:
            if not self.ports.pop(container, None):
                return
            self._hold()
        await asyncio.gather(self._persist(), self._sync_rules())

    def published(self, container: str) -> list[PortMapping]:
        """The container's port mappings as published (ephemeral host ports resolved)."""
        return [m for _, m in self.ports.get(container, [])]

    def address_of(self, container: str) -> str | None:
        return self.ipam.leases.get(container)

    async def close(self) -> None:
        """Leave everything in place: running containers keep their network; the next daemon reuses it."""

    async def teardown(self) -> None:
        """Remove the bridge, every veth and the node's nftables tables (used when the node is reset and by
        tests); another daemon's bridge and tables stay as they are."""

        def go() -> None:
            with self._ipr() as ipr:
                for c in list(self.ipam.leases):
                    for idx in ipr.link_lookup(ifname=self.veth_name(c)):
                        ipr.link("del", index=idx)
                for idx in ipr.link_lookup(ifname=self.bridge):
                    ipr.link("del", index=idx)
            for family in ("ip", "bridge"):
                with contextlib.suppress(NetworkError):
                    self._run(["nft", "delete", "table", family, self.table])

        await asyncio.to_thread(go)
        for sock in self._held.values():
            sock.close()
        self._held.clear()
        self._ready = False


def _claim(m: PortMapping) -> PortClaim:
    return PortClaim("", m.protocol, m.host_ip, m.host_port)


def _meet(a: PortMapping, b: PortMapping) -> bool:
    return _claim(a).meets(_claim(b))


def _ifname_set(name: str, comment: str, elements: list[str]) -> str:
    items = f" elements = {{ {', '.join(elements)} }};" if elements else ""
    return f"  set {name} {{ type ifname; comment {json.dumps(comment[:100])};{items} }}"


def _chain(name: str, hook: str | None, rules: list[str]) -> str:
    head = f"  chain {name} {{" + (f" {hook}; policy accept;" if hook else "")
    return "\n".join([head, *(f"    {r}" for r in rules), "  }"])


def _with_host_port(m: PortMapping, taken: set[tuple[str, int]]) -> PortMapping:
    """``m`` itself, or with a free ephemeral host port when its ``host_port`` is 0 (as Docker's ``-p 80``): one the
    kernel hands out for ``host_ip`` now and no other mapping of this node holds."""
    if m.host_port:
        return m
    kind = socket.SOCK_DGRAM if m.protocol == "udp" else socket.SOCK_STREAM
    for _ in range(64):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((m.host_ip or "0.0.0.0", 0))
            port = int(s.getsockname()[1])
        if (m.protocol, port) not in taken:
            taken.add((m.protocol, port))
            return dataclasses.replace(m, host_port=port)
    raise NetworkError(f"no free {m.protocol} port on {m.host_ip}", where=f"port_mappings {m.container_port}")


def port_mappings(mappings: Sequence[SpecPortMapping]) -> list[PortMapping]:
    """The spec's ``port_mappings`` entries; ``host_port`` none/0 asks for an ephemeral port, picked at publish."""
    return [PortMapping(m.host_port or 0, m.container_port, m.protocol, m.host_ip) for m in mappings]
