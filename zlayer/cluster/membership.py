"""This node's part in the cluster: init, join, the voter rule, liveness, and the node commands.

State, all in etcd under ``/zlayer/cluster/``: ``config`` (cluster id, timings, the join-token signing key),
``nodes/<id>`` (each node: :class:`~zlayer.cluster.view.Node` plus its ports and when it registered), ``alive/<id>``
(on the node's lease: there while the node renews it), ``next-id``, ``tokens/used/<jti>`` and
``tokens/revoked/<hash>``. The node's own file ``DATA/cluster/node.json`` says how to start its etcd member again.

- **Leader**: the node whose etcd member leads etcd's raft. Only it admits joins and runs the monitor; every node
  answers reads, and a write from any node reaches etcd's leader through etcd itself.
- **Voter rule** (ZLayer's): ``1→1, 2→1, 3→3, 4→3, 5→5, 6→5, 7+→7`` voters among the ``full`` nodes that are not
  dead; every new member starts as an etcd learner and the leader promotes it once it has caught up and the rule
  wants another voter. ``replicate`` nodes stay learners.
- **Liveness**: each node holds a lease of ``dead_after`` seconds and renews it every ``heartbeat`` seconds; its
  ``alive`` key goes with the lease. The leader marks a node without one ``dead`` (once it has been registered that
  long) and ``ready`` again when it comes back; ``draining`` is the operator's and survives both (``zlayer node
  drain``: the node's replicas move to ready nodes; ``--undo`` makes it ready, nothing moves back).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import shutil
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from pydantic import ValidationError

from zlayer.cluster import pki
from zlayer.cluster.assignments import EtcdAssignments
from zlayer.cluster.etcd import EtcdMember, EtcdProcess, last_line, url
from zlayer.cluster.tokens import SigningKey, parse_ttl, read_token, token_ca_pin, token_hash
from zlayer.cluster.view import NODE_MODES, Assignment, Node, NodeResources
from zlayer.errors import AuthError, ConflictError, DaemonError, NotFoundError, UsageError, ZLayerError
from zlayer.paths import private_dir, write_atomic
from zlayer.state.etcd import EtcdClient, EtcdError, EtcdStore, delete_op, mod_is, put_op
from zlayer.state.switch import SwitchingStore

log = logging.getLogger("zlayer.cluster")

ROOT = "/zlayer/cluster/"
MAX_VOTERS = 7
RAFT_PORT = 9000
CLIENT_PORT = 2379
FORCE_CONFIRM = "CONFIRM_FORCE_LEADER"
LEADER_KEY = ROOT + "leader"
CA_KEY = ROOT + "ca"  # the cluster CA: {"cert", "key"} (PEM), and the serials its revocation list holds
CRL_KEY = ROOT + "crl"  # the CA's revocation list (PEM): the certificates of removed nodes
STATE = ROOT + "state/"  # the cluster-wide desired state (cluster_store)
DRAIN_WAIT = 20.0  # a drain waits this long at most for the leader to place the node's replicas elsewhere


class MembershipHook(Protocol):
    """What another part of the daemon does as nodes enter and leave the cluster (the daemon plugs in the secrets'
    side, :class:`zlayer.security.cluster.ClusterSecretsHook`; ``cluster`` does not import ``security``)."""

    def join_fields(self) -> dict[str, Any]:
        """Fields this node adds to its join request."""
        ...

    async def entered(self, client: EtcdClient, node_id: str, how: str) -> None:
        """This node is in the cluster now: ``how`` is ``init``, ``join`` or ``start`` (a daemon start in one)."""

    async def admitted(self, client: EtcdClient, node_id: str, request: Mapping[str, Any]) -> None:
        """On the leader: node ``node_id`` was registered from ``request`` (its token checked); raising refuses it."""

    async def left(self, client: EtcdClient, node_id: str, removed: bool) -> None:
        """Node ``node_id`` is out: ``removed`` by an operator, or its join did not complete."""


class NotLeader(ZLayerError):
    """A request only the leader serves reached another node."""

    code = "not_leader"
    http_status = 421


class NotInCluster(ZLayerError):
    code = "not_in_cluster"
    http_status = 409


def target_voters(n: int) -> int:
    """ZLayer's voter rule: at least one, at most seven, always odd."""
    if n <= 1:
        return 1
    n = min(n, MAX_VOTERS)
    return n if n % 2 else n - 1


@dataclasses.dataclass(frozen=True)
class Liveness:
    heartbeat: float = 5.0
    dead_after: float = 30.0

    def check(self) -> Liveness:
        if not 0.2 <= self.heartbeat <= 60:
            raise UsageError(f"heartbeat interval {self.heartbeat:g}s is not between 0.2 and 60 s",
                             where="--heartbeat-interval")  # fmt: skip
        if self.dead_after < max(2.0, 2 * self.heartbeat):
            raise UsageError(f"dead-after {self.dead_after:g}s must be at least two heartbeats "
                             f"({2 * self.heartbeat:g}s) and 2 s", where="--dead-after")  # fmt: skip
        return self


@dataclasses.dataclass
class LocalConfig:
    """``DATA/cluster/node.json``: what this node needs to start its etcd member again."""

    node_id: str
    advertise: str
    api_port: int
    raft_port: int
    client_port: int
    initial_cluster: str
    cluster_token: str
    state: str = "new"
    force_new: bool = False  # a force-leader under way: the next start of etcd forces a cluster of one
    endpoints: list[str] = dataclasses.field(default_factory=list)  # the voters' client URLs, last known
    tls: bool = False  # etcd with mutual TLS (DATA/cluster/tls); False only in a config an older zlayer wrote

    def member(self, directory: Path) -> EtcdMember:
        return EtcdMember(f"node-{self.node_id}", self.advertise, self.raft_port, self.client_port,
                          pki.NodeTLS(directory / "tls"))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class NodeEntry:
    """One node as ``zlayer node ls`` shows it."""

    node: Node
    api_port: int
    raft_port: int
    registered_at: int
    last_heartbeat: int
    is_leader: bool
    cert_serial: int = 0  # its etcd certificate's serial (0: none recorded)

    def summary(self) -> dict[str, Any]:
        """ZLayer's ClusterNodeSummary, with the node's labels and GPUs beside it."""
        n = self.node
        return {"id": n.id, "address": f"{n.advertise_addr}:{self.raft_port}", "advertise_addr": n.advertise_addr,
                "api_endpoint": f"{n.advertise_addr}:{self.api_port}", "cpu_total": n.resources.cpu_cores,
                "cpu_used": 0.0, "memory_total": n.resources.memory_bytes, "memory_used": 0,
                "disk_total": n.resources.disk_bytes, "gpus": [g.model_dump() for g in n.resources.gpus],
                "last_heartbeat": self.last_heartbeat, "registered_at": self.registered_at, "overlay_ip": "",
                "is_leader": self.is_leader, "mode": n.mode, "role": n.role, "status": n.status,
                "labels": dict(n.labels), "os": n.os, "arch": n.arch}  # fmt: skip


def _platform() -> tuple[str, str | None]:
    from zlayer.cluster.resources import detect_platform

    return detect_platform()


def _ms() -> int:
    return int(time.time() * 1000)


def check_address(addr: str, where: str = "--advertise-addr") -> str:
    try:
        ip = ipaddress.ip_address(addr.strip())
    except ValueError:
        raise UsageError(f"{addr!r} is not an IP address", where=where) from None
    if ip.is_unspecified or ip.is_multicast:
        raise UsageError(f"{addr} cannot be a node's address (other nodes must reach it)", where=where)
    return str(ip)


def check_labels(labels: Mapping[str, str], where: str = "labels") -> dict[str, str]:
    out = {}
    for k, v in labels.items():
        if not k or len(k) > 253 or any(c.isspace() or c in "=,\0/" for c in k[:1]) or "\0" in k + v or "=" in k:
            raise UsageError(f"label {k!r}: a key is 1-253 characters without '=', NUL or a leading '/'",
                             where=f"{where}.{k}")  # fmt: skip
        out[str(k)] = str(v)
    return out


def ports_free(addr: str, ports: Sequence[tuple[int, str]]) -> None:
    """Refuse, before anything is registered anywhere, an address this host does not have or a port in use."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    for port, flag in ports:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            # as etcd (Go) binds: connections of a member that just went, in TIME_WAIT, do not hold the port
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((addr, port))
            except OSError as e:
                if e.errno == 99:  # EADDRNOTAVAIL
                    raise UsageError(f"{addr} is not an address of this node", where="--advertise-addr") from None
                raise ConflictError(f"{addr}:{port} is in use on this node ({e.strerror})", where=flag) from None


class ClusterNode:
    """The daemon's cluster side. ``store`` is the daemon's SwitchingStore: init and join move it onto etcd."""

    def __init__(self, directory: Path, log_file: Path, store: SwitchingStore, data_dir: Path, api_port: int,
                 liveness: Liveness = Liveness()) -> None:  # fmt: skip
        self.directory = directory
        self.log_file = log_file
        self.store = store
        self.data_dir = data_dir
        self.api_port = api_port
        self.liveness = liveness
        self.local: LocalConfig | None = self._read_local()
        self.etcd: EtcdProcess | None = None
        self.client: EtcdClient | None = None
        self._member_id = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()  # one init/join/force-leader at a time
        self._revive_after = 0.0
        self._won = 0  # the revision at which this node last wrote the leader key (0: it does not lead)
        self._removed_said = False
        self.hooks: list[MembershipHook] = []  # plugged in by the daemon before start()
        self.on_enter: list[Callable[[], None]] = []  # told once the node is in a cluster (at start, init, join)

    # local config -----------------------------------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        return self.directory / "node.json"

    def _read_local(self) -> LocalConfig | None:
        try:
            return LocalConfig(**json.loads(self.config_file.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as e:
            raise DaemonError(f"cannot read the node's cluster config: {e}", where=str(self.config_file)) from e

    def _write_local(self, cfg: LocalConfig) -> None:
        private_dir(self.directory)
        write_atomic(self.config_file, json.dumps(dataclasses.asdict(cfg), indent=2))
        self.local = cfg

    @property
    def tls(self) -> pki.NodeTLS:
        return pki.NodeTLS(self.directory / "tls")

    @property
    def in_cluster(self) -> bool:
        return self.local is not None and self.client is not None

    def need(self) -> tuple[LocalConfig, EtcdClient]:
        if self.local is None or self.client is None:
            raise NotInCluster("this node is not in a cluster",
                               hint="zlayer node init --advertise-addr IP, or zlayer node join")  # fmt: skip
        return self.local, self.client

    # start and stop -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """At daemon start: a node that is in a cluster starts its etcd member and moves its store onto it."""
        if self.local is None:
            return
        if not self.local.tls:
            raise DaemonError(
                "this node's cluster config predates TLS: its etcd would serve the cluster's whole state, and take "
                "writes, in plain HTTP from anyone who reaches its address; it is not started so",
                where=str(self.config_file),
                hint=f"make the cluster again with this zlayer: on each node stop the daemon and move {self.directory} "
                "away (the node starts alone on the state it had before it joined), then `zlayer node init` on one "
                "and `zlayer node join` on the others",
            )  # fmt: skip
        await self._run_etcd(self.local)
        await self._enter(self.local, "start")

    async def _run_etcd(self, cfg: LocalConfig) -> None:
        self.etcd = EtcdProcess(self.directory, cfg.member(self.directory), self.log_file)
        if cfg.force_new:  # a force-leader cut short: do it again, then run as usual
            client = await self.etcd.start(cfg.initial_cluster, cfg.state, cfg.cluster_token, force_new=True)
            await client.close()
            await self.etcd.stop()
            cfg.force_new = False
            self._write_local(cfg)
        self.client = await self.etcd.start(cfg.initial_cluster, cfg.state, cfg.cluster_token)
        # a learner serves no reads or writes: the client goes on to the voters (cfg.force_new: there are none)
        self.client.endpoints += [e for e in cfg.endpoints if e not in self.client.endpoints and not cfg.force_new]
        self._member_id = int((await self.client.status()).get("header", {}).get("member_id") or 0)

    async def _enter(self, cfg: LocalConfig, how: str) -> None:
        """Move the store onto etcd (the node's SQLite state carried over once), tell the hooks, start the loops."""
        assert self.client is not None
        conf = await self._cluster_config()
        self.liveness = Liveness(float(conf.get("heartbeat", 5.0)), float(conf.get("dead_after", 30.0)))
        store = cluster_store(self.client, cfg.node_id)
        copied = await self.store.switch(store, store.copy_from)
        if copied:
            log.info("cluster: carried %d deployment(s) of this node over into etcd", copied)
        for hook in self.hooks:
            await hook.entered(self.client, cfg.node_id, how)
        self._tasks = [asyncio.create_task(self._heartbeat(), name="zlayer-cluster-heartbeat"),
                       asyncio.create_task(self._monitor(), name="zlayer-cluster-monitor")]  # fmt: skip
        for entered in self.on_enter:
            entered()

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        if self.etcd is not None:
            await self.etcd.stop()

    async def _cluster_config(self) -> dict[str, Any]:
        assert self.client is not None
        kv = await self.client.get(ROOT + "config")
        return kv.json() if kv else {}

    # leadership -------------------------------------------------------------------------------------------------

    async def leader_id(self) -> int:
        """The etcd member id of the leader, as this node's member knows it (0: none now)."""
        _, client = self.need()
        return int((await client.status(timeout=2.0)).get("leader") or 0)

    async def is_leader(self) -> bool:
        try:
            return self._member_id != 0 and await self.leader_id() == self._member_id
        except EtcdError:
            return False

    async def _leader_api(self) -> str:
        """``host:port`` of the leader's API, for a message that sends someone there."""
        with contextlib.suppress(ZLayerError):
            leader = await self.leader_id()
            members = {int(m["ID"]): m for m in await self.need()[1].members()}
            peer = (members.get(leader) or {}).get("peerURLs") or []
            for e in await self.entries():
                if peer and f"{e.node.advertise_addr}:{e.raft_port}" in peer[0]:
                    return f"{e.node.advertise_addr}:{e.api_port}"
        return "(no leader now)"

    # init and join ----------------------------------------------------------------------------------------------

    async def init(
        self,
        advertise: str,
        raft_port: int = RAFT_PORT,
        client_port: int = CLIENT_PORT,
        liveness: Liveness | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """``zlayer node init``: a cluster of this one node, its state carried over from SQLite."""
        async with self._lock:
            if self.local is not None:
                raise ConflictError(f"this node is already in a cluster (node {self.local.node_id})")
            advertise = check_address(advertise)
            live = (liveness or self.liveness).check()
            ports_free(advertise, [(raft_port, "--raft-port"), (client_port, "--client-port")])
            resources = await asyncio.to_thread(self._resources)
            import uuid

            cluster_id = uuid.uuid4().hex
            cfg = LocalConfig("1", advertise, self.api_port, raft_port, client_port,
                              f"node-1={url(advertise, raft_port)}", f"zlayer-{cluster_id[:12]}",
                              tls=True)  # fmt: skip
            ca_cert, ca_key = await asyncio.to_thread(pki.make_ca, cluster_id)
            node_key = pki.new_key()
            node_cert = pki.sign_node(ca_cert, ca_key, node_key.public_key(), [advertise, "127.0.0.1"])
            crl = pki.make_crl(ca_cert, ca_key, [])
            self.tls.write(pki.cert_pem(ca_cert), pki.cert_pem(node_cert), pki.key_pem(node_key), crl)
            self._write_local(cfg)
            try:
                await self._run_etcd(cfg)
                assert self.client is not None
                key = SigningKey()
                node_os, node_arch = _platform()
                node = Node(id="1", advertise_addr=advertise, labels=check_labels(labels or {}), mode="full",
                            status="ready", role="voter", resources=resources, os=node_os,
                            arch=node_arch)  # fmt: skip
                conf = {"cluster_id": cluster_id, "created_at": _ms(), "heartbeat": live.heartbeat,
                        "dead_after": live.dead_after, "signing_key": key.seed_b64()}  # fmt: skip
                ca = {"cert": pki.cert_pem(ca_cert).decode(), "key": pki.key_pem(ca_key).decode(), "revoked": []}
                await self.client.txn([mod_is(ROOT + "config", 0)], [
                    put_op(ROOT + "config", conf), put_op(ROOT + "next-id", "1"), put_op(CA_KEY, ca),
                    put_op(CRL_KEY, crl),
                    put_op(ROOT + "nodes/1", self._record(node, raft_port, client_port,
                                                          serial=node_cert.serial_number))])  # fmt: skip
                await self._enter(cfg, "init")
            except BaseException:
                await self._undo_local()
                raise
            return {"node_id": "1", "advertise_addr": advertise, "cluster_id": cluster_id, "role": "leader",
                    "heartbeat": live.heartbeat, "dead_after": live.dead_after}  # fmt: skip

    async def _undo_local(self) -> None:
        """An init or join that failed half-way leaves this node as it was: no cluster config, no etcd data."""
        if self.etcd is not None:
            await self.etcd.stop()
            self.etcd.wipe()
        if self.client is not None:
            await self.client.close()
        self.etcd, self.client, self.local = None, None, None
        with contextlib.suppress(FileNotFoundError):
            self.config_file.unlink()
        shutil.rmtree(self.tls.directory, ignore_errors=True)

    def _resources(self) -> NodeResources:
        from zlayer.cluster.resources import detect_resources

        return detect_resources(self.data_dir)

    def _record(self, node: Node, raft_port: int, client_port: int, api_port: int | None = None,
                serial: int = 0) -> dict[str, Any]:  # fmt: skip
        """A node's record; ``cert_serial``: its etcd certificate's, revoked when the node is removed."""
        return {"node": node.model_dump(mode="json"), "api_port": api_port or self.api_port, "raft_port": raft_port,
                "client_port": client_port, "registered_at": _ms(), "cert_serial": str(serial)}  # fmt: skip

    async def join(self, leader: str | None, token: str, advertise: str, mode: str = "full",
                   labels: Mapping[str, str] | None = None, raft_port: int = RAFT_PORT,
                   client_port: int = CLIENT_PORT) -> dict[str, Any]:  # fmt: skip
        """``zlayer node join``: ask the leader to admit this node, then start this node's etcd member as a learner
        of the cluster and move the store onto it. Everything the leader can refuse is refused before this node
        changes anything; an address or port in use here is refused before the leader is asked."""
        async with self._lock:
            if self.local is not None:
                raise ConflictError(f"this node is already in a cluster (node {self.local.node_id})")
            claims, _, _ = read_token(token)
            advertise = check_address(advertise)
            if mode not in NODE_MODES:
                raise UsageError(f"mode {mode!r}: one of {', '.join(NODE_MODES)}", where="--mode")
            ports_free(advertise, [(raft_port, "--raft-port"), (client_port, "--client-port")])
            resources = await asyncio.to_thread(self._resources)
            body = {"token": token, "advertise_addr": advertise, "raft_port": raft_port, "overlay_port": 0,
                    "api_port": self.api_port, "wg_public_key": "", "mode": mode, "labels": dict(labels or {}),
                    "cpu_total": resources.cpu_cores, "memory_total": resources.memory_bytes,
                    "disk_total": resources.disk_bytes, "client_port": client_port, "os": _platform()[0],
                    "arch": _platform()[1],
                    "gpus": [g.model_dump() for g in resources.gpus]}  # fmt: skip
            pin = token_ca_pin(token)
            if not pin:
                log.warning("cluster: the join token pins no CA (one ZLayer made?): trusting the CA the admitting "
                            "node sends")  # fmt: skip
            node_key = pki.new_key()  # its private half never leaves this node: the leader signs a request for it
            body["csr"] = pki.make_csr(node_key, f"zlayer node {advertise}").decode()
            for hook in self.hooks:
                body.update(hook.join_fields())
            target = (leader or claims.api_endpoint).strip()
            base, tls = await _leader_base(target, pin)
            got = await _post(base, "/api/v1/cluster/join", body, tls, pin)
            cfg = LocalConfig(str(got["node_id"]), advertise, self.api_port, raft_port, client_port,
                              str(got["initial_cluster"]), str(got["cluster_token"]), state="existing",
                              endpoints=[str(e) for e in got.get("endpoints") or []], tls=True)  # fmt: skip
            try:
                pki.check_issued(str(got.get("ca_cert") or ""), str(got.get("cert") or ""), node_key, pin)
                self.tls.write(str(got["ca_cert"]).encode(), str(got["cert"]).encode(), pki.key_pem(node_key),
                               str(got.get("crl") or "").encode())  # fmt: skip
                self._write_local(cfg)
                await self._run_etcd(cfg)
                await self._enter(cfg, "join")
            except BaseException as e:
                await self._undo_local()
                with contextlib.suppress(ZLayerError):  # the leader forgets the node it admitted
                    await _post(base, "/api/v1/cluster/join/abort", {"token": token, "node_id": cfg.node_id}, tls, pin)
                if isinstance(e, ZLayerError):
                    e.add_context(f"node {cfg.node_id} could not start its etcd member, so it left again")
                raise
            return {"node_id": cfg.node_id, "role": got.get("role", "learner"), "leader": target}

    async def ca_bundle(self) -> dict[str, str]:
        """This node's copy of the cluster CA and its revocation list (``GET /api/v1/cluster/ca``)."""
        self.need()
        try:
            return {"ca_cert": self.tls.ca.read_text(), "crl": self.tls.crl.read_text()}
        except OSError as e:
            raise DaemonError(f"this node's cluster CA cannot be read: {e}", where=str(self.tls.directory)) from e

    async def admit(self, req: Mapping[str, Any]) -> dict[str, Any]:
        """The leader's side of a join (``POST /api/v1/cluster/join``): check the token, the address and the
        learner slot, register the node and add its etcd member as a learner, or refuse having changed nothing."""
        local, client = self.need()
        if not await self.is_leader():
            raise NotLeader(f"node {local.node_id} is not the cluster's leader: send the join to the leader at "
                            f"{await self._leader_api()}")  # fmt: skip
        conf = await self._cluster_config()
        token = str(req.get("token") or "")
        claims = SigningKey.from_b64(conf["signing_key"]).verify(token)
        if await client.get(ROOT + "tokens/revoked/" + token_hash(token)) is not None:
            raise AuthError("the join token was revoked")
        used_key = ROOT + "tokens/used/" + claims.jti
        if await client.get(used_key) is not None:
            raise AuthError("the join token was used already (a token admits one node)",
                            hint="generate one per node: zlayer node generate-join-token")  # fmt: skip
        advertise = check_address(str(req.get("advertise_addr") or ""), "advertise_addr")
        mode = str(req.get("mode") or "full")
        if mode not in NODE_MODES:
            raise UsageError(f"mode {mode!r}: one of {', '.join(NODE_MODES)}", where="mode")
        labels = check_labels(req.get("labels") or {})
        raft_port, client_port = int(req.get("raft_port") or RAFT_PORT), int(req.get("client_port") or CLIENT_PORT)
        api_port = int(req.get("api_port") or 3669)
        entries = await self.entries()
        for e in entries:
            if e.node.advertise_addr == advertise:
                raise ConflictError(
                    f"{advertise} is already the address of node {e.node.id}",
                    hint="remove that node first (zlayer node remove), or join with another address",
                )
        peer = url(advertise, raft_port)
        csr = pki.load_csr(str(req.get("csr") or ""), "csr") if req.get("csr") else None
        if csr is None:
            raise UsageError(
                "the join request carries no certificate request: the joining zlayer predates the cluster's TLS",
                where="csr",
                hint="join with the same zlayer version as the cluster's",
            )
        ca_cert, ca_key = await self._ca()
        members = await client.members()
        await self._free_learner_slot(members, entries, joining_full=mode == "full")
        resources = {"cpu_cores": float(req.get("cpu_total") or 0), "memory_bytes": int(req.get("memory_total") or 0),
                     "disk_bytes": int(req.get("disk_total") or 0), "gpus": list(req.get("gpus") or [])}  # fmt: skip
        try:
            node = Node.model_validate({"id": "0", "advertise_addr": advertise, "labels": labels, "mode": mode,
                                        "resources": resources, "os": req.get("os"),
                                        "arch": req.get("arch")})  # fmt: skip
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise UsageError(f"the join request's {where}: {first['msg']}", where=where) from None
        public = csr.public_key()
        assert isinstance(public, pki.ec.EllipticCurvePublicKey)  # load_csr refuses any other key
        cert = pki.sign_node(ca_cert, ca_key, public, [advertise, "127.0.0.1"])
        node_id = await self._register(node, used_key, raft_port, client_port, api_port, cert.serial_number)
        try:
            for hook in self.hooks:
                await hook.admitted(client, node_id, req)
        except BaseException:
            await client.delete(ROOT + f"nodes/{node_id}")
            raise
        deadline = time.monotonic() + 20.0
        while True:
            try:
                added = await client.member_add(peer, learner=True)
                break
            except EtcdError as e:
                # etcd admits a member only once every voter has been connected a while (a just-promoted one too)
                if "unhealthy cluster" in e.message and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                    continue
                # etcd 3.4 derives a new member's id from its peer URL and the second: the same address added again
                # within the second one was removed in (a join undone and tried again) gets the removed id back
                if "member not found" in e.message and time.monotonic() < deadline:
                    await asyncio.sleep(1.0)
                    continue
                await client.delete(ROOT + f"nodes/{node_id}")
                for hook in self.hooks:
                    await hook.left(client, node_id, removed=False)
                raise
        names = {url(e.node.advertise_addr, e.raft_port): f"node-{e.node.id}" for e in entries}
        names[peer] = f"node-{node_id}"
        initial = ",".join(f"{names.get(u, m.get('name') or '')}={u}" for m in added["members"]
                           for u in (m.get("peerURLs") or [])[:1])  # fmt: skip
        peers = [{"node_id": e.node.id, "raft_node_id": int(e.node.id), "advertise_addr": e.node.advertise_addr,
                  "overlay_port": 0, "raft_port": e.raft_port, "wg_public_key": "", "overlay_ip": ""}
                 for e in entries]  # fmt: skip
        endpoints = [u for m in added["members"] if not m.get("isLearner") for u in (m.get("clientURLs") or [])[:1]]
        log.info("cluster: node %s (%s, %s) joined as a learner", node_id, advertise, mode)
        return {"node_id": node_id, "raft_node_id": int(node_id), "overlay_ip": "", "slice_cidr": "", "peers": peers,
                "role": "learner", "initial_cluster": initial, "cluster_token": local.cluster_token,
                "endpoints": endpoints, "heartbeat": conf.get("heartbeat"), "dead_after": conf.get("dead_after"),
                "ca_cert": pki.cert_pem(ca_cert).decode(), "cert": pki.cert_pem(cert).decode(),
                "crl": (crl.value.decode() if (crl := await client.get(CRL_KEY)) else "")}  # fmt: skip

    async def abort(self, token: str, node_id: str) -> None:
        """A node the leader admitted could not start its member: it goes again (the member, the record), so
        nothing of it stays half-registered. The token it joined with, signed by this cluster, is what proves it."""
        _, client = self.need()
        conf = await self._cluster_config()
        claims = SigningKey.from_b64(conf["signing_key"]).verify(token, check_expiry=False)
        used = await client.get(ROOT + "tokens/used/" + claims.jti)
        if used is None or used.value.decode() != str(node_id):
            raise AuthError(f"the token did not admit node {node_id}")
        with contextlib.suppress(NotFoundError):
            entry = await self.entry(node_id)
            peer = url(entry.node.advertise_addr, entry.raft_port)
            for m in await client.members():
                if peer in (m.get("peerURLs") or []):
                    await client.member_remove(int(m["ID"]))
            await self._revoke_cert(entry.cert_serial)
        await client.txn([], [delete_op(ROOT + f"nodes/{node_id}"), delete_op(ROOT + f"alive/{node_id}")])
        for hook in self.hooks:
            await hook.left(client, node_id, removed=False)
        log.warning("cluster: node %s could not start its etcd member and was taken out again", node_id)

    async def _ca(self) -> tuple[pki.x509.Certificate, pki.ec.EllipticCurvePrivateKey]:
        """The cluster CA, from etcd (where any leader finds it)."""
        _, client = self.need()
        kv = await client.get(CA_KEY)
        if kv is None:
            raise DaemonError("this cluster has no CA in its state (made by a zlayer that predates TLS)",
                              hint="make the cluster again: zlayer node init")  # fmt: skip
        rec = kv.json()
        key = pki.serialization.load_pem_private_key(rec["key"].encode(), None)
        assert isinstance(key, pki.ec.EllipticCurvePrivateKey)
        return pki.x509.load_pem_x509_certificate(rec["cert"].encode()), key

    async def _revoke_cert(self, serial: int) -> None:
        """A removed node's certificate goes on the CA's revocation list (each node's etcd then refuses it)."""
        if not serial:
            return
        _, client = self.need()
        ca_cert, ca_key = await self._ca()
        for _ in range(32):
            kv = await client.get(CA_KEY)
            assert kv is not None
            rec = kv.json()
            revoked = sorted({*map(int, rec.get("revoked") or []), serial})
            rec["revoked"] = [str(r) for r in revoked]
            crl = pki.make_crl(ca_cert, ca_key, revoked)
            if await client.txn([mod_is(CA_KEY, kv.mod_revision)], [put_op(CA_KEY, rec), put_op(CRL_KEY, crl)]):
                self.tls.write_crl(crl)
                return
        raise EtcdError(f"{CA_KEY}: too many concurrent changes")

    async def _sync_crl(self, client: EtcdClient) -> None:
        kv = await client.get(CRL_KEY)
        if kv is not None and kv.value and self.tls.write_crl(kv.value):
            log.info("cluster: the cluster's certificate revocation list changed; this node's etcd refuses it now")

    async def _register(self, node: Node, used_key: str, raft_port: int, client_port: int, api_port: int,
                        serial: int) -> str:  # fmt: skip
        """The next node id, the node's record and the token's use, in one transaction."""
        _, client = self.need()
        for _ in range(32):
            counter = await client.get(ROOT + "next-id")
            n = int(counter.value or b"0") + 1 if counter else 1
            rec = self._record(node.model_copy(update={"id": str(n)}), raft_port, client_port, api_port, serial)
            compare = [mod_is(ROOT + "next-id", counter.mod_revision if counter else 0), mod_is(used_key, 0)]
            ok = await client.txn(compare, [put_op(ROOT + "next-id", str(n)), put_op(ROOT + f"nodes/{n}", rec),
                                            put_op(used_key, str(n))])  # fmt: skip
            if ok:
                return str(n)
            if await client.get(used_key) is not None:
                raise AuthError("the join token was used already (a token admits one node)")
        raise EtcdError("too many concurrent joins")

    async def _free_learner_slot(self, members: list[dict[str, Any]], entries: list[NodeEntry],
                                 joining_full: bool) -> None:  # fmt: skip
        """etcd 3.4 admits one learner: a learner the rule wants as a voter once this node has joined is promoted
        now; one that stays a learner (``replicate``, or the rule's even count) leaves no room, said plainly."""
        learners = [m for m in members if m.get("isLearner")]
        if not learners:
            return
        by_peer = {url(e.node.advertise_addr, e.raft_port): e for e in entries}
        learner = learners[0]
        entry = next((by_peer[u] for u in learner.get("peerURLs") or [] if u in by_peer), None)
        eligible = [e for e in entries if e.node.mode == "full" and e.node.status != "dead"]
        voters = len(members) - len(learners)
        wanted = target_voters(len(eligible) + (1 if joining_full else 0))
        if entry is not None and entry.node.mode == "full" and entry.node.status != "dead" and wanted > voters:
            await self._promote(int(learner["ID"]), wait=15.0)
            return
        who = f"node {entry.node.id}" if entry else "a member still joining"
        raise ConflictError(f"the cluster's one learner place is taken by {who}; etcd 3.4 admits one learner at a "
                            "time and the voter rule keeps it a learner",
                            hint="join another full node first, or remove that one")  # fmt: skip

    async def _promote(self, member_id: int, wait: float = 0.0) -> bool:
        _, client = self.need()
        deadline = time.monotonic() + wait
        while True:
            try:
                await client.member_promote(member_id)
                log.info("cluster: etcd member %x promoted to voter", member_id)
                return True
            except EtcdError as e:
                if time.monotonic() >= deadline:
                    if wait:
                        raise ConflictError(f"the learner cannot become a voter yet: {e.message}") from e
                    return False
            await asyncio.sleep(0.3)

    # reads ------------------------------------------------------------------------------------------------------

    async def entries(self) -> list[NodeEntry]:
        """Every node, with its role (leader/voter/learner) from etcd's membership and its status as the monitor
        last wrote it; ``last_heartbeat`` from the node's lease (when it last renewed it)."""
        _, client = self.need()

        async def membership() -> tuple[list[dict[str, Any]], int]:
            try:
                return await client.members(), await self.leader_id()
            except EtcdError:
                return [], 0

        # side by side: the scheduler reads this on every placement pass, and a deploy waits for that pass
        records, live, (members, leader) = await asyncio.gather(
            client.range(ROOT + "nodes/"), client.range(ROOT + "alive/"), membership()
        )
        alive = {kv.key.rsplit("/", 1)[1]: kv.lease for kv in live}
        role_of: dict[str, str] = {}
        for m in members:
            role = "leader" if int(m["ID"]) == leader else "learner" if m.get("isLearner") else "voter"
            for u in m.get("peerURLs") or []:
                role_of[u] = role
        leases = dict(zip(alive, await asyncio.gather(*(self._last_renewal(lease) for lease in alive.values()),
                                                     return_exceptions=True), strict=True))  # fmt: skip
        out = []
        for kv in records:
            rec = kv.json()
            node = Node.model_validate(rec["node"])
            role = role_of.get(url(node.advertise_addr, int(rec["raft_port"])), "learner")
            last = leases.get(node.id)
            out.append(NodeEntry(node.model_copy(update={"role": role}), int(rec["api_port"]), int(rec["raft_port"]),
                                 int(rec.get("registered_at") or 0), last if isinstance(last, int) else 0,
                                 role == "leader", int(rec.get("cert_serial") or 0)))  # fmt: skip
        return sorted(out, key=lambda e: int(e.node.id) if e.node.id.isdigit() else 0)

    async def dead(self) -> set[str]:
        """The ids of the nodes the leader's monitor marked dead, from their records alone: one read, where
        :meth:`entries` also asks etcd for its members, its leader and every node's lease (a deploy waiting for its
        replicas asks on each change)."""
        out = set()
        for kv in await self.need()[1].range(ROOT + "nodes/"):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                if (kv.json().get("node") or {}).get("status") == "dead":
                    out.add(kv.key.rsplit("/", 1)[1])
        return out

    async def _last_renewal(self, lease: int) -> int:
        left, granted = await self.need()[1].lease_ttl(lease)
        return _ms() - max(0, granted - left) * 1000 if left >= 0 else 0

    async def nodes(self) -> list[Node]:
        """The nodes as the scheduler's :class:`~zlayer.cluster.scheduler.ClusterState` reads them."""
        return [e.node for e in await self.entries()]

    async def entry(self, node_id: str) -> NodeEntry:
        for e in await self.entries():
            if e.node.id == str(node_id):
                return e
        raise NotFoundError(f"no node {node_id} in the cluster", where=f"node {node_id}")

    # writes on nodes --------------------------------------------------------------------------------------------

    async def _change(self, node_id: str, **update: Any) -> Node:
        _, client = self.need()
        key = ROOT + f"nodes/{node_id}"
        for _ in range(32):
            kv = await client.get(key)
            if kv is None:
                raise NotFoundError(f"no node {node_id} in the cluster", where=f"node {node_id}")
            rec = kv.json()
            node = Node.model_validate(rec["node"])
            node = node.model_copy(update=update)
            rec["node"] = node.model_dump(mode="json")
            if await client.txn([mod_is(key, kv.mod_revision)], [put_op(key, rec)]):
                return node
        raise EtcdError(f"{key}: too many concurrent changes")

    async def set_labels(self, node_id: str, labels: Mapping[str, str], remove: Sequence[str]) -> dict[str, str]:
        new = check_labels(labels)
        node = await self.entry(node_id)
        merged = {k: v for k, v in {**node.node.labels, **new}.items() if k not in set(remove)}
        return dict((await self._change(node_id, labels=merged)).labels)

    async def set_status(self, node_id: str, status: str) -> Node:
        """``undrain`` (ready): the node may be given replicas again (those that moved away stay where they run).
        A drain is :meth:`drain`."""
        return await self._change(node_id, status=status)

    async def drain(self, node_id: str, wait: float = DRAIN_WAIT) -> tuple[Node, list[tuple[Assignment, str | None]]]:
        """Mark the node ``draining`` — the leader's placement moves its replicas to ready nodes, and the node stops
        each once its replacement runs healthy there — and wait (``wait`` seconds at most) until the leader has
        placed them. Returns the node and each replica it was assigned with the node it is assigned to now: None
        when no node may take it (it waits, pending), the drained node itself when the wait ran out first."""
        where = self.assignments()
        before = {a.key: a for a in await where.assignments() if a.node_id == node_id}
        node = await self._change(node_id, status="draining")
        deadline = time.monotonic() + wait
        while True:
            now = await where.assignments()
            before.update((a.key, a) for a in now if a.node_id == node_id and a.key not in before)
            if all(a.node_id != node_id for a in now) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.2)
        to = {a.key: a.node_id for a in now}
        return node, [(a, to.get(k)) for k, a in sorted(before.items())]

    async def set_mode(self, node_id: str, mode: str) -> Node:
        if mode not in NODE_MODES:
            raise UsageError(f"mode {mode!r}: one of {', '.join(NODE_MODES)}", where="mode")
        entry = await self.entry(node_id)
        if mode == "replicate" and entry.node.role in ("leader", "voter"):
            raise ConflictError(f"node {node_id} is a voter; etcd cannot turn a voter back into a learner",
                                hint="remove the node and join it again with --mode replicate")  # fmt: skip
        return await self._change(node_id, mode=mode)

    async def remove(self, node_id: str) -> None:
        """Take a node out: its etcd member leaves the cluster, its record and liveness go."""
        local, client = self.need()
        entry = await self.entry(node_id)
        if entry.node.id == local.node_id:
            raise ConflictError(f"node {node_id} is this node: remove it from another node of the cluster")
        peer = url(entry.node.advertise_addr, entry.raft_port)
        deadline = time.monotonic() + 20.0
        for m in await client.members():
            if peer in (m.get("peerURLs") or []):
                while True:
                    try:
                        await client.member_remove(int(m["ID"]))
                        break
                    except EtcdError as e:  # etcd changes membership only once every voter has been connected a while
                        if "unhealthy cluster" not in e.message or time.monotonic() >= deadline:
                            raise
                        await asyncio.sleep(0.5)
        await self._revoke_cert(entry.cert_serial)
        await client.txn([], [delete_op(ROOT + f"nodes/{node_id}"), delete_op(ROOT + f"alive/{node_id}")])
        for hook in self.hooks:
            try:
                await hook.left(client, node_id, removed=True)
            except ZLayerError as e:
                e.add_context(f"node {node_id} left the cluster, but what it held was not taken back")
                raise

    # tokens -----------------------------------------------------------------------------------------------------

    async def issue_token(self, ttl: str | int | None = None) -> dict[str, Any]:
        local, _ = self.need()
        seconds = parse_ttl(ttl)
        conf = await self._cluster_config()
        key = SigningKey.from_b64(conf["signing_key"])
        ca_cert, _ = await self._ca()
        token, claims = key.issue(f"{local.advertise}:{local.api_port}", f"{local.advertise}:{local.raft_port}",
                                  f"node-{local.node_id}", seconds, ca_pin=pki.ca_hash(ca_cert))  # fmt: skip
        return {"token": token, "expires_at": int(claims.expires.timestamp()), "leader_endpoint": claims.api_endpoint,
                "leader_public_key": key.kid, "overlay_cidr": "", "allocated_ip": ""}  # fmt: skip

    async def revoke_token(self, token: str) -> str:
        _, client = self.need()
        digest = token_hash(token)
        await client.put(ROOT + "tokens/revoked/" + digest, str(_ms()))
        return digest

    # liveness ---------------------------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Hold this node's lease: renew it every heartbeat; when it has lapsed (a partition, etcd down a while)
        take a new one and put the ``alive`` key back, which is how a node that returns comes back by itself."""
        local, client = self.need()
        lease, said, beats = 0, False, 0
        while True:
            await self._revive(local)
            try:
                if beats % 20 == 0:
                    await self._refresh_endpoints(local, client)
                await self._sync_crl(client)
                beats += 1
                if lease == 0 or await client.lease_keepalive(lease) <= 0:
                    lease = await client.lease_grant(max(2, round(self.liveness.dead_after)))
                    await client.put(ROOT + f"alive/{local.node_id}", {"since": _ms()}, lease=lease)
                said = False
            except EtcdError as e:
                if not said:
                    log.warning("cluster: cannot renew this node's lease: %s", e)
                    said = True
            await asyncio.sleep(self.liveness.heartbeat)

    async def _revive(self, local: LocalConfig) -> None:
        """This node's etcd member ended while the daemon runs (killed, crashed): start it again on its data, at
        most every 5 s. A member the cluster removed ends again at once; that is said once, and left so."""
        etcd = self.etcd
        if etcd is None or etcd.running() or time.monotonic() < self._revive_after:
            return
        self._revive_after = time.monotonic() + 5.0
        code = etcd.proc.returncode if etcd.proc is not None else None
        tail = last_line(etcd.log_file)
        # etcd exits 0 on its own only when the cluster removed its member (a signal or a crash is not 0); with TLS
        # it logs errors only (see zlayer.cluster.etcd), so its log may not say so
        if "removed" in tail or code == 0:
            if not self._removed_said:
                log.error("cluster: this node's etcd member was removed from the cluster (exit %s: %s); join it "
                          "again with `zlayer node join` after removing %s", code, tail, self.directory)  # fmt: skip
                self._removed_said = True
            return
        log.warning("cluster: this node's etcd member exited (code %s); starting it again", code)
        try:
            fresh = await etcd.start(local.initial_cluster, local.state, local.cluster_token, timeout=10.0)
            await fresh.close()
        except ZLayerError as e:
            log.warning("cluster: etcd did not start again: %s", e)

    async def _refresh_endpoints(self, local: LocalConfig, client: EtcdClient) -> None:
        """The voters' client URLs, for the client's fail-over and for the next start of this node's member."""
        voters = [u for m in await client.members() if not m.get("isLearner") for u in (m.get("clientURLs") or [])[:1]]
        for u in voters:
            if u not in client.endpoints:
                client.endpoints.append(u)
        if voters and sorted(voters) != sorted(local.endpoints):
            local.endpoints = voters
            await asyncio.to_thread(self._write_local, local)

    async def _monitor(self) -> None:
        """On the leader: mark nodes dead or ready by their leases and promote learners the voter rule wants."""
        tick = min(1.0, self.liveness.heartbeat)
        while True:
            await asyncio.sleep(tick)
            try:
                if await self.is_leader():
                    await self.claim_leadership()
                    await self._monitor_once()
                else:
                    self._won = 0
            except ZLayerError as e:
                log.warning("cluster: monitor pass failed: %s", e)

    async def claim_leadership(self) -> int:
        """The leader writes its name to ``/zlayer/cluster/leader`` once per term and keeps the revision of that
        write: :meth:`leader_guard` makes every leader-only write conditional on it, so a node that was the leader
        (and may not know yet that it no longer is) cannot overwrite what its successor wrote."""
        local, client = self.need()
        kv = await client.get(LEADER_KEY)
        if kv is not None and kv.json().get("member") == self._member_id:
            self._won = self._won or kv.mod_revision
            return self._won
        self._won = await client.put(LEADER_KEY, {"node_id": local.node_id, "member": self._member_id,
                                                  "since": _ms()})  # fmt: skip
        log.info("cluster: node %s leads the cluster (fencing revision %d)", local.node_id, self._won)
        return self._won

    def leader_guard(self) -> list[dict[str, Any]]:
        """The comparison a leader-only write carries: the leader key unchanged since this node won it (a node
        that has not won it gets one that never holds)."""
        return [mod_is(LEADER_KEY, self._won if self._won else 1 << 62)]

    def assignments(self) -> EtcdAssignments:
        """Where replicas run (:mod:`zlayer.cluster.assignments`), written under this node's leadership."""
        return EtcdAssignments(self.need()[1], guard=self.leader_guard)

    async def _monitor_once(self) -> None:
        _, client = self.need()
        alive = {kv.key.rsplit("/", 1)[1] for kv in await client.range(ROOT + "alive/")}
        now = _ms()
        entries = await self.entries()
        for e in entries:
            n = e.node
            if n.id not in alive and n.status != "dead" and now - e.registered_at > self.liveness.dead_after * 1000:
                log.warning("cluster: node %s (%s) is dead: no heartbeat for %gs", n.id, n.advertise_addr,
                            self.liveness.dead_after)  # fmt: skip
                await self._change(n.id, status="dead")
            elif n.id in alive and n.status == "dead":
                log.info("cluster: node %s (%s) is back", n.id, n.advertise_addr)
                await self._change(n.id, status="ready")
        members = await client.members()
        learners = [m for m in members if m.get("isLearner")]
        if not learners:
            return
        eligible = [e for e in entries if e.node.mode == "full" and e.node.status != "dead"]
        if len(members) - len(learners) >= target_voters(len(eligible)):
            return
        by_peer = {url(e.node.advertise_addr, e.raft_port): e for e in eligible}
        for m in learners:
            if any(u in by_peer for u in m.get("peerURLs") or []):
                await self._promote(int(m["ID"]))

    # force-leader -----------------------------------------------------------------------------------------------

    async def force_leader(self, confirm: str) -> dict[str, Any]:
        """Disaster recovery on the last node standing: its etcd member restarts as a cluster of one with the
        state it has (``--force-new-cluster``). Refused while the cluster still has a quorum."""
        if confirm != FORCE_CONFIRM:
            raise UsageError(f"confirm must be {FORCE_CONFIRM!r}", where="confirm")
        local, client = self.need()
        async with self._lock:
            try:
                await client.call("kv/range", {"key": "AA==", "limit": "1"}, timeout=2.0)  # linearizable: a quorum
            except EtcdError:
                pass
            else:
                raise UsageError(f"the cluster still has a quorum (leader: {await self._leader_api()}); "
                                 "force-leader is for a cluster that lost it", where="force-leader")  # fmt: skip
            for t in self._tasks:
                t.cancel()
            local.force_new = True
            self._write_local(local)  # a crash from here on: the next start forces the new cluster again
            assert self.etcd is not None
            await self.etcd.stop()
            await client.close()
            await self._run_etcd(local)
            assert self.client is not None
            new = cluster_store(self.client, local.node_id)
            await self.store.switch(new)
            for hook in self.hooks:  # the hooks' etcd client went with the old member
                await hook.entered(self.client, local.node_id, "start")
            entries = await self.entries()
            for e in entries:  # the others left the membership with the old cluster: dead until they join again
                if e.node.id != local.node_id:
                    await self.client.delete(ROOT + f"alive/{e.node.id}")  # their leases came over refreshed
                    if e.node.status != "dead":
                        await self._change(e.node.id, status="dead")
            self._tasks = [asyncio.create_task(self._heartbeat(), name="zlayer-cluster-heartbeat"),
                           asyncio.create_task(self._monitor(), name="zlayer-cluster-monitor")]  # fmt: skip
            services = 0
            for d in await self.store.list_deployments():
                services += len(await self.store.list_services(d.name))
            return {
                "success": True,
                "preserved_nodes": len(entries),
                "preserved_services": services,
                "message": f"node {local.node_id} leads a cluster of one; the other nodes must join again",
            }


def cluster_store(client: EtcdClient, node_id: str) -> EtcdStore:
    """The store of a node in a cluster: the desired state (deployments, services, events) is the cluster's, under
    ``/zlayer/cluster/state/``, so a deploy on any node is the cluster's deploy; the node's containers and job runs
    are its own, under ``/zlayer/nodes/<id>/state/`` (its agent sees only what it runs)."""
    return EtcdStore(client, STATE, local=f"/zlayer/nodes/{node_id}/state/")


async def _leader_base(target: str, pin: str) -> tuple[str, ssl.SSLContext | None]:
    """Where to send a join and the TLS context that must verify its answerer. With a CA pin: ``https``, the CA the
    leader's API sends checked against the pin first (nothing secret is sent for that), then that CA alone trusted
    — so the token goes only to a holder of a certificate the pinned CA signed. Without a pin (a token ZLayer made)
    the address as given, ``http`` when it names no scheme, as ZLayer does."""
    if not pin:
        return (target if "://" in target else f"http://{target}"), None
    base = "https://" + target.split("://", 1)[-1].rstrip("/")
    where = base.removeprefix("https://")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30, sock_connect=5)) as http, \
                http.get(base + "/api/v1/cluster/ca", ssl=False) as resp:  # fmt: skip
            data = await resp.json(content_type=None)
    except aiohttp.ClientSSLError as e:
        raise DaemonError(f"the API at {where} does not answer over TLS ({e.__class__.__name__}): the join token is "
                          "not sent in plain", where=where,
                          hint="its node predates the cluster API's TLS, or another program listens there",
                          ) from e  # fmt: skip
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise DaemonError(f"cannot reach the leader at {base}: {e or type(e).__name__}", where=base) from e
    ca_pem = str(data.get("ca_cert") or "") if isinstance(data, dict) else ""
    pki.check_pinned(ca_pem, pin, where)
    return base, pki.pinned_context(ca_pem, str(data.get("crl") or "") if isinstance(data, dict) else "")


async def _post(base: str, path: str, body: dict[str, Any], tls: ssl.SSLContext | None = None,
                pin: str = "") -> dict[str, Any]:  # fmt: skip
    """A join request to the leader (over ``tls``: its certificate verified by the CA ``pin`` names before anything
    is sent); its refusal comes back as the leader said it."""
    verify: ssl.SSLContext | bool = tls if tls is not None else True
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60, sock_connect=5)) as http, \
                http.post(base.rstrip("/") + path, json=body, ssl=verify) as resp:  # fmt: skip
            data = await resp.json(content_type=None)
            status = resp.status
    except aiohttp.ClientConnectorCertificateError as e:
        where = base.split("://", 1)[-1]
        if "revoked" in str(getattr(e.certificate_error, "verify_message", "")):
            raise AuthError(f"the API at {where} presents a certificate the cluster CA revoked (a removed node's): "
                            "the join token was not sent", where=where) from e  # fmt: skip
        raise pki.not_pinned(where, pin) from e
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise DaemonError(f"cannot reach the leader at {base}: {e or type(e).__name__}", where=base) from e
    if status >= 400 or not isinstance(data, dict):
        message = data.get("message") if isinstance(data, dict) else str(data)
        err: ZLayerError = {401: AuthError(message or "refused"), 409: ConflictError(message or "conflict"),
                            400: UsageError(message or "bad request"), 404: NotFoundError(message or "not found"),
                            421: NotLeader(message or "not the leader")}.get(status) \
            or DaemonError(f"the leader answered {status}: {message}")  # fmt: skip
        err.where = base
        if isinstance(data, dict) and data.get("hint"):
            err.hint = data["hint"]
        raise err
    return data


__all__ = ["ClusterNode", "Liveness", "MembershipHook", "NodeEntry", "NotInCluster", "NotLeader", "target_voters"]
