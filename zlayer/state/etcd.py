"""The cluster Store: the :class:`~zlayer.state.Store` protocol on etcd, through etcd's v3 JSON gateway.

Why the gateway over aiohttp: etcd serves its whole v3 API (KV, transactions, leases, watches, membership,
maintenance) as JSON on its client port, so a few dozen lines of aiohttp (already a dependency) reach all of it with
the asyncio loop the daemon runs. The Python gRPC clients for etcd (``etcd3``, ``aetcd``) are unmaintained or pull in
grpcio and protobuf builds for little gain here: the daemon's traffic to etcd is small (state changes, one lease
keep-alive per heartbeat, a few watches).

Every change of several keys is one etcd transaction guarded by the revision it read (compare-and-swap, retried on a
conflict), so a daemon killed at any moment leaves a deployment with its revision and service rows, or neither; every
acknowledged write is on a quorum of the cluster's members. A node's store lives under a key prefix of its own, so the
agents of the cluster's nodes never see each other's replicas as theirs.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import ssl as ssl_
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp

from zlayer.state.protocol import (
    ContainerRecord,
    CronRecord,
    DeploymentRecord,
    EventRecord,
    JobExecutionRecord,
    ServiceRecord,
    Store,
)
from zlayer.state.sqlite import StateError, now_rfc3339

log = logging.getLogger("zlayer.state.etcd")

_RETRIES = 32  # compare-and-swap attempts before a write under contention gives up
_EVENT_BATCH = 64  # events one transaction writes at most (well within the members' --max-txn-ops)


class EtcdError(StateError):
    """etcd could not be reached, or refused a request: the cluster's state cannot be read or written now."""

    code = "etcd_unavailable"
    http_status = 503


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(data: str | None) -> bytes:
    return base64.b64decode(data) if data else b""


def prefix_end(prefix: str) -> str:
    """The ``range_end`` that makes a range cover every key starting with ``prefix`` (etcd's rule)."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return _b64(bytes(raw))
        raw.pop()
    return _b64(b"\x00")


@dataclasses.dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int = 0

    def json(self) -> Any:
        return json.loads(self.value)


@dataclasses.dataclass(frozen=True)
class TxnResult:
    """What a transaction answered: whether its comparisons held, the store's revision after it (the mod revision
    of what it wrote), and the keys each of its reads found, in order."""

    succeeded: bool
    revision: int
    reads: list[list[KeyValue]]


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        _unb64(raw.get("key")).decode(),
        _unb64(raw.get("value")),
        int(raw.get("mod_revision") or 0),
        int(raw.get("create_revision") or 0),
        int(raw.get("lease") or 0),
    )


def put_op(key: str, value: str | bytes | Any, lease: int = 0) -> dict[str, Any]:
    """One put of a transaction; a value that is not text or bytes is stored as JSON."""
    data = value if isinstance(value, str | bytes) else json.dumps(value)
    op: dict[str, Any] = {"key": _b64(key), "value": _b64(data)}
    if lease:
        op["lease"] = str(lease)
    return {"request_put": op}


def delete_op(key: str, prefix: bool = False) -> dict[str, Any]:
    op = {"key": _b64(key)}
    if prefix:
        op["range_end"] = prefix_end(key)
    return {"request_delete_range": op}


def range_op(key: str) -> dict[str, Any]:
    """One read of ``key`` in a transaction (its failure branch: what the compare found, without another request)."""
    return {"request_range": {"key": _b64(key)}}


def mod_is(key: str, revision: int) -> dict[str, Any]:
    """Compare: ``key`` was last changed at ``revision`` (0: ``key`` does not exist)."""
    if revision == 0:
        return {"key": _b64(key), "target": "VERSION", "result": "EQUAL", "version": "0"}
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def exists(key: str) -> dict[str, Any]:
    """Compare: ``key`` exists."""
    return {"key": _b64(key), "target": "VERSION", "result": "GREATER", "version": "0"}


class EtcdClient:
    """etcd's v3 API over its JSON gateway, with fail-over between the given client URLs."""

    def __init__(self, endpoints: Sequence[str], timeout: float = 5.0, stale_reads: bool = True,
                 ssl: ssl_.SSLContext | None = None) -> None:  # fmt: skip
        if not endpoints:
            raise EtcdError("no etcd endpoint to talk to")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.local = self.endpoints[0]  # the node's own member, where a read of the last known state is served
        self.timeout = timeout
        self.stale_reads = stale_reads
        self._stale_until = 0.0
        self._session: aiohttp.ClientSession | None = None
        self.ssl = ssl  # a cluster's etcd: the node's certificate, and only the cluster's CA trusted

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=2.0),
                connector=aiohttp.TCPConnector(ssl=self.ssl) if self.ssl is not None else None,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self, path: str, body: dict[str, Any], timeout: float | None = None, endpoints: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>`` on the first endpoint that answers; etcd's refusal is an EtcdError."""
        last = ""
        for i, endpoint in enumerate(list(endpoints or self.endpoints)):
            url = f"{endpoint}/v3/{path}"
            try:
                async with self._http().post(
                    url, json=body, timeout=aiohttp.ClientTimeout(total=timeout or self.timeout)
                ) as resp:
                    data = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                last = f"{endpoint}: {type(e).__name__} {e}".rstrip()
                continue
            if resp.status >= 400 or not isinstance(data, dict) or "error" in data:
                message = data.get("message") or data.get("error") if isinstance(data, dict) else str(data)
                if "not supported for learner" in str(message) or "no leader" in str(message):
                    last = f"{endpoint}: {message}"  # a learner serves no reads or writes: another member does
                    continue
                raise EtcdError(f"etcd refused {path}: {message}", where=endpoint)
            if i and endpoints is None:  # stick to the endpoint that answered
                self.endpoints.insert(0, self.endpoints.pop(i))
            return data
        raise EtcdError(f"etcd does not answer ({last})", where=", ".join(self.endpoints))

    # KV -------------------------------------------------------------------------------------------------------

    async def _read(self, body: dict[str, Any]) -> dict[str, Any]:
        """A range read: linearizable (what a quorum agrees on) while the cluster has one; without one (a minority
        partition, the others down) the last state this node's member knows, so reads still answer. Writes fail."""
        recent = time.monotonic() < self._stale_until  # the last linearizable read failed: try briefly
        try:
            return await self.call("kv/range", body, timeout=1.0 if recent else None)
        except EtcdError:
            if not self.stale_reads:
                raise
            self._stale_until = time.monotonic() + 2.0  # the next reads go to the local member at once
            return await self._serializable(body)

    async def _serializable(self, body: dict[str, Any]) -> dict[str, Any]:
        others = [e for e in self.endpoints if e != self.local]
        return await self.call("kv/range", {**body, "serializable": True}, endpoints=[self.local, *others])

    async def get(self, key: str) -> KeyValue | None:
        got = await self._read({"key": _b64(key)})
        kvs = got.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    async def range(self, prefix: str, limit: int = 0, start: str = "") -> list[KeyValue]:
        """Every key under ``prefix``, in key order (from ``start`` on, when given: a key under ``prefix``)."""
        body: dict[str, Any] = {"key": _b64(start or prefix), "range_end": prefix_end(prefix)}
        if limit:
            body["limit"] = str(limit)
        got = await self._read(body)
        return [_kv(kv) for kv in got.get("kvs") or []]

    async def revision(self) -> int:
        got = await self.call("kv/range", {"key": _b64("\x00"), "limit": "1"})
        return int(got.get("header", {}).get("revision") or 0)

    async def put(self, key: str, value: str | bytes | Any, lease: int = 0) -> int:
        got = await self.call("kv/put", put_op(key, value, lease)["request_put"])
        return int(got.get("header", {}).get("revision") or 0)

    async def delete(self, key: str, prefix: bool = False) -> int:
        got = await self.call("kv/deleterange", delete_op(key, prefix)["request_delete_range"])
        return int(got.get("deleted") or 0)

    async def txn(
        self, compare: list[dict[str, Any]], success: list[dict[str, Any]], failure: list[dict[str, Any]] | None = None
    ) -> bool:
        """One transaction: ``success`` when every comparison holds, else ``failure``. True when it succeeded."""
        return (await self.txn_result(compare, success, failure)).succeeded

    async def txn_result(
        self, compare: list[dict[str, Any]], success: list[dict[str, Any]], failure: list[dict[str, Any]] | None = None
    ) -> TxnResult:
        """:meth:`txn` with what it answered: the store's revision after it and what its reads (:func:`range_op`)
        found."""
        body = {"compare": compare, "success": success, "failure": failure or []}
        got = await self.call("kv/txn", body)
        reads = [[_kv(kv) for kv in (r["response_range"].get("kvs") or [])]
                 for r in got.get("responses") or [] if "response_range" in r]  # fmt: skip
        return TxnResult(bool(got.get("succeeded")), int(got.get("header", {}).get("revision") or 0), reads)

    # leases ---------------------------------------------------------------------------------------------------

    async def lease_grant(self, ttl: int) -> int:
        got = await self.call("lease/grant", {"TTL": str(ttl)})
        return int(got["ID"])

    async def lease_keepalive(self, lease: int) -> int:
        """Renew ``lease``; its TTL now, 0 when it has expired (or never was)."""
        got = await self.call("lease/keepalive", {"ID": str(lease)})
        return int(got.get("result", {}).get("TTL") or 0)

    async def lease_revoke(self, lease: int) -> None:
        await self.call("kv/lease/revoke", {"ID": str(lease)})

    async def lease_ttl(self, lease: int) -> tuple[int, int]:
        """``(ttl left, granted ttl)`` of ``lease``; ttl left is -1 once it has expired."""
        got = await self.call("kv/lease/timetolive", {"ID": str(lease)})
        return int(got.get("TTL") or -1), int(got.get("grantedTTL") or 0)

    # cluster --------------------------------------------------------------------------------------------------

    async def status(self, timeout: float | None = None) -> dict[str, Any]:
        """The answering member's status: its ``header.member_id``, the ``leader``'s id, ``isLearner``..."""
        return await self.call("maintenance/status", {}, timeout=timeout)

    async def members(self) -> list[dict[str, Any]]:
        got = await self.call("cluster/member/list", {})
        return list(got.get("members") or [])

    async def member_add(self, peer_url: str, learner: bool) -> dict[str, Any]:
        got = await self.call("cluster/member/add", {"peerURLs": [peer_url], "isLearner": learner})
        return {"member": got.get("member") or {}, "members": got.get("members") or []}

    async def member_promote(self, member_id: int) -> None:
        await self.call("cluster/member/promote", {"ID": str(member_id)})

    async def member_remove(self, member_id: int) -> None:
        await self.call("cluster/member/remove", {"ID": str(member_id)})

    async def watch(self, prefix: str, start_revision: int = 0) -> AsyncIterator[tuple[str, KeyValue]]:
        """``("PUT"|"DELETE", kv)`` for every change under ``prefix`` from ``start_revision`` (0: from now on), until
        the caller stops iterating. A broken stream is an EtcdError (the caller resumes from the last revision)."""
        create: dict[str, Any] = {"key": _b64(prefix), "range_end": prefix_end(prefix)}
        if start_revision:
            create["start_revision"] = str(start_revision)
        last = ""
        for endpoint in list(self.endpoints):
            try:
                async with self._http().post(
                    f"{endpoint}/v3/watch",
                    json={"create_request": create},
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=2.0, sock_read=None),
                ) as resp:
                    async for line in resp.content:
                        if not line.strip():
                            continue
                        result = json.loads(line).get("result") or {}
                        if result.get("canceled"):
                            raise EtcdError(f"etcd cancelled the watch of {prefix}: {result.get('cancel_reason')}")
                        for ev in result.get("events") or []:
                            yield ev.get("type", "PUT"), _kv(ev.get("kv") or {})
                    return
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                last = f"{endpoint}: {type(e).__name__} {e}"
        raise EtcdError(f"etcd watch failed ({last})", where=", ".join(self.endpoints))


def _record(cls: type[Any], data: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


class EtcdStore:
    """:class:`zlayer.state.Store` on etcd, every key under ``prefix`` (a node's own: ``/zlayer/nodes/<id>/state/``).

    Keys: ``d/<deployment>`` (revision, status, times), ``r/<deployment>/<revision>`` (spec),
    ``s/<deployment>/<service>``, ``c/<container>``, ``j/<execution>``, ``cr/<deployment>/<cron>``, ``e/<seq>``
    (events), ``seq/<counter>``."""

    def __init__(self, client: EtcdClient, prefix: str, local: str | None = None) -> None:
        self.client = client
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        # a cluster-wide store (``local`` given): deployments, services, cron and events are the cluster's, under
        # ``prefix``; containers and job runs are this node's, under ``local`` (every node's: ``all_containers``)
        self.local = (local if local.endswith("/") else local + "/") if local else self.prefix
        self._counters: dict[str, tuple[int, int]] = {}  # counter key → (value, mod revision) as last seen here
        self._events: list[tuple[dict[str, Any], asyncio.Future[int]]] = []  # added, waiting for the next batch
        self._event_writer: asyncio.Task[None] | None = None

    def _k(self, *parts: str | int) -> str:
        return self.prefix + "/".join(f"{p:010d}" if isinstance(p, int) else p for p in parts)

    def _l(self, *parts: str) -> str:
        """A key of this node's own part (containers, job runs, the migration marker)."""
        return self.local + "/".join(parts)

    async def _update(self, key: str, change: Any) -> bool:
        """Read-modify-write of one JSON value under compare-and-swap; False when ``key`` does not exist."""
        for _ in range(_RETRIES):
            kv = await self.client.get(key)
            if kv is None:
                return False
            data = kv.json()
            change(data)
            if await self.client.txn([mod_is(key, kv.mod_revision)], [put_op(key, data)]):
                return True
        raise EtcdError(f"{key}: too many concurrent changes")

    async def _next(self, counter: str, ops: Any, count: int = 1) -> int:
        """Bump counter ``seq/<counter>`` by ``count`` and apply ``ops(n)`` in the same transaction; returns ``n``,
        the first of the ``count`` numbers taken. One request when nobody else bumped it since this store last did
        (the value and revision it wrote are kept); a lost compare reads the counter in the same request."""
        key = self._k("seq", counter)
        known = self._counters.get(key)
        for _ in range(_RETRIES):
            if known is None:
                kv = await self.client.get(key)
                known = (int(kv.value or b"0"), kv.mod_revision) if kv else (0, 0)
            n = known[0] + 1
            last = n + count - 1
            got = await self.client.txn_result([mod_is(key, known[1])], [put_op(key, str(last)), *ops(n)],
                                               [range_op(key)])  # fmt: skip
            if got.succeeded:
                self._counters[key] = (last, got.revision)
                return n
            found = got.reads[0] if got.reads else []
            known = (int(found[0].value or b"0"), found[0].mod_revision) if found else (0, 0)
        self._counters.pop(key, None)
        raise EtcdError(f"{key}: too many concurrent changes")

    # deployments ----------------------------------------------------------------------------------------------

    async def put_deployment(
        self, name: str, spec_yaml: str, spec: dict[str, Any], services: list[ServiceRecord], status: str = "pending"
    ) -> DeploymentRecord:
        key = self._k("d", name)
        for _ in range(_RETRIES):
            ts = now_rfc3339()
            kv = await self.client.get(key)
            old = kv.json() if kv else {}
            revision = int(old.get("revision", 0)) + 1
            created = old.get("created_at") or ts
            rec = {"name": name, "revision": revision, "status": status, "status_message": "", "created_at": created,
                   "updated_at": ts}  # fmt: skip
            existing = {kv2.key: kv2 for kv2 in await self.client.range(self._k("s", name) + "/")}
            keep = {self._k("s", name, s.name) for s in services}
            ops = [put_op(key, rec), put_op(self._k("r", name, revision), {"spec_yaml": spec_yaml, "spec": spec,
                                                                           "created_at": ts})]  # fmt: skip
            ops += [delete_op(k) for k in existing if k not in keep]
            compare = [mod_is(key, kv.mod_revision if kv else 0)]
            for s in services:
                skey = self._k("s", name, s.name)
                row = dataclasses.asdict(s)
                if skey in existing:  # status stays, as SQLite's upsert keeps it
                    prev = existing[skey].json()
                    row["status"], row["status_message"] = prev.get("status", s.status), prev.get("status_message", "")
                    compare.append(mod_is(skey, existing[skey].mod_revision))
                else:
                    compare.append(mod_is(skey, 0))
                ops.append(put_op(skey, row))
            if await self.client.txn(compare, ops):
                return DeploymentRecord(name, spec_yaml, spec, revision, status, "", created, ts)
        raise EtcdError(f"deployment {name}: too many concurrent changes")

    async def _deployment(self, row: dict[str, Any]) -> DeploymentRecord:
        rev = await self.client.get(self._k("r", row["name"], int(row["revision"])))
        spec = rev.json() if rev else {}
        return DeploymentRecord(row["name"], spec.get("spec_yaml", ""), spec.get("spec") or {}, int(row["revision"]),
                                row["status"], row.get("status_message", ""), row.get("created_at", ""),
                                row.get("updated_at", ""))  # fmt: skip

    async def get_deployment(self, name: str) -> DeploymentRecord | None:
        kv = await self.client.get(self._k("d", name))
        return await self._deployment(kv.json()) if kv else None

    async def list_deployments(self) -> list[DeploymentRecord]:
        rows = sorted((kv.json() for kv in await self.client.range(self._k("d", ""))), key=lambda r: r["name"])
        return list(await asyncio.gather(*(self._deployment(r) for r in rows)))

    async def list_revisions(self, name: str) -> list[tuple[int, str, str]]:
        out = []
        for kv in await self.client.range(self._k("r", name) + "/"):
            data = kv.json()
            out.append((int(kv.key.rsplit("/", 1)[1]), data.get("created_at", ""), data.get("spec_yaml", "")))
        return out

    async def set_deployment_status(self, name: str, status: str, message: str = "") -> None:
        def change(d: dict[str, Any]) -> None:
            d.update(status=status, status_message=message, updated_at=now_rfc3339())

        await self._update(self._k("d", name), change)

    async def delete_deployment(self, name: str) -> bool:
        containers = [c.id for c in await self.list_containers(deployment=name)]
        ops = [
            delete_op(self._k("d", name)),
            delete_op(self._k("r", name) + "/", prefix=True),
            delete_op(self._k("s", name) + "/", prefix=True),
            delete_op(self._k("cr", name) + "/", prefix=True),
        ]
        ops += [delete_op(self._l("c", cid)) for cid in containers]  # fmt: skip
        existed = await self.client.get(self._k("d", name)) is not None
        await self.client.txn([], ops)
        return existed

    # services -------------------------------------------------------------------------------------------------

    async def list_services(self, deployment: str) -> list[ServiceRecord]:
        return [_record(ServiceRecord, kv.json()) for kv in await self.client.range(self._k("s", deployment) + "/")]

    async def scale_view(self, deployment: str) -> tuple[str, dict[str, int]] | None:
        kv = await self.client.get(self._k("d", deployment))
        if kv is None:
            return None
        services = [s.json() for s in await self.client.range(self._k("s", deployment) + "/")]
        return kv.json()["status"], {s["name"]: int(s.get("desired_replicas", 1)) for s in services}

    async def get_service(self, deployment: str, name: str) -> ServiceRecord | None:
        kv = await self.client.get(self._k("s", deployment, name))
        return _record(ServiceRecord, kv.json()) if kv else None

    async def set_service_desired(self, deployment: str, name: str, replicas: int) -> None:
        await self._update(self._k("s", deployment, name), lambda s: s.update(desired_replicas=replicas))

    async def set_service_status(self, deployment: str, name: str, status: str, message: str = "") -> None:
        await self._update(self._k("s", deployment, name), lambda s: s.update(status=status, status_message=message))

    # containers -----------------------------------------------------------------------------------------------

    async def put_container(self, record: ContainerRecord) -> None:
        ts = now_rfc3339()
        record.updated_at = ts
        record.created_at = record.created_at or ts
        await self.client.put(self._l("c", record.id), dataclasses.asdict(record))

    async def get_container(self, container_id: str) -> ContainerRecord | None:
        kv = await self.client.get(self._l("c", container_id))
        return _record(ContainerRecord, kv.json()) if kv else None

    async def list_containers(self, deployment: str | None = None, service: str | None = None) -> list[ContainerRecord]:
        out = [_record(ContainerRecord, kv.json()) for kv in await self.client.range(self._l("c", ""))]
        out = [c for c in out if deployment in (None, c.deployment) and service in (None, c.service)]
        return sorted(out, key=lambda c: (c.deployment, c.service, c.replica))

    async def delete_container(self, container_id: str) -> None:
        await self.client.delete(self._l("c", container_id))

    async def all_containers(self, nodes_root: str = "/zlayer/nodes/") -> list[tuple[str, ContainerRecord]]:
        """``(node id, record)`` of every node's containers (a cluster-wide store: each node keeps its own under
        ``/zlayer/nodes/<id>/state/c/``), ordered by deployment, service and replica."""
        out = []
        for kv in await self.client.range(nodes_root):
            node, sep, rest = kv.key.removeprefix(nodes_root).partition("/state/c/")
            if sep and rest and "/" not in node:
                out.append((node, _record(ContainerRecord, kv.json())))
        return sorted(out, key=lambda nc: (nc[1].deployment, nc[1].service, nc[1].replica, nc[0]))

    # jobs and cron --------------------------------------------------------------------------------------------

    async def put_job_execution(self, record: JobExecutionRecord) -> None:
        await self.client.put(self._l("j", record.id), dataclasses.asdict(record))

    async def get_job_execution(self, execution_id: str) -> JobExecutionRecord | None:
        kv = await self.client.get(self._l("j", execution_id))
        return _record(JobExecutionRecord, kv.json()) if kv else None

    async def list_job_executions(
        self, job_name: str | None = None, deployment: str | None = None, limit: int = 100
    ) -> list[JobExecutionRecord]:
        kvs = sorted(await self.client.range(self._l("j", "")), key=lambda kv: kv.create_revision, reverse=True)
        out = [_record(JobExecutionRecord, kv.json()) for kv in kvs]
        return [r for r in out if job_name in (None, r.job_name) and deployment in (None, r.deployment)][:limit]

    async def put_cron(self, record: CronRecord) -> None:
        await self.client.put(self._k("cr", record.deployment, record.name), dataclasses.asdict(record))

    async def list_cron(self, deployment: str | None = None) -> list[CronRecord]:
        prefix = self._k("cr", deployment) + "/" if deployment is not None else self._k("cr", "")
        return [_record(CronRecord, kv.json()) for kv in await self.client.range(prefix)]

    async def delete_cron(self, deployment: str, name: str) -> None:
        await self.client.delete(self._k("cr", deployment, name))

    # events ---------------------------------------------------------------------------------------------------

    async def add_event(self, deployment: str, kind: str, message: str, data: dict[str, Any] | None = None) -> int:
        """Append an event; returns its number. A node's events are written in batches, in the order added: those
        added while a batch is on its way go together in the next, one transaction taking as many numbers of the
        cluster's counter. Each event was its own compare-and-swap of that counter before, so thirty replicas
        starting on each of three nodes raced one another for it, most attempts lost, and a replica's start
        (which waits for its ``replica_started``) took seconds longer in a cluster than alone."""
        event = {"deployment": deployment, "kind": kind, "message": message, "timestamp": now_rfc3339(),
                 "data": data or {}}  # fmt: skip
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._events.append((event, done))
        if self._event_writer is None or self._event_writer.done():
            self._event_writer = asyncio.create_task(self._write_events(), name="zlayer-etcd-events")
        return await done

    async def _write_events(self) -> None:
        while self._events:
            batch, self._events = self._events[:_EVENT_BATCH], self._events[_EVENT_BATCH:]

            def ops(n: int, batch: list[tuple[dict[str, Any], asyncio.Future[int]]] = batch) -> list[dict[str, Any]]:
                return [put_op(self._k("e", n + i), {"seq": n + i, **ev}) for i, (ev, _) in enumerate(batch)]

            try:
                first = await self._next("events", ops, len(batch))
            except asyncio.CancelledError:  # the store is closing: nothing more is written
                for _, done in batch + self._events:
                    done.cancel()
                raise
            except Exception as e:  # these adds fail with it; the next batch tries again
                for _, done in batch:
                    if not done.done():
                        done.set_exception(e)
                continue
            for i, (_, done) in enumerate(batch):
                if not done.done():  # (an add whose caller was cancelled meanwhile: written all the same)
                    done.set_result(first + i)

    async def list_events(self, deployment: str, after: int = 0, limit: int = 1000) -> list[EventRecord]:
        # from the first key after ``after`` (keys are ``e/<seq>``, zero-padded): a follower reads only what is new
        events = [
            _record(EventRecord, kv.json())
            for kv in await self.client.range(self._k("e", ""), start=self._k("e", after + 1))
        ]
        return [e for e in events if e.deployment == deployment and e.seq > after][:limit]

    # the store's own --------------------------------------------------------------------------------------------

    async def watch(self, start_revision: int = 0) -> AsyncIterator[tuple[str, KeyValue]]:
        """Every change of this store from ``start_revision`` on (see :meth:`EtcdClient.watch`)."""
        async for event in self.client.watch(self.prefix, start_revision):
            yield event

    async def copy_from(self, source: Store) -> int:
        """Carry a node's state over from ``source`` (its SQLite store, when it joins or starts a cluster): every
        deployment with its revisions, services, containers, jobs, cron jobs and events, so nothing is redeployed.
        Runs once: the marker key ``migrated`` is written last, and a copy cut short is done again whole (every write
        is a put of the same value). Returns the number of deployments copied."""
        marker = self._l("migrated")
        if await self.client.get(marker) is not None:
            return 0
        ops: list[dict[str, Any]] = []
        # events already there (a cluster this node joins): the node's own go after them, renumbered
        held = await self.client.get(self._k("seq", "events"))
        offset = int(held.value or b"0") if held else 0
        deployments = await source.list_deployments()
        for d in deployments:
            ops.append(put_op(self._k("d", d.name), {"name": d.name, "revision": d.revision, "status": d.status,
                                                     "status_message": d.status_message, "created_at": d.created_at,
                                                     "updated_at": d.updated_at}))  # fmt: skip
            for rev, created, spec_yaml in await source.list_revisions(d.name):
                spec = d.spec if rev == d.revision else {}
                ops.append(put_op(self._k("r", d.name, rev), {"spec_yaml": spec_yaml, "spec": spec,
                                                              "created_at": created}))  # fmt: skip
            for s in await source.list_services(d.name):
                ops.append(put_op(self._k("s", d.name, s.name), dataclasses.asdict(s)))
            last = 0
            for e in await source.list_events(d.name, limit=1_000_000):
                e.seq += offset
                ops.append(put_op(self._k("e", e.seq), dataclasses.asdict(e)))
                last = max(last, e.seq)
            if last:
                ops.append(put_op(self._k("seq", "events"), str(last)))
        for c in await source.list_containers():
            ops.append(put_op(self._l("c", c.id), dataclasses.asdict(c)))
        for j in reversed(await source.list_job_executions(limit=1_000_000)):
            ops.append(put_op(self._l("j", j.id), dataclasses.asdict(j)))
        for cr in await source.list_cron():
            ops.append(put_op(self._k("cr", cr.deployment, cr.name), dataclasses.asdict(cr)))
        # the event counter must end at the highest seq of all deployments: keep the largest put
        seqs = [int(_unb64(o["request_put"]["value"])) for o in ops if o["request_put"]["key"] == _b64(
            self._k("seq", "events"))]  # fmt: skip
        ops = [o for o in ops if o["request_put"]["key"] != _b64(self._k("seq", "events"))]
        if seqs:
            ops.append(put_op(self._k("seq", "events"), str(max(seqs))))
        for i in range(0, len(ops), 100):
            await self.client.txn([], ops[i : i + 100])
        await self.client.put(marker, now_rfc3339())
        return len(deployments)

    async def close(self) -> None:
        if self._event_writer is not None:
            self._event_writer.cancel()
        await self.client.close()


__all__ = [
    "EtcdClient",
    "EtcdError",
    "EtcdStore",
    "KeyValue",
    "TxnResult",
    "delete_op",
    "exists",
    "mod_is",
    "prefix_end",
    "put_op",
    "range_op",
]
