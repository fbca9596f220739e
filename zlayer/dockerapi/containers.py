"""Docker's ``/containers`` and ``/exec`` routes over the node's standalone containers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shlex
import struct
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from zlayer.dockerapi.convert import created
from zlayer.dockerapi.server import (
    DockerError,
    Hijack,
    Request,
    Response,
    Router,
    json_response,
    no_content,
)
from zlayer.dockerapi.state import DockerContainer, Exec, new_id, random_name
from zlayer.errors import NotFoundError, ZLayerError
from zlayer.runtime.protocol import ContainerId, ExecSession, PathStat

if TYPE_CHECKING:
    from zlayer.dockerapi.app import DockerApi

RAW = "application/vnd.docker.raw-stream"
MUX = "application/vnd.docker.multiplexed-stream"
_STREAM = {"stdin": 0, "stdout": 1, "stderr": 2}


def frame(stream: str, data: bytes) -> bytes:
    """One piece of Docker's multiplexed stream: [stream, 0, 0, 0, size (big endian)] + data."""
    return struct.pack(">BxxxI", _STREAM[stream], len(data)) + data


def _ts(iso: str) -> int:
    if not iso:
        return 0
    with contextlib.suppress(ValueError):
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    return 0


def _ago(seconds: float) -> str:
    s = int(max(seconds, 0))
    if s < 1:
        return "Less than a second"
    if s < 60:
        return f"{s} seconds"
    if s < 3600:
        return f"{s // 60} minutes" if s >= 120 else "About a minute"
    if s < 86400:
        return f"{s // 3600} hours" if s >= 7200 else "About an hour"
    return f"{s // 86400} days"


def docker_state(c: DockerContainer) -> str:
    st = c.sa.record.state
    if c.sa.paused or st == "paused":
        return "paused"
    if st == "running":
        return "running"
    if st == "created":
        return "created"
    if st in ("stopping",):
        return "running"
    return "exited"


def status_text(c: DockerContainer) -> str:
    state = docker_state(c)
    now = time.time()
    if state == "running":
        return f"Up {_ago(now - _ts(c.sa.started_at))}"
    if state == "paused":
        return f"Up {_ago(now - _ts(c.sa.started_at))} (Paused)"
    if state == "created":
        return "Created"
    return f"Exited ({c.sa.record.exit_code if c.sa.record.exit_code is not None else -1}) " \
           f"{_ago(now - _ts(c.sa.finished_at))} ago"  # fmt: skip


class Containers:
    def __init__(self, api: DockerApi) -> None:
        self.api = api

    # ---------------------------------------------------------------------------------------------- views

    def gateway(self, c: DockerContainer) -> str:
        servers = self.api.manager.publisher.dns_servers(c.sa.spec)
        return servers[0] if servers else ""

    def ports(self, c: DockerContainer) -> dict[str, list[dict[str, str]] | None]:
        out: dict[str, list[dict[str, str]] | None] = {}
        for key in c.config.get("ExposedPorts") or {}:
            out.setdefault(key, None)
        for m in self.api.manager.published_ports(c.sa.id):
            key = f"{m.container_port}/{m.protocol}"
            got = out.get(key) or []
            got.append({"HostIp": m.host_ip, "HostPort": str(m.host_port)})
            out[key] = got
        return out

    def network_settings(self, c: DockerContainer) -> dict[str, Any]:
        ip = c.sa.record.ip
        gw = self.gateway(c) if ip else ""
        nets = {}
        for name, cfg in (c.networks or {"bridge": {}}).items():
            net = self.api.networks.get(name)
            nets[name] = {"IPAMConfig": None, "Links": None, "Aliases": cfg.get("Aliases"),
                          "NetworkID": net.id if net else name, "EndpointID": c.id[:32] if ip else "",
                          "Gateway": gw, "IPAddress": ip, "IPPrefixLen": 24 if ip else 0, "IPv6Gateway": "",
                          "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "MacAddress": "",
                          "DriverOpts": None}  # fmt: skip
        return {"Bridge": "", "SandboxID": c.id if ip else "", "HairpinMode": False, "LinkLocalIPv6Address": "",
                "LinkLocalIPv6PrefixLen": 0, "Ports": self.ports(c), "SandboxKey": "", "SecondaryIPAddresses": None,
                "SecondaryIPv6Addresses": None, "EndpointID": c.id[:32] if ip else "", "Gateway": gw,
                "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "IPAddress": ip, "IPPrefixLen": 24 if ip else 0,
                "IPv6Gateway": "", "MacAddress": "", "Networks": nets}  # fmt: skip

    def mounts(self, c: DockerContainer) -> list[dict[str, Any]]:
        out = []
        for s in c.sa.spec.storage:
            kind = s.type
            if kind == "bind":
                out.append({"Type": "bind", "Source": s.source, "Destination": s.target, "Mode": "",  # type: ignore[union-attr]
                            "RW": not s.readonly, "Propagation": "rprivate"})  # type: ignore[union-attr]  # fmt: skip
            elif kind == "named":
                out.append({"Type": "volume", "Name": s.name, "Source": "", "Destination": s.target,  # type: ignore[union-attr]
                            "Driver": "local", "Mode": "z", "RW": not s.readonly, "Propagation": ""})  # type: ignore[union-attr]  # fmt: skip
        return out

    def inspect(self, c: DockerContainer) -> dict[str, Any]:
        sa = c.sa
        state = docker_state(c)
        code = sa.record.exit_code if sa.record.exit_code is not None else 0
        cmd = list(c.config.get("Cmd") or [])
        ep = list(c.config.get("Entrypoint") or [])
        argv = ep + cmd
        host = {"NetworkMode": "default", "RestartPolicy": {"Name": sa.restart, "MaximumRetryCount": sa.max_retries},
                "PortBindings": {}, "Binds": None, "AutoRemove": sa.auto_remove, "LogConfig": {"Type": "json-file",
                "Config": {}}, "Privileged": False, "PublishAllPorts": False, "ReadonlyRootfs": False,
                **c.host_config}  # fmt: skip
        host["RestartPolicy"] = {"Name": sa.restart, "MaximumRetryCount": sa.max_retries}
        return {
            "Id": c.id, "Created": c.created, "Path": argv[0] if argv else "", "Args": argv[1:],
            "State": {"Status": state, "Running": state in ("running", "paused"), "Paused": state == "paused",
                      "Restarting": False, "OOMKilled": sa.record.oom_killed, "Dead": False, "Pid": sa.record.pid,
                      "ExitCode": code if state == "exited" else 0, "Error": "",
                      "StartedAt": sa.started_at or "0001-01-01T00:00:00Z",
                      "FinishedAt": sa.finished_at or "0001-01-01T00:00:00Z"},
            "Image": c.image_id, "ResolvConfPath": "", "HostnamePath": "", "HostsPath": "", "LogPath": "",
            "Name": "/" + c.name, "RestartCount": sa.record.restarts, "Driver": "overlay2", "Platform": "linux",
            "MountLabel": "", "ProcessLabel": "", "AppArmorProfile": "", "ExecIDs": c.exec_ids or None,
            "HostConfig": host, "GraphDriver": {"Name": "overlay2", "Data": None}, "Mounts": self.mounts(c),
            "Config": {"Hostname": sa.spec.hostname or c.id[:12], "Domainname": "", "User": c.config.get("User", ""),
                       "AttachStdin": bool(c.config.get("AttachStdin")),
                       "AttachStdout": bool(c.config.get("AttachStdout")),
                       "AttachStderr": bool(c.config.get("AttachStderr")),
                       "ExposedPorts": c.config.get("ExposedPorts"), "Tty": bool(c.config.get("Tty")),
                       "OpenStdin": bool(c.config.get("OpenStdin")), "StdinOnce": bool(c.config.get("StdinOnce")),
                       "Env": c.config.get("Env") or [], "Cmd": c.config.get("Cmd"), "Image": c.config.get("Image"),
                       "Volumes": c.config.get("Volumes"), "WorkingDir": c.config.get("WorkingDir", ""),
                       "Entrypoint": c.config.get("Entrypoint"), "OnBuild": None,
                       "Labels": c.config.get("Labels") or {}, "StopSignal": c.config.get("StopSignal")},
            "NetworkSettings": self.network_settings(c),
        }  # fmt: skip

    def summary(self, c: DockerContainer) -> dict[str, Any]:
        argv = list(c.config.get("Entrypoint") or []) + list(c.config.get("Cmd") or [])
        ports = []
        for m in self.api.manager.published_ports(c.sa.id):
            ports.append({"IP": m.host_ip, "PrivatePort": m.container_port, "PublicPort": m.host_port,
                          "Type": m.protocol})  # fmt: skip
        net = self.network_settings(c)
        return {"Id": c.id, "Names": ["/" + c.name], "Image": c.config.get("Image", ""), "ImageID": c.image_id,
                "Command": shlex.join(argv), "Created": _ts(c.created), "Ports": ports,
                "Labels": c.config.get("Labels") or {}, "State": docker_state(c), "Status": status_text(c),
                "HostConfig": {"NetworkMode": c.host_config.get("NetworkMode") or "default"},
                "NetworkSettings": {"Networks": net["Networks"]}, "Mounts": self.mounts(c)}  # fmt: skip

    def matches(self, c: DockerContainer, filters: dict[str, list[str]]) -> bool:
        for key, values in filters.items():
            if key == "id" and not any(c.id.startswith(v) for v in values):
                return False
            if key == "name" and not any(v.lstrip("/") in c.name for v in values):
                return False
            if key == "status" and docker_state(c) not in values:
                return False
            if key == "exited" and not (docker_state(c) == "exited" and str(c.sa.record.exit_code) in values):
                return False
            if key == "ancestor" and not any(v in (c.config.get("Image"), c.image_id) for v in values):
                return False
            if key == "network" and not any(v in c.networks for v in values):
                return False
            if key == "label":
                labels = c.config.get("Labels") or {}
                for v in values:
                    k, eq, want = v.partition("=")
                    if k not in labels or (eq and labels[k] != want):
                        return False
            if key not in ("id", "name", "status", "exited", "ancestor", "network", "label", "health", "before",
                           "since", "volume", "expose", "publish", "is-task"):  # fmt: skip
                raise DockerError(400, f"invalid filter '{key}'")
        return True

    # ---------------------------------------------------------------------------------------------- create

    async def create(self, body: dict[str, Any], name: str) -> DockerContainer:
        api = self.api
        if not isinstance(body, dict):
            raise DockerError(400, "the container config must be a JSON object")
        image = body.get("Image")
        if not image or not isinstance(image, str):
            raise DockerError(400, "Config.Image: an image is required")
        if name:
            name = name.lstrip("/")
            if not all(ch.isalnum() or ch in "_.-" for ch in name) or not name[0].isalnum():
                raise DockerError(400, f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
            if name in api.names.names():
                other = next(c for c in api.names.by_id.values() if c.name == name)
                raise DockerError(409, f'Conflict. The container name "/{name}" is already in use by container '
                                       f'"{other.id}". You have to remove (or rename) that container to be able to '
                                       "reuse that name.")  # fmt: skip
        else:
            name = random_name(api.names.names())
        image_id = await self.image_id(image)
        cid = new_id()
        made = created(body, image, cid[:12])
        labels = body.get("Labels") or {}
        service = labels.get("com.docker.compose.service") or name  # the DNS name other containers find it by
        config = {k: v for k, v in body.items() if k not in ("HostConfig", "NetworkingConfig")}
        networks: dict[str, dict[str, Any]] = {}
        mode = str((body.get("HostConfig") or {}).get("NetworkMode") or "default")
        for net, cfg in ((body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}).items():
            networks[net] = {"Aliases": (cfg or {}).get("Aliases")}
        if not networks and mode not in ("host", "none"):
            networks["bridge" if mode in ("default", "bridge") else mode] = {}
        host = dict(body.get("HostConfig") or {})
        doc = {"id": cid, "name": name, "created": _now(), "config": config, "host_config": host,
               "image_id": image_id, "networks": networks}  # fmt: skip
        sa = await api.standalone.create(
            "docker", service, ContainerId(cid[:12], 0), made.spec, source=made.source, restart=made.restart,
            max_retries=made.max_retries, auto_remove=made.auto_remove, extra={"docker": doc},
        )  # fmt: skip
        c = DockerContainer.from_doc(doc, sa)
        api.names.by_id[cid] = c
        api.events.add("container", "create", cid, {"name": name, "image": image, **labels}, image)
        return c

    async def image_id(self, image: str) -> str:
        if self.api.images is None:
            raise DockerError(404, f"No such image: {image}")
        try:
            got = await asyncio.to_thread(self.api.images.get, image)
        except (NotFoundError, ZLayerError):
            raise DockerError(404, f"No such image: {image}") from None
        return got.id

    # ---------------------------------------------------------------------------------------------- streams

    async def log_frames(self, c: DockerContainer, req: Request, *, follow: bool, tail: int | None,
                         since: str | None = None) -> AsyncIterator[bytes]:  # fmt: skip
        tty = bool(c.config.get("Tty"))
        want = {"stdout": req.flag("stdout", True), "stderr": req.flag("stderr", True)}
        stamps = req.flag("timestamps")
        if c.sa.record.state == "created" and not c.sa.started.is_set():
            if not follow:
                return
            await c.sa.started.wait()
        try:
            async for line in self.api.runtime.logs(c.sa.cid, tail=tail, follow=follow, since=since):
                if not want.get(line.stream, True):
                    continue
                data = ((line.timestamp + " ") if stamps else "") + line.message + "\n"
                raw = data.encode()
                yield raw if tty else frame(line.stream, raw)
        except NotFoundError:
            return

    # ---------------------------------------------------------------------------------------------- exec

    async def exec_run(self, ex: Exec, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       rest: bytes) -> None:  # fmt: skip
        c = ex.container
        try:
            session = await self.api.runtime.exec_session(
                c.sa.cid, ex.argv, stdin=ex.stdin, tty=ex.tty, size=ex.size, env=ex.env, workdir=ex.workdir,
                user=ex.user,
            )  # fmt: skip
        except ZLayerError as e:
            ex.exit_code = 126 if "not found" not in e.message else 127
            msg = f"OCI runtime exec failed: {e.message}\r\n".encode()
            writer.write(msg if ex.tty else frame("stderr", msg))
            await writer.drain()
            return
        ex.session, ex.running = session, True
        try:
            await pump(session, reader, writer, rest, tty=ex.tty, stdin=ex.stdin,
                       want={"stdout": ex.stdout, "stderr": ex.stderr})  # fmt: skip
            ex.exit_code = (await session.wait()).exit_code
        finally:
            ex.running = False


async def pump(
    session: ExecSession,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    rest: bytes,
    *,
    tty: bool,
    stdin: bool,
    want: dict[str, bool],
    close_stdin: bool = True,
) -> None:
    """A hijacked connection to a process's stdio: what the client sends to its stdin (``rest`` came with the
    request), its output to the client (raw on a terminal, else multiplexed), until the output ends. A client that
    goes away ends an exec (``kill``) and detaches from an attached container."""
    feeder: asyncio.Task[None] | None = None
    if stdin:

        async def feed() -> None:
            if rest:
                await session.write(rest)
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    if close_stdin:
                        await session.close_stdin()
                    return
                await session.write(data)

        feeder = asyncio.create_task(feed())
    try:
        async for stream, data in session.output():
            if not want.get(stream, True):
                continue
            writer.write(data if tty else frame(stream, data))
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        session.kill()
        raise
    finally:
        if feeder is not None:
            feeder.cancel()
            with contextlib.suppress(BaseException):
                await feeder


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def register(router: Router, api: DockerApi) -> None:
    cs = Containers(api)
    find = api.names.find

    @router.route("GET", "/containers/json")
    async def list_containers(req: Request) -> Response:
        filters = req.filters()
        every = req.flag("all")
        out = []
        for c in sorted(api.names.by_id.values(), key=lambda x: x.created, reverse=True):
            if not every and docker_state(c) not in ("running", "paused"):
                continue
            if cs.matches(c, filters):
                out.append(cs.summary(c))
        limit = req.integer("limit", -1) or -1
        if limit > 0:
            out = out[:limit]
        return json_response(out)

    @router.route("POST", "/containers/create")
    async def create_container(req: Request) -> Response:
        c = await cs.create(req.json(required=True), req.q("name"))
        return json_response({"Id": c.id, "Warnings": []}, 201)

    @router.route("GET", "/containers/{id}/json")
    async def inspect_container(req: Request) -> Response:
        return json_response(cs.inspect(find(req.params["id"])))

    @router.route("POST", "/containers/{id}/start")
    async def start_container(req: Request) -> Response:
        c = find(req.params["id"])
        if c.sa.running:
            return no_content(304)
        await api.standalone.start(c.sa.id)
        return no_content()

    @router.route("POST", "/containers/{id}/stop")
    async def stop_container(req: Request) -> Response:
        c = find(req.params["id"])
        t = req.integer("t", None)
        if t is None:
            t = req.integer("timeout", None)
        stopped = await api.standalone.stop(c.sa.id, None if t is None or t < 0 else float(t), req.q("signal") or None)
        return no_content(204 if stopped else 304)

    @router.route("POST", "/containers/{id}/restart")
    async def restart_container(req: Request) -> Response:
        c = find(req.params["id"])
        t = req.integer("t", None)
        await api.standalone.restart(c.sa.id, None if t is None or t < 0 else float(t))
        return no_content()

    @router.route("POST", "/containers/{id}/kill")
    async def kill_container(req: Request) -> Response:
        c = find(req.params["id"])
        if not c.sa.running:
            raise DockerError(409, f"Container {c.id} is not running")
        await api.standalone.kill(c.sa.id, req.q("signal") or "KILL")
        return no_content()

    @router.route("POST", "/containers/{id}/pause")
    async def pause_container(req: Request) -> Response:
        await api.standalone.pause(find(req.params["id"]).sa.id)
        return no_content()

    @router.route("POST", "/containers/{id}/unpause")
    async def unpause_container(req: Request) -> Response:
        await api.standalone.unpause(find(req.params["id"]).sa.id)
        return no_content()

    @router.route("POST", "/containers/{id}/wait")
    async def wait_container(req: Request) -> Response:
        c = find(req.params["id"])
        condition = req.q("condition") or "not-running"
        if condition not in ("not-running", "next-exit", "removed"):
            raise DockerError(400, f"invalid condition: {condition!r}")

        async def body() -> AsyncIterator[bytes]:
            code = await api.standalone.wait(c.sa.id, condition)
            yield json.dumps({"StatusCode": code, "Error": None}).encode() + b"\n"

        return Response(200, stream=body())

    @router.route("DELETE", "/containers/{id}")
    async def remove_container(req: Request) -> Response:
        c = find(req.params["id"])
        if c.sa.running and not req.flag("force"):
            raise DockerError(409, f"You cannot remove a running container {c.id}. Stop the container before "
                                   "attempting removal or force remove")  # fmt: skip
        await api.standalone.remove(c.sa.id, force=True)
        api.names.by_id.pop(c.id, None)
        return no_content()

    @router.route("POST", "/containers/{id}/rename")
    async def rename_container(req: Request) -> Response:
        c = find(req.params["id"])
        name = req.q("name").lstrip("/")
        if not name:
            raise DockerError(400, "rename: a new name is required")
        if name in api.names.names() and name != c.name:
            raise DockerError(409, f'Conflict. The container name "/{name}" is already in use')
        c.name = name
        if not (c.config.get("Labels") or {}).get("com.docker.compose.service"):
            await api.standalone.rename(c.sa.id, name)
        await api.keep(c)
        return no_content()

    @router.route("POST", "/containers/{id}/update")
    async def update_container(req: Request) -> Response:
        c = find(req.params["id"])
        body = req.json()
        unsupported = sorted(k for k, v in body.items() if k != "RestartPolicy" and v not in (None, 0, "", [], {}))
        if unsupported:
            raise DockerError(400, f"updating {', '.join(unsupported)} of a running container is not supported by "
                                   "this node (zlayer); recreate the container")  # fmt: skip
        policy = body.get("RestartPolicy") or {}
        if policy:
            await api.standalone.update(c.sa.id, restart=policy.get("Name") or "no",
                                        max_retries=int(policy.get("MaximumRetryCount") or 0))  # fmt: skip
        return json_response({"Warnings": []})

    @router.route("GET", "/containers/{id}/logs")
    async def container_logs(req: Request) -> Response:
        c = find(req.params["id"])
        if not req.flag("stdout") and not req.flag("stderr"):
            raise DockerError(400, "You must choose at least one stream")
        tail_q = req.q("tail", "all")
        tail = None if tail_q in ("all", "") else req.integer("tail")
        since = None
        if req.q("since") not in ("", "0"):
            with contextlib.suppress(ValueError):
                since = datetime.fromtimestamp(float(req.q("since")), UTC).isoformat().replace("+00:00", "Z")
        ctype = RAW if c.config.get("Tty") or req.version < (1, 42) else MUX
        return Response(200, content_type=ctype,
                        stream=cs.log_frames(c, req, follow=req.flag("follow"), tail=tail, since=since))  # fmt: skip

    @router.route("POST", "/containers/{id}/attach")
    async def attach_container(req: Request) -> Hijack:
        c = find(req.params["id"])
        tty = bool(c.config.get("Tty"))

        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rest: bytes) -> None:
            if not req.flag("stream") and not req.flag("logs"):
                return
            c.sa.attached += 1
            try:
                want = {"stdout": req.flag("stdout"), "stderr": req.flag("stderr")}
                if c.config.get("OpenStdin") and req.flag("stream"):
                    # its own stdio (docker run -i/-it): what the client types goes to it
                    await c.sa.started.wait()
                    session = await api.runtime.attach(c.sa.cid)
                    await pump(session, reader, writer, rest, tty=tty, stdin=req.flag("stdin"), want=want,
                               close_stdin=bool(c.config.get("StdinOnce")))  # fmt: skip
                    return
                since = None
                if not req.flag("logs"):  # only what this run writes: from its start on
                    await c.sa.started.wait()
                    since = c.sa.started_at or None
                async for piece in cs.log_frames(c, req, follow=req.flag("stream"), tail=None, since=since):
                    writer.write(piece)
                    await writer.drain()
            finally:
                c.sa.attached -= 1

        return Hijack(run, RAW if tty else MUX)

    @router.route("POST", "/containers/{id}/resize")
    async def resize_container(req: Request) -> Response:
        c = find(req.params["id"])
        h, w = req.integer("h", 0) or 0, req.integer("w", 0) or 0
        if c.config.get("Tty") and c.config.get("OpenStdin") and c.sa.running and h > 0 and w > 0:
            session = await api.runtime.attach(c.sa.cid)
            session.resize(h, w)
            session.kill()
        return no_content(200)

    @router.route("GET", "/containers/{id}/top")
    async def top_container(req: Request) -> Response:
        c = find(req.params["id"])
        if not c.sa.running:
            raise DockerError(409, f"Container {c.id} is not running")
        procs = await api.runtime.top(c.sa.cid)
        rows = [[str(p.uid), str(p.pid), str(p.ppid), "0", p.stime[11:16] if len(p.stime) > 16 else p.stime, "?",
                 "00:00:00", p.cmd] for p in procs]  # fmt: skip
        return json_response({"Titles": ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
                              "Processes": rows})  # fmt: skip

    async def stats_doc(c: DockerContainer, pre: dict[str, Any] | None) -> dict[str, Any]:
        st = await api.runtime.stats(c.sa.cid)
        cpus = len(os_cpus())
        doc = {"read": _now(), "preread": pre["read"] if pre else "0001-01-01T00:00:00Z", "name": "/" + c.name,
               "id": c.id, "num_procs": 0,
               "pids_stats": {"current": st.pids_current, **({"limit": st.pids_limit} if st.pids_limit else {})},
               "cpu_stats": {"cpu_usage": {"total_usage": st.cpu_usage_ns, "usage_in_kernelmode": 0,
                                           "usage_in_usermode": st.cpu_usage_ns},
                             "system_cpu_usage": system_cpu_ns(), "online_cpus": cpus,
                             "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}},
               "precpu_stats": pre["cpu_stats"] if pre else {"cpu_usage": {"total_usage": 0}, "throttling_data": {}},
               "memory_stats": {"usage": st.memory_usage_bytes, "max_usage": st.memory_max_usage_bytes or 0,
                                "limit": st.memory_limit_bytes or host_memory(), "stats": {}},
               "blkio_stats": {"io_service_bytes_recursive": [
                   {"major": 0, "minor": 0, "op": "read", "value": st.io_read_bytes},
                   {"major": 0, "minor": 0, "op": "write", "value": st.io_write_bytes}]},
               "networks": {"eth0": {"rx_bytes": 0, "rx_packets": 0, "rx_errors": 0, "rx_dropped": 0,
                                     "tx_bytes": 0, "tx_packets": 0, "tx_errors": 0, "tx_dropped": 0}}}  # fmt: skip
        return doc

    @router.route("GET", "/containers/{id}/stats")
    async def container_stats(req: Request) -> Response:
        c = find(req.params["id"])
        if not c.sa.running:
            blank = {"read": "0001-01-01T00:00:00Z", "name": "/" + c.name, "id": c.id, "cpu_stats": {},
                     "precpu_stats": {}, "memory_stats": {}, "pids_stats": {}, "blkio_stats": {}}  # fmt: skip
            if not req.flag("stream", True):
                return json_response(blank)

            async def once() -> AsyncIterator[bytes]:
                yield json.dumps(blank).encode() + b"\n"

            return Response(200, stream=once())
        if not req.flag("stream", True):
            return json_response(await stats_doc(c, None))

        async def stream() -> AsyncIterator[bytes]:
            pre = None
            while c.sa.running:
                doc = await stats_doc(c, pre)
                yield json.dumps(doc).encode() + b"\n"
                pre = doc
                await asyncio.sleep(1.0)

        return Response(200, stream=stream())

    @router.route("GET", "/containers/{id}/changes")
    async def container_changes(req: Request) -> Response:
        c = find(req.params["id"])
        if not c.sa.started.is_set():
            return json_response(None)
        return json_response([{"Path": f.path, "Kind": f.kind} for f in await api.runtime.changes(c.sa.cid)] or None)

    def archive_target(req: Request) -> tuple[DockerContainer, str]:
        c = find(req.params["id"])
        path = req.q("path")
        if not path:
            raise DockerError(400, "path is required")
        if not c.sa.running:
            raise DockerError(409, f"container {c.name} is not running: copying needs its filesystem mounted")
        return c, path

    @router.route("HEAD", "/containers/{id}/archive")
    async def stat_path(req: Request) -> Response:
        c, path = archive_target(req)
        return Response(200, b"", headers=[stat_header(await api.runtime.path_stat(c.sa.cid, path))])

    @router.route("GET", "/containers/{id}/archive")
    async def get_archive(req: Request) -> Response:
        c, path = archive_target(req)
        data, st = await api.runtime.get_archive(c.sa.cid, path)
        return Response(200, data, content_type="application/x-tar", headers=[stat_header(st)])

    @router.route("PUT", "/containers/{id}/archive")
    async def put_archive(req: Request) -> Response:
        c, path = archive_target(req)
        await api.runtime.put_archive(c.sa.cid, path, req.body)
        return no_content(200)

    @router.route("POST", "/containers/prune")
    async def prune_containers(req: Request) -> Response:
        gone, space = [], 0
        filters = req.filters()
        for c in list(api.names.by_id.values()):
            if docker_state(c) in ("exited", "created") and cs.matches(c, {k: v for k, v in filters.items()
                                                                            if k == "label"}):  # fmt: skip
                await api.standalone.remove(c.sa.id, force=True)
                api.names.by_id.pop(c.id, None)
                gone.append(c.id)
        return json_response({"ContainersDeleted": gone or None, "SpaceReclaimed": space})

    @router.route("POST", "/containers/{id}/exec")
    async def exec_create(req: Request) -> Response:
        c = find(req.params["id"])
        body = req.json(required=True)
        argv = body.get("Cmd")
        if isinstance(argv, str):
            argv = [argv]
        if not argv or not all(isinstance(a, str) for a in argv):
            raise DockerError(400, "No exec command specified")
        if not c.sa.running:
            raise DockerError(409, f"Container {c.id} is not running")
        if c.sa.paused:
            raise DockerError(409, f"Container {c.id} is paused, unpause the container before exec")
        if body.get("Privileged"):
            raise DockerError(400, "Privileged exec is not supported by this node (zlayer)")
        ex = Exec(new_id(), c, list(argv), bool(body.get("Tty")), bool(body.get("AttachStdin")),
                  bool(body.get("AttachStdout", True)), bool(body.get("AttachStderr", True)),
                  list(body.get("Env") or []), body.get("WorkingDir") or None, body.get("User") or None)  # fmt: skip
        cs_ = body.get("ConsoleSize")
        if isinstance(cs_, list) and len(cs_) == 2 and all(isinstance(x, int) and x > 0 for x in cs_):
            ex.size = (cs_[0], cs_[1])
        api.execs[ex.id] = ex
        c.exec_ids.append(ex.id)
        return json_response({"Id": ex.id}, 201)

    def find_exec(ref: str) -> Exec:
        ex = api.execs.get(ref)
        if ex is None:
            raise DockerError(404, f"No such exec instance: {ref}")
        return ex

    @router.route("POST", "/exec/{id}/start")
    async def exec_start(req: Request) -> Response | Hijack:
        ex = find_exec(req.params["id"])
        body = req.json()
        if ex.running or ex.exit_code is not None:
            raise DockerError(409, f"Error: Exec command {ex.id} has already run")
        if body.get("Tty") is not None:
            ex.tty = bool(body["Tty"])
        if body.get("Detach"):

            async def detached() -> None:
                class _Null:
                    def write(self, _: bytes) -> None: ...
                    async def drain(self) -> None: ...

                await cs.exec_run(ex, asyncio.StreamReader(), _Null(), b"")  # type: ignore[arg-type]

            ex.running = True
            asyncio.get_running_loop().create_task(detached())
            return no_content(200)

        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rest: bytes) -> None:
            await cs.exec_run(ex, reader, writer, rest)

        return Hijack(run, RAW if ex.tty else MUX)

    @router.route("POST", "/exec/{id}/resize")
    async def exec_resize(req: Request) -> Response:
        ex = find_exec(req.params["id"])
        h, w = req.integer("h", 0) or 0, req.integer("w", 0) or 0
        if h > 0 and w > 0:
            ex.size = (h, w)
            if ex.session is not None:
                ex.session.resize(h, w)
        return no_content(200)

    @router.route("GET", "/exec/{id}/json")
    async def exec_inspect(req: Request) -> Response:
        ex = find_exec(req.params["id"])
        return json_response({
            "ID": ex.id, "Running": ex.running, "ExitCode": ex.exit_code, "CanRemove": False,
            "ContainerID": ex.container.id, "DetachKeys": "", "OpenStdin": ex.stdin, "OpenStderr": ex.stderr,
            "OpenStdout": ex.stdout, "Pid": ex.pid,
            "ProcessConfig": {"tty": ex.tty, "entrypoint": ex.argv[0], "arguments": ex.argv[1:],
                              "privileged": False, **({"user": ex.user} if ex.user else {})},
        })  # fmt: skip


def docker_mode(st: PathStat) -> int:
    """A stat's mode as Go's os.FileMode, which Docker's clients read: permission bits, dir 1<<31, symlink 1<<27."""
    mode = st.mode & 0o7777
    kind = st.mode & 0o170000
    if kind == 0o040000:
        mode |= 1 << 31
    elif kind == 0o120000:
        mode |= 1 << 27
    return mode


def stat_header(st: PathStat) -> tuple[str, str]:
    doc = {"name": st.name, "size": st.size, "mode": docker_mode(st), "mtime": st.mtime, "linkTarget": st.link_target}
    return "X-Docker-Container-Path-Stat", base64.b64encode(json.dumps(doc).encode()).decode()


def os_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def system_cpu_ns() -> int:
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:8]
    return sum(int(x) for x in parts) * 10_000_000  # USER_HZ 100


def host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


__all__ = ["Containers", "frame", "register"]
