"""The overlay of a cluster: every node's slice of the cluster CIDR, its WireGuard key and endpoint in etcd, one
userspace WireGuard interface per node whose peers are the other nodes, kept current by a watch.

etcd, under ``/zlayer/cluster/overlay/``:

- ``slices/<a.b.c.d>_<prefix>`` = node id: who holds a slice. A slice is taken in one transaction that holds only
  while the key does not exist, so two nodes never get the same one (:class:`EtcdSliceBook`).
- ``nodes/<id>`` = ``{"public_key" (base64), "endpoint" ("addr:port"), "slice", "address", "interface"}``: a node's
  peer entry, written when it enters the cluster.
- ``addresses/<node>/<container>`` = ``{"deployment", "service", "address"}``: each container's overlay address, what
  every node's DNS answers service names with (:attr:`OverlayNode.records`).

Each node's interface carries the first address of its slice; the whole cluster CIDR is routed into it, and each
peer's allowed-ips is that peer's slice, so a packet for an address of another node's slice goes to that node,
encrypted. Containers get the other addresses of the node's slice (:meth:`OverlayNode.allocate`).

A peer is healthy while its last handshake is at most ``unhealthy_after`` seconds old (ZLayer's 180; ``serve
--overlay-peer-timeout``); each peer whose handshake is half that old is offered a new one, so a live peer stays
healthy however idle the link. An unhealthy peer loses its allowed-ips, and its replicas leave this node's proxy
(:meth:`OverlayNode.reachable`) and DNS answers until a handshake succeeds again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from zlayer.errors import OverlayError
from zlayer.overlay.addressing import CLUSTER_CIDR, MTU, SLICE_PREFIX, AddressPool, fnv1a64
from zlayer.overlay.interface import HEALTHY_HANDSHAKE_AGE
from zlayer.paths import write_atomic
from zlayer.state.etcd import EtcdClient, EtcdError, delete_op, mod_is, put_op

log = logging.getLogger("zlayer.overlay")

ROOT = "/zlayer/cluster/overlay/"
SLICES = ROOT + "slices/"
NODES = ROOT + "nodes/"
ADDRESSES = ROOT + "addresses/"
WG_PORT = 51420  # ZLayer's `serve --wg-port` default (its library's 51820 is not what its daemon uses)
KEEPALIVE = 25  # ZLayer's persistent keepalive
DNS_PORT = 15353  # ZLayer's service DNS port


def _slice_key(cidr: str) -> str:
    return SLICES + cidr.replace("/", "_")


class EtcdSliceBook:
    """The cluster's slice assignments in etcd; ``claim`` is one transaction (create the key, or find it ours)."""

    def __init__(self, client: EtcdClient) -> None:
        self.client = client

    async def holders(self) -> dict[str, str]:
        out = {}
        for kv in await self.client.range(SLICES):
            out[kv.key[len(SLICES) :].replace("_", "/")] = kv.value.decode()
        return out

    async def claim(self, cidr: str, node: str) -> bool:
        key = _slice_key(cidr)
        if await self.client.txn([mod_is(key, 0)], [put_op(key, node)]):
            return True
        kv = await self.client.get(key)
        return kv is not None and kv.value.decode() == node

    async def release(self, node: str) -> None:
        for cidr, holder in (await self.holders()).items():
            if holder == node:
                await self.client.txn([], [delete_op(_slice_key(cidr))])


async def claim_slice(
    book: EtcdSliceBook, node: str, cluster_cidr: str = CLUSTER_CIDR, slice_prefix: int = SLICE_PREFIX
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The node's slice: the one it holds, else the first free one from FNV-1a(node) on (ZLayer's probe)."""
    network = ipaddress.ip_network(cluster_cidr)
    count = 1 << (slice_prefix - network.prefixlen)
    held = await book.holders()
    for cidr, holder in held.items():
        if holder == node:
            return ipaddress.ip_network(cidr)
    start = fnv1a64(node.encode()) % count
    shift = network.max_prefixlen - slice_prefix
    for step in range(count):
        base = int(network.network_address) + (((start + step) % count) << shift)
        cidr = f"{ipaddress.ip_address(base)}/{slice_prefix}"
        if cidr in held and held[cidr] != node:
            continue
        if await book.claim(cidr, node):
            return ipaddress.ip_network(cidr)
    raise OverlayError(
        f"overlay address space {network} is exhausted: all {count} /{slice_prefix} slices are assigned, none is "
        f"left for node {node}",
        hint="remove nodes that left the cluster (zlayer node rm), or configure a larger cluster CIDR",
    )


def interface_name(data_dir: Path) -> str:
    """``zlo<8 hex>`` from the data dir: several daemons on one host (tests) each get their own."""
    return "zlo" + hashlib.sha256(str(data_dir.absolute()).encode()).hexdigest()[:8]


class OverlayNode:
    """This node's part of the overlay; a membership hook (``entered``/``left``) the daemon plugs into its
    ClusterNode, and the source of containers' overlay addresses."""

    def __init__(
        self,
        directory: Path,
        advertise: str | None = None,
        port: int = WG_PORT,
        unhealthy_after: float = HEALTHY_HANDSHAKE_AGE,
    ) -> None:
        self.directory = directory
        self.port = port
        self.unhealthy_after = unhealthy_after  # seconds without a handshake before a peer is unhealthy
        self.healthy: dict[str, bool] = {}  # node id -> whether its peer is healthy, as last judged
        self.ifname = interface_name(directory)
        self.advertise = advertise
        self.iface: Any = None
        self.uapi: Any = None
        self.node_id = ""
        self.slice: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
        self.address = ""
        self.pool: AddressPool | None = None
        self.leases: dict[str, str] = {}  # container -> overlay address
        self.peers: dict[str, dict[str, Any]] = {}  # node id -> its entry
        self.records: dict[str, tuple[str, str, str]] = {}  # container (any node) -> (deployment, service, address)
        self.homes: dict[str, str] = {}  # container (any node) -> the node it runs on
        self.client: EtcdClient | None = None
        self.dns_binds: list[str] = []  # where the node's DNS answers on port DNS_PORT (set by the daemon)
        self._watch: asyncio.Task[None] | None = None
        self._health: asyncio.Task[None] | None = None
        self.error = ""
        # told the id of a node whose reachability over the overlay changed (see :meth:`reachable`)
        self.listeners: list[Callable[[str], None]] = []

    # membership hook -------------------------------------------------------------------------------------------

    def join_fields(self) -> dict[str, Any]:
        return {}

    async def admitted(self, client: EtcdClient, node_id: str, request: Mapping[str, Any]) -> None:
        return None

    async def left(self, client: EtcdClient, node_id: str, removed: bool) -> None:
        with contextlib.suppress(EtcdError):
            await EtcdSliceBook(client).release(node_id)
            await client.delete(NODES + node_id)
            await client.delete(f"{ADDRESSES}{node_id}/", prefix=True)

    async def entered(self, client: EtcdClient, node_id: str, how: str) -> None:
        """Claim the slice, publish the peer entry, bring the interface up and follow the other nodes. A node
        where this fails (no TUN, no root) runs on without an overlay and says why."""
        try:
            await self._enter(client, node_id)
        except Exception as e:  # the cluster is joined all the same: the overlay is what is missing, and says so
            self.error = str(e) or type(e).__name__
            log.error("overlay: not up on node %s: %s", node_id, self.error)
            await self.close()

    async def _enter(self, client: EtcdClient, node_id: str) -> None:
        from zlayer.overlay import noise

        self.node_id = node_id
        self.client = client
        self.slice = await claim_slice(EtcdSliceBook(client), node_id)
        hosts = self.slice.hosts()
        self.address = str(next(iter(hosts)))
        self.pool = AddressPool(self.slice, {self.address, *self._load_leases().values()})
        private = self._key()
        public = noise.Identity(private).public
        advertise = self.advertise or await self._advertise(client, node_id)
        await asyncio.to_thread(self._up, private)
        entry = {"public_key": base64.b64encode(public).decode(), "endpoint": f"{advertise}:{self.iface.listen_port}",
                 "slice": str(self.slice), "address": self.address, "interface": self.ifname}  # fmt: skip
        await client.put(NODES + node_id, entry)
        log.info("overlay: %s up, %s in slice %s, endpoint %s", self.ifname, self.address, self.slice,
                 entry["endpoint"])  # fmt: skip
        rev = await client.revision()
        await self._sync(client)
        self._watch = asyncio.create_task(self._follow(client, rev + 1), name="zlayer-overlay-watch")
        self._health = asyncio.create_task(self._judge(), name="zlayer-overlay-health")

    async def _advertise(self, client: EtcdClient, node_id: str) -> str:
        kv = await client.get("/zlayer/cluster/nodes/" + node_id)
        doc = kv.json() if kv else {}
        addr = (doc.get("node") or {}).get("advertise_addr") or ""
        if not addr:
            raise OverlayError(f"node {node_id} has no address in the cluster state to be reached at")
        return str(addr)

    def _key(self) -> bytes:
        path = self.directory / "private.key"
        with contextlib.suppress(FileNotFoundError):
            return base64.b64decode(path.read_text().strip())
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = os.urandom(32)
        write_atomic(path, base64.b64encode(key).decode() + "\n")
        os.chmod(path, 0o600)
        return key

    def _up(self, private: bytes) -> None:
        from pyroute2 import IPRoute

        from zlayer.overlay.interface import Interface
        from zlayer.overlay.uapi import UapiServer

        assert self.slice is not None
        self.iface = Interface(self.ifname, private_key=private, listen_port=self.port, mtu=MTU)
        self.iface.start()
        self.uapi = UapiServer(self.iface, self.directory / "uapi")
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=self.ifname)[0]
            ipr.addr("replace", index=idx, address=self.address, prefixlen=32)
            ipr.link("set", index=idx, state="up", mtu=MTU)
            net = ipaddress.ip_network(CLUSTER_CIDR)
            ipr.route("replace", dst=str(net.network_address), dst_len=net.prefixlen, oif=idx, prefsrc=self.address)
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")

    async def _sync(self, client: EtcdClient) -> None:
        entries = {kv.key[len(NODES) :]: kv.json() for kv in await client.range(NODES)}
        for node, entry in entries.items():
            self._peer(node, entry)
        for node in [n for n in self.peers if n not in entries]:
            self._drop(node)
        records, homes = {}, {}
        for kv in await client.range(ADDRESSES):
            got = self._record(kv.key, kv.json())
            if got is not None:
                records[got[0]] = got[1]
                homes[got[0]] = self._home(kv.key)
        self.records, self.homes = records, homes

    @staticmethod
    def _record(key: str, doc: Any) -> tuple[str, tuple[str, str, str]] | None:
        try:
            return key.rsplit("/", 1)[-1], (str(doc["deployment"]), str(doc["service"]), str(doc["address"]))
        except (KeyError, TypeError):
            return None

    @staticmethod
    def _home(key: str) -> str:
        return key[len(ADDRESSES) :].partition("/")[0]

    async def _follow(self, client: EtcdClient, start: int) -> None:
        while True:
            try:
                async for kind, kv in client.watch(ROOT, start):
                    start = max(start, kv.mod_revision + 1)
                    if kv.key.startswith(ADDRESSES):
                        container = kv.key.rsplit("/", 1)[-1]
                        got = None if kind == "DELETE" else self._record(kv.key, kv.json())
                        if got is None:
                            self.records.pop(container, None)
                            self.homes.pop(container, None)
                        else:
                            self.records[container] = got[1]
                            self.homes[container] = self._home(kv.key)
                        continue
                    if not kv.key.startswith(NODES):
                        continue
                    node = kv.key[len(NODES) :]
                    if kind == "DELETE":
                        self._drop(node)
                    else:
                        self._peer(node, kv.json())
            except EtcdError as e:
                log.warning("overlay: watch of the peers broke (%s); reading them again", e)
            await asyncio.sleep(1.0)
            with contextlib.suppress(EtcdError):
                await self._sync(client)
                start = await client.revision() + 1

    def _peer(self, node: str, entry: dict[str, Any]) -> None:
        if node == self.node_id or self.iface is None:
            return
        try:
            public = base64.b64decode(entry["public_key"])
            host, _, port = str(entry["endpoint"]).rpartition(":")
            nets = [ipaddress.ip_network(entry["slice"])]
        except (KeyError, ValueError, TypeError) as e:
            log.warning("overlay: node %s's peer entry is unusable (%s): %s", node, e, entry)
            return
        old = self.peers.get(node)
        if old == entry:
            return
        if old and old.get("public_key") != entry["public_key"]:
            self._drop(node)
        peer = self.iface.peer(public)
        self.iface.set_endpoint(peer, (host, int(port)))
        self.iface.set_allowed_ips(peer, nets if self.healthy.get(node) else [], replace=True)
        self.iface.set_persistent_keepalive(peer, KEEPALIVE)
        self.peers[node] = entry
        log.info("overlay: peer %s at %s for %s", node, entry["endpoint"], entry["slice"])
        self._tell(node)

    def _drop(self, node: str) -> None:
        gone = self.peers.pop(node, None)
        self.healthy.pop(node, None)
        if gone and self.iface is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.iface.remove_peer(base64.b64decode(gone["public_key"]))
        if gone:
            self._tell(node)

    def _tell(self, node: str) -> None:
        for listener in self.listeners:
            try:
                listener(node)
            except Exception as e:  # one listener's failure is its own
                log.warning("overlay: telling of node %s's change failed: %s", node, e)

    def reachable(self, node: str) -> bool | None:
        """How this node reaches ``node``'s replicas: True over the overlay (their overlay addresses, through
        WireGuard); False not at all (its peer is unhealthy: no handshake for ``unhealthy_after`` s, or none yet);
        None when this node or that one has no overlay (their node address and host port)."""
        if not self.up or node not in self.peers:
            return None
        return self.healthy.get(node, False)

    async def _judge(self) -> None:
        """Every second (or a quarter of the threshold): each peer's health from its handshake age, a handshake
        offered to each whose last one is half the threshold old (or that has none), and a change of health
        applied (allowed-ips, then the listeners: the proxy and DNS follow)."""
        every = min(1.0, self.unhealthy_after / 4)
        while self.iface is not None:
            with contextlib.suppress(Exception):  # a peer that changed meanwhile is judged on the next round
                self.judge()
            await asyncio.sleep(every)

    def judge(self) -> None:
        iface = self.iface
        if iface is None:
            return
        for node, entry in list(self.peers.items()):
            peer = iface.peer(base64.b64decode(entry["public_key"]), create=False)
            if peer is None:
                continue
            status = iface.peer_status(peer)
            age = status.last_handshake_age
            if age is None or age >= self.unhealthy_after / 2:
                iface.initiate(peer)  # at most one in flight per REKEY_TIMEOUT (5 s)
            ok = age is not None and age <= self.unhealthy_after
            if self.healthy.get(node) == ok:
                continue
            self.healthy[node] = ok
            nets = [ipaddress.ip_network(entry["slice"])] if ok else []
            iface.set_allowed_ips(peer, nets, replace=True)
            if ok:
                log.info("overlay: peer %s is healthy%s", node, " again" if status.handshakes > 1 else "")
            elif age is None:
                log.info("overlay: peer %s: no handshake yet", node)
            else:
                log.warning("overlay: peer %s is unhealthy: no handshake for %.0fs; its allowed-ips, its replicas in "
                            "this node's proxy and DNS are withdrawn until it answers", node, age)  # fmt: skip
            self._tell(node)

    # containers ------------------------------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self.iface is not None and self.pool is not None

    def _leases_file(self) -> Path:
        return self.directory / "leases.json"

    def _load_leases(self) -> dict[str, str]:
        try:
            data = json.loads(self._leases_file().read_text())
        except (OSError, ValueError):
            return {}
        if self.slice is None or data.get("slice") != str(self.slice):
            return {}
        self.leases = {str(k): str(v) for k, v in data.get("leases", {}).items()}
        return self.leases

    def _save_leases(self) -> None:
        write_atomic(self._leases_file(), json.dumps({"slice": str(self.slice), "leases": self.leases}))

    def allocate(self, container: str) -> str:
        """The container's overlay address (the same one again for a container that has one)."""
        if self.pool is None:
            raise OverlayError("the overlay is not up on this node", hint=self.error or None)
        if container not in self.leases:
            self.leases[container] = str(self.pool.allocate())
            self._save_leases()
        return self.leases[container]

    def release(self, container: str) -> None:
        ip = self.leases.pop(container, None)
        if ip is not None and self.pool is not None:
            self.pool.release(ip)
            self._save_leases()

    async def register(self, container: str, deployment: str, service: str) -> None:
        """Tell every node the container's overlay address (their DNS answers its names with it)."""
        if self.client is None or container not in self.leases:
            return
        self.records[container] = (deployment, service, self.leases[container])
        self.homes[container] = self.node_id
        doc = {"deployment": deployment, "service": service, "address": self.leases[container]}
        try:
            await self.client.put(f"{ADDRESSES}{self.node_id}/{container}", doc)
        except EtcdError as e:  # the replica runs; other nodes do not resolve it until it is registered again
            log.warning("overlay: cannot register %s's address in the cluster: %s", container, e)

    async def unregister(self, container: str) -> None:
        self.records.pop(container, None)
        self.homes.pop(container, None)
        if self.client is not None:
            with contextlib.suppress(EtcdError):
                await self.client.delete(f"{ADDRESSES}{self.node_id}/{container}")

    def lookup(self, asker: str, qname: str) -> list[str] | None:
        """Overlay addresses for ``qname`` among the replicas of the asker's deployment on every node; None when
        the asker is no container this overlay knows (its own node's lookup decides then)."""
        mine = next((r for c, r in self.records.items() if r[2] == asker), None)
        return None if mine is None else self.answer(mine[0], qname)

    def answer(self, deployment: str, qname: str) -> list[str]:
        """Overlay addresses of the deployment's replicas named ``qname``, on this node and the nodes whose peer is
        healthy."""
        out = []
        for c, (dep, svc, address) in sorted(self.records.items()):
            if dep != deployment or self.reachable(self.homes.get(c, "")) is False:
                continue
            replica = c.rsplit("-", 1)[-1]
            if qname in (svc, f"{svc}.service.local") or (
                qname == f"{replica}.{svc}.service.local" and c.endswith(f"-{replica}")
            ):
                out.append(address)
        return out

    # reading ---------------------------------------------------------------------------------------------------

    def bridges(self, service: str) -> dict[str, dict[str, str]]:
        """Where the overlay of ``service`` ends on each node that runs a replica of it (any deployment), by node
        id: the node's WireGuard interface, its slice and the slice's first address (the interface's own, through
        which the node's replicas are reached). Every service shares its node's slice: ZLayer's ``shared`` mode,
        the one there is."""
        own = {"slice": str(self.slice), "address": self.address, "interface": self.ifname}
        out: dict[str, dict[str, str]] = {}
        for container, (_, svc, _) in self.records.items():
            node = self.homes.get(container, "")
            entry = own if node == self.node_id else self.peers.get(node)
            if svc != service or not entry or node in out:
                continue
            out[node] = {"node_id": node, "name": str(entry.get("interface") or ""), "subnet": str(entry["slice"]),
                         "gateway": str(entry["address"])}  # fmt: skip
        return dict(sorted(out.items()))

    def status(self) -> dict[str, Any]:
        peers = []
        if self.iface is not None:
            by_key = {e["public_key"]: n for n, e in self.peers.items()}
            for st in self.iface.peer_statuses():
                key = base64.b64encode(st.public_key).decode()
                peers.append({
                    "node": by_key.get(key, ""),
                    "public_key": key,
                    "endpoint": f"{st.endpoint[0]}:{st.endpoint[1]}" if st.endpoint else None,
                    "allowed_ips": [str(n) for n in st.allowed_ips],
                    "last_handshake_unix_secs": st.last_handshake_ns // 1_000_000_000,
                    "handshake_age_s": None if st.last_handshake_age is None else round(st.last_handshake_age, 1),
                    "healthy": self.healthy.get(by_key.get(key, ""), False),
                    "rx_bytes": st.rx_bytes,
                    "tx_bytes": st.tx_bytes,
                })  # fmt: skip
        return {
            "interface": self.ifname if self.iface is not None else None,
            "node_id": self.node_id or None,
            "node_ip": self.address or None,
            "public_key": base64.b64encode(self.iface.identity.public).decode() if self.iface is not None else None,
            "listen_port": self.iface.listen_port if self.iface is not None else None,
            "overlay_cidr": CLUSTER_CIDR,
            "slice_cidr": str(self.slice) if self.slice else None,
            "mtu": MTU,
            "peer_count": len(peers),
            "unhealthy_after_s": self.unhealthy_after,
            "peers": peers,
            "containers": dict(self.leases),
            "error": self.error or None,
        }

    async def close(self) -> None:
        for task in (self._watch, self._health):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.uapi is not None:
            self.uapi.close()
        if self.iface is not None:
            await asyncio.to_thread(self.iface.close)
            self.iface = None
        self.uapi = None
