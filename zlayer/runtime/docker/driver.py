"""The Docker workload driver: the node's containers run by an existing ``dockerd`` (``--runtime docker``, or where
the native runtime cannot run: no cgroup v2, no overlayfs), through the Engine API on its unix socket.

It implements the whole :class:`~zlayer.runtime.protocol.Runtime` interface. A container is named
``zl-<node tag>-<container id>`` and labelled ``zlayer.container``/``zlayer.node``, so a restarted daemon finds (and
re-adopts) exactly its own. When the node's network runs, containers are created with ``NetworkMode: none`` and the
node plumbs its own veth into the network namespace dockerd made, so they get the same addresses, isolation, DNS and
port mappings as the native runtime's; on the host network they share the host's. Images come from dockerd's
registries (``pull``), as dockerd pulls them.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import json
import os
import struct
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from zlayer.errors import ConflictError, ImageError, NotFoundError, RuntimeFailure, UsageError
from zlayer.runtime.protocol import (
    ContainerId,
    ContainerInfo,
    ContainerState,
    ContainerStats,
    ContainerUsage,
    ExecResult,
    ExecSession,
    FileChange,
    LogLine,
    PathStat,
    ProcessInfo,
    Stream,
)

if TYPE_CHECKING:
    from zlayer.spec.models import ServiceSpec

DEFAULT_SOCKET = "/var/run/docker.sock"
API = "/v1.41"  # Docker 20.10's, which every dockerd since serves
_STREAMS: dict[int, Stream] = {1: "stdout", 2: "stderr"}


def docker_socket() -> str:
    """``DOCKER_HOST`` (``unix://PATH``) or Docker's default socket."""
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        return host[len("unix://") :]
    if host:
        raise UsageError(f"DOCKER_HOST={host!r}: the docker runtime talks to a local dockerd on a unix socket",
                         where="DOCKER_HOST")  # fmt: skip
    return DEFAULT_SOCKET


def demux(data: bytes) -> list[tuple[Stream, bytes]]:
    """Docker's multiplexed stream: [stream, 0, 0, 0, size] frames."""
    out: list[tuple[Stream, bytes]] = []
    i = 0
    while i + 8 <= len(data):
        kind, size = struct.unpack(">BxxxI", data[i : i + 8])
        out.append((_STREAMS.get(kind, "stdout"), data[i + 8 : i + 8 + size]))
        i += 8 + size
    return out


async def _frames(content: Any) -> AsyncIterator[tuple[Stream, bytes]]:
    while True:
        try:
            head = await content.readexactly(8)
        except asyncio.IncompleteReadError:
            return
        kind, size = struct.unpack(">BxxxI", head)
        yield _STREAMS.get(kind, "stdout"), await content.readexactly(size)


class DockerError(RuntimeFailure):
    pass


class DockerRuntime:
    """Containers run by the dockerd answering on ``socket``."""

    name = "docker"
    host_network = False  # each container has a network namespace of its own (dockerd's), the node plumbs it

    def __init__(self, data_dir: Path, socket: str | None = None) -> None:
        self.socket = socket or docker_socket()
        self.node_tag = hashlib.sha256(str(Path(data_dir).absolute()).encode()).hexdigest()[:8]
        self._session: Any = None

    # ------------------------------------------------------------------------------------------ transport

    async def _http(self) -> Any:
        import aiohttp

        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
            self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.socket), timeout=timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(self, method: str, path: str, *, body: Any = None, raw: bytes | None = None,
                    ok: tuple[int, ...] = (200, 201, 204, 304), what: str = "") -> Any:  # fmt: skip
        import aiohttp

        session = await self._http()
        try:
            async with session.request(method, f"http://docker{API}{path}", json=body, data=raw,
                                       headers={"Content-Type": "application/x-tar"} if raw is not None else None,
                                       ) as resp:  # fmt: skip
                data = await resp.read()
                if resp.status not in ok:
                    self._fail(resp.status, data, what or f"{method} {path}")
                if not data or resp.content_type not in ("application/json", ""):
                    return data
                try:
                    return json.loads(data)
                except ValueError:
                    return data
        except aiohttp.ClientConnectionError as e:
            raise RuntimeFailure(f"dockerd at {self.socket} cannot be reached: {e}", where=self.socket,
                                 hint="is dockerd running? (--runtime docker talks to it)") from e  # fmt: skip

    @staticmethod
    def _fail(status: int, data: bytes, what: str) -> None:
        try:
            msg = json.loads(data).get("message", "")
        except (ValueError, AttributeError):
            msg = data.decode(errors="replace")
        if status == 404:
            raise NotFoundError(f"{what}: {msg}")
        if status == 409:
            raise ConflictError(f"{what}: {msg}")
        if status == 400:
            raise UsageError(f"{what}: {msg}")
        raise RuntimeFailure(f"{what}: dockerd answered {status}: {msg}")

    def _name(self, cid: ContainerId | str) -> str:
        return f"zl-{self.node_tag}-{cid}"

    # ------------------------------------------------------------------------------------------ images

    async def pull(self, image: str, *, policy: str = "if_not_present") -> None:
        have = True
        try:
            await self._call("GET", f"/images/{quote(image, safe='')}/json", what=f"image {image}")
        except NotFoundError:
            have = False
        if have and policy in ("if_not_present", "never"):
            return
        if policy == "never":
            raise ImageError(f"image {image} is not in dockerd's store and pull_policy is never", where=image)
        repo, tag = image, "latest"
        last = image.rsplit("/", 1)[-1]
        if "@" in image:
            repo, tag = image.split("@", 1)
        elif ":" in last:
            repo, tag = image.rsplit(":", 1)
        session = await self._http()
        async with session.post(f"http://docker{API}/images/create",
                                params={"fromImage": repo, "tag": tag}) as resp:  # fmt: skip
            if resp.status != 200:
                self._fail(resp.status, await resp.read(), f"pull {image}")
            async for line in resp.content:
                with contextlib.suppress(ValueError):
                    doc = json.loads(line)
                    if isinstance(doc, dict) and doc.get("error"):
                        raise ImageError(f"pull {image} (dockerd): {doc['error']}", where=image)

    # ------------------------------------------------------------------------------------------ lifecycle

    def _create_body(self, cid: ContainerId, spec: ServiceSpec, dns: Sequence[str]) -> dict[str, Any]:
        host: dict[str, Any] = {"NetworkMode": "host" if spec.uses_host_network else "none",
                                "Privileged": spec.privileged, "ReadonlyRootfs": spec.read_only_root_fs,
                                "CapAdd": list(spec.capabilities) or None, "CapDrop": list(spec.cap_drop) or None,
                                "Dns": [*dns, *spec.dns] or None, "ExtraHosts": list(spec.extra_hosts) or None,
                                "Init": bool(spec.init_container)}  # fmt: skip
        res = spec.resources
        if res.memory:
            from zlayer.spec.scalars import parse_size

            host["Memory"] = parse_size(res.memory)
        if res.cpu:
            host["NanoCpus"] = int(res.cpu * 1e9)
        if res.pids_limit:
            host["PidsLimit"] = res.pids_limit
        binds, mounts = [], []
        for s in spec.storage:
            if s.type == "bind":
                binds.append(f"{s.source}:{s.target}{':ro' if s.readonly else ''}")
            elif s.type == "named":
                binds.append(f"zl-{self.node_tag}-{s.name}:{s.target}{':ro' if s.readonly else ''}")
            elif s.type == "tmpfs":
                mounts.append({"Type": "tmpfs", "Target": s.target})
            elif s.type == "anonymous":
                mounts.append({"Type": "volume", "Target": s.target})
        host["Binds"], host["Mounts"] = binds or None, mounts or None
        if spec.devices:
            host["Devices"] = [{"PathOnHost": d.path, "PathInContainer": d.path,
                                "CgroupPermissions": ("r" if d.read else "") + ("w" if d.write else "")
                                + ("m" if d.mknod else "")} for d in spec.devices]  # fmt: skip
        body: dict[str, Any] = {
            "Image": spec.image.name, "Hostname": spec.hostname or str(cid), "Tty": spec.tty,
            "OpenStdin": False, "Env": [f"{k}={v}" for k, v in spec.env.items()],
            "Labels": {**spec.labels, "zlayer.container": str(cid), "zlayer.node": self.node_tag},
            "WorkingDir": spec.command.workdir or "", "User": spec.user or "", "HostConfig": host,
        }  # fmt: skip
        if spec.command.entrypoint is not None:
            body["Entrypoint"] = list(spec.command.entrypoint)
        if spec.command.args is not None:
            body["Cmd"] = list(spec.command.args)
        if spec.stop_signal:
            body["StopSignal"] = spec.stop_signal
        if spec.stop_grace_period is not None:
            body["StopTimeout"] = int(spec.stop_grace_period)
        return body

    async def create(self, cid: ContainerId, service: ServiceSpec, *, dns: Sequence[str] = ()) -> None:
        await self.pull(service.image.name, policy="if_not_present")
        body = self._create_body(cid, service, [] if service.uses_host_network else dns)
        name = self._name(cid)
        try:
            await self._call("POST", f"/containers/create?name={name}", body=body, what=f"container {cid}")
        except ConflictError:
            st = await self.state(cid)
            if st.running:
                raise ConflictError(f"container {cid} already exists and is running") from None
            await self.remove(cid, force=True)
            await self._call("POST", f"/containers/create?name={name}", body=body, what=f"container {cid}")

    async def start(self, cid: ContainerId) -> None:
        try:
            await self._call("POST", f"/containers/{self._name(cid)}/start", what=f"container {cid}")
        except (UsageError, ConflictError) as e:
            raise RuntimeFailure(e.message) from None

    async def stop(self, cid: ContainerId, timeout: float | None = None) -> ContainerState:
        t = f"?t={int(timeout)}" if timeout is not None else ""
        await self._call("POST", f"/containers/{self._name(cid)}/stop{t}", what=f"container {cid}")
        return await self.state(cid)

    async def kill(self, cid: ContainerId, signal: int | str = "KILL") -> None:
        await self._call("POST", f"/containers/{self._name(cid)}/kill?signal={signal}", what=f"container {cid}")

    async def wait(self, cid: ContainerId) -> ContainerState:
        await self._call("POST", f"/containers/{self._name(cid)}/wait", what=f"container {cid}")
        return await self.state(cid)

    async def remove(self, cid: ContainerId, *, force: bool = False) -> None:
        with contextlib.suppress(NotFoundError):
            await self._call("DELETE", f"/containers/{self._name(cid)}?v=1&force={int(force)}",
                             what=f"container {cid}")  # fmt: skip

    # ------------------------------------------------------------------------------------------ exec

    async def _exec_create(self, cid: ContainerId, argv: Sequence[str], *, tty: bool, env: Sequence[str],
                           workdir: str | None, user: str | None) -> str:  # fmt: skip
        body = {"Cmd": list(argv), "AttachStdout": True, "AttachStderr": True, "Tty": tty, "Env": list(env),
                "WorkingDir": workdir or "", "User": user or ""}  # fmt: skip
        got = await self._call("POST", f"/containers/{self._name(cid)}/exec", body=body, what=f"exec in {cid}")
        return str(got["Id"])

    async def exec(self, cid: ContainerId, argv: Sequence[str], *, env: Sequence[str] = (),
                   workdir: str | None = None, user: str | None = None) -> ExecResult:  # fmt: skip
        session = await self.exec_session(cid, argv, env=env, workdir=workdir, user=user)
        out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        async for stream, data in session.output():
            out[stream].append(data)
        res = await session.wait()
        return ExecResult(res.exit_code, b"".join(out["stdout"]), b"".join(out["stderr"]))

    async def exec_session(self, cid: ContainerId, argv: Sequence[str], *, stdin: bool = False, tty: bool = False,
                           size: tuple[int, int] | None = None, env: Sequence[str] = (), workdir: str | None = None,
                           user: str | None = None) -> ExecSession:  # fmt: skip
        if stdin:
            raise ConflictError(f"exec in {cid}: the docker runtime does not pass stdin to an exec")
        exec_id = await self._exec_create(cid, argv, tty=tty, env=env, workdir=workdir, user=user)
        return _DockerExec(self, exec_id, tty)

    async def attach(self, cid: ContainerId) -> ExecSession:
        raise ConflictError(f"container {cid}: the docker runtime does not attach to a container's stdio")

    # ------------------------------------------------------------------------------------------ views

    async def logs(self, cid: ContainerId, *, tail: int | None = None, follow: bool = False,
                   since: str | None = None) -> AsyncIterator[LogLine]:  # fmt: skip
        params = {"stdout": "1", "stderr": "1", "timestamps": "1", "follow": "1" if follow else "0",
                  "tail": "all" if tail is None else str(tail)}  # fmt: skip
        session = await self._http()
        async with session.get(f"http://docker{API}/containers/{self._name(cid)}/logs", params=params) as resp:
            if resp.status != 200:
                self._fail(resp.status, await resp.read(), f"logs of {cid}")
            partial: dict[Stream, bytes] = {"stdout": b"", "stderr": b""}
            async for stream, data in _frames(resp.content):
                *lines, partial[stream] = (partial[stream] + data).split(b"\n")
                for line in lines:
                    stamp, _, text = line.decode(errors="replace").partition(" ")
                    if since and stamp < since:
                        continue
                    yield LogLine(stamp, stream, text.rstrip("\r"))

    async def _inspect(self, cid: ContainerId) -> dict[str, Any]:
        got: dict[str, Any] = await self._call("GET", f"/containers/{self._name(cid)}/json",
                                               what=f"container {cid}")  # fmt: skip
        return got

    @staticmethod
    def _state(doc: dict[str, Any]) -> ContainerState:
        st = doc.get("State") or {}
        status = st.get("Status", "")
        started = "" if str(st.get("StartedAt", "")).startswith("0001") else st.get("StartedAt", "")
        finished = "" if str(st.get("FinishedAt", "")).startswith("0001") else st.get("FinishedAt", "")
        if status in ("running", "restarting"):
            return ContainerState("running", pid=st.get("Pid", 0), started_at=started)
        if status == "paused":
            return ContainerState("paused", pid=st.get("Pid", 0), started_at=started)
        if status in ("created",):
            return ContainerState("pending")
        code = int(st.get("ExitCode", 0))
        oom = bool(st.get("OOMKilled"))
        return ContainerState("exited" if code == 0 and not oom else "failed", exit_code=code,
                              signal=code - 128 if code > 128 else None, oom_killed=oom,
                              reason="oom_killed" if oom else "signal" if code > 128 else "exited",
                              started_at=started, finished_at=finished)  # fmt: skip

    async def state(self, cid: ContainerId) -> ContainerState:
        return self._state(await self._inspect(cid))

    def _info(self, doc: dict[str, Any], cid: str) -> ContainerInfo:
        labels = (doc.get("Config") or {}).get("Labels") or doc.get("Labels") or {}
        return ContainerInfo(id=cid, state=self._state(doc), image=(doc.get("Config") or {}).get("Image", ""),
                             created_at=str(doc.get("Created", "")), labels=dict(labels))  # fmt: skip

    async def list(self) -> builtins.list[ContainerInfo]:
        flt = json.dumps({"label": [f"zlayer.node={self.node_tag}"]})
        rows = await self._call("GET", f"/containers/json?all=1&filters={quote(flt)}", what="containers")
        out = []
        for row in rows:
            cid = (row.get("Labels") or {}).get("zlayer.container", "")
            with contextlib.suppress(NotFoundError):
                out.append(self._info(await self._inspect(ContainerId.parse(cid)), cid))
        return out

    async def inspect(self, cid: ContainerId) -> ContainerInfo:
        return self._info(await self._inspect(cid), str(cid))

    async def stats(self, cid: ContainerId) -> ContainerStats:
        doc = await self._call("GET", f"/containers/{self._name(cid)}/stats?stream=false", what=f"stats of {cid}")
        mem, pids = doc.get("memory_stats") or {}, doc.get("pids_stats") or {}
        blkio = (doc.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []
        return ContainerStats(
            cpu_usage_ns=int(((doc.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage", 0)),
            memory_usage_bytes=int(mem.get("usage", 0)), memory_limit_bytes=mem.get("limit"),
            memory_max_usage_bytes=mem.get("max_usage"), pids_current=int(pids.get("current", 0)),
            pids_limit=pids.get("limit"),
            io_read_bytes=sum(int(b.get("value", 0)) for b in blkio if str(b.get("op")).lower() == "read"),
            io_write_bytes=sum(int(b.get("value", 0)) for b in blkio if str(b.get("op")).lower() == "write"),
        )  # fmt: skip

    async def usage(self, cid: ContainerId) -> ContainerUsage:
        st = await self.stats(cid)  # dockerd has no cheaper read than its one-shot stats
        return ContainerUsage(st.cpu_usage_ns, st.memory_usage_bytes, st.memory_limit_bytes)

    async def pause(self, cid: ContainerId) -> None:
        await self._call("POST", f"/containers/{self._name(cid)}/pause", what=f"container {cid}")

    async def unpause(self, cid: ContainerId) -> None:
        await self._call("POST", f"/containers/{self._name(cid)}/unpause", what=f"container {cid}")

    async def top(self, cid: ContainerId) -> builtins.list[ProcessInfo]:
        doc = await self._call("GET", f"/containers/{self._name(cid)}/top?ps_args=-o%20uid,pid,ppid,lstart,args",
                               what=f"container {cid}")  # fmt: skip
        out = []
        for row in doc.get("Processes") or []:
            with contextlib.suppress(ValueError, IndexError):
                out.append(ProcessInfo(int(row[0]), int(row[1]), int(row[2]), row[3], row[-1]))
        return out

    async def changes(self, cid: ContainerId) -> builtins.list[FileChange]:
        doc = await self._call("GET", f"/containers/{self._name(cid)}/changes", what=f"container {cid}")
        return [FileChange(c["Path"], int(c["Kind"])) for c in doc or []]

    async def _archive(self, method: str, cid: ContainerId, path: str, tar: bytes | None = None) -> tuple[bytes, Any]:
        session = await self._http()
        url = f"http://docker{API}/containers/{self._name(cid)}/archive"
        async with session.request(method, url, params={"path": path}, data=tar) as resp:
            data = await resp.read()
            if resp.status not in (200,):
                self._fail(resp.status, data, f"{path} in {cid}")
            stat = resp.headers.get("X-Docker-Container-Path-Stat")
        return data, stat

    @staticmethod
    def _stat(header: str | None) -> PathStat:
        import base64

        doc = json.loads(base64.b64decode(header or "e30=")) if header else {}
        go = int(doc.get("mode", 0))
        mode = go & 0o7777 | (0o040000 if go & (1 << 31) else 0o120000 if go & (1 << 27) else 0o100000)
        return PathStat(doc.get("name", ""), int(doc.get("size", 0)), mode, doc.get("mtime", ""),
                        doc.get("linkTarget", ""))  # fmt: skip

    async def path_stat(self, cid: ContainerId, path: str) -> PathStat:
        _, header = await self._archive("HEAD", cid, path)
        return self._stat(header)

    async def get_archive(self, cid: ContainerId, path: str) -> tuple[bytes, PathStat]:
        data, header = await self._archive("GET", cid, path)
        return data, self._stat(header)

    async def put_archive(self, cid: ContainerId, path: str, tar: bytes) -> None:
        await self._archive("PUT", cid, path, tar)


class _DockerExec:
    """An exec through dockerd: its output streamed, its exit code from the exec's inspect."""

    def __init__(self, rt: DockerRuntime, exec_id: str, tty: bool) -> None:
        self._rt, self._id, self._tty = rt, exec_id, tty
        self._resp: Any = None

    async def output(self) -> AsyncIterator[tuple[Stream, bytes]]:
        session = await self._rt._http()
        async with session.post(f"http://docker{API}/exec/{self._id}/start",
                                json={"Detach": False, "Tty": self._tty}) as resp:  # fmt: skip
            if resp.status != 200:
                self._rt._fail(resp.status, await resp.read(), f"exec {self._id}")
            if self._tty:
                async for piece in resp.content.iter_any():
                    yield "stdout", piece
                return
            async for item in _frames(resp.content):
                yield item

    async def write(self, data: bytes) -> None:
        return None

    async def close_stdin(self) -> None:
        return None

    def resize(self, rows: int, cols: int) -> None:
        return None

    async def wait(self) -> ExecResult:
        for _ in range(200):
            doc = await self._rt._call("GET", f"/exec/{self._id}/json", what=f"exec {self._id}")
            if not doc.get("Running") and doc.get("ExitCode") is not None:
                return ExecResult(int(doc["ExitCode"]), b"", b"")
            await asyncio.sleep(0.01)
        raise RuntimeFailure(f"exec {self._id}: dockerd did not report its end")

    def kill(self) -> None:
        return None


__all__ = ["DockerRuntime", "demux", "docker_socket"]
