"""LinuxRuntime: the Runtime protocol over an image source, overlayfs, OCI bundles and ``zlayer-shim``.

Layout under ``data_dir``: ``containers/<id>/`` is the shim's state (the truth about a container),
``bundles/<id>/`` holds ``config.json``, the overlay ``rootfs`` mount point with its ``upper``/``work`` dirs, the
generated ``etc/`` files and ``zlayer.json`` (what this backend needs to stop, remove and describe the container);
logs are ``<log_dir>/<id>.log`` in the CRI format and outlive the container. Nothing lives only in memory, so a new
``LinuxRuntime`` on the same ``data_dir`` adopts every container an earlier process made.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal as _signal
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from zlayer.errors import ConflictError, ImageError, NotFoundError, RuntimeFailure, ZLayerError
from zlayer.images.mount import mount_rootfs, unmount_rootfs
from zlayer.paths import PRIVATE_DIR, private_dir, write_atomic
from zlayer.runtime import logfile
from zlayer.runtime.linux import archive, cgroups, shim
from zlayer.runtime.linux.bundle import BundleOptions, build_config, image_settings, stop_signal
from zlayer.runtime.linux.console import AttachSession, Console
from zlayer.runtime.linux.etcfiles import write_etc_files
from zlayer.runtime.linux.exec_session import HANDOVER_TIMEOUT, ShimExecSession
from zlayer.runtime.linux.volumes import prepare_volumes
from zlayer.runtime.protocol import (
    ContainerId,
    ContainerInfo,
    ContainerState,
    ContainerStats,
    ContainerUsage,
    ExecResult,
    FileChange,
    LogLine,
    PathStat,
    ProcessInfo,
)

if TYPE_CHECKING:
    from zlayer.spec.models import ServiceSpec

DEFAULT_GRACE = 10.0
EARLY_EXIT_WINDOW = 0.05  # seconds start() watches for a process that dies at once
EARLY_EXIT_LINES = 40  # ZLayer's log tail on early exit


class ImageSource(Protocol):
    """Where LinuxRuntime gets images: the image config and the unpacked layer directories, bottom first."""

    async def pull(self, image: str, policy: str = "if_not_present") -> None: ...

    async def resolve(self, image: str) -> tuple[dict[str, Any], list[Path]]: ...


@dataclass
class DirectoryImages:
    """An ImageSource over already-unpacked root filesystems (``name → (config, [layer dirs])``); used by tests
    and by the OCI CLI until the image store is wired in."""

    images: dict[str, tuple[dict[str, Any], list[Path]]]

    async def pull(self, image: str, policy: str = "if_not_present") -> None:
        if image not in self.images:
            raise NotFoundError(f"image {image} is not present locally")

    async def resolve(self, image: str) -> tuple[dict[str, Any], list[Path]]:
        await self.pull(image)
        return self.images[image]


def _mount_overlay(target: Path, lower: Sequence[Path], upper: Path, work: Path, cid: str, image: str) -> None:
    try:
        mount_rootfs(list(lower), upper, work, target)
    except ImageError as exc:
        raise RuntimeFailure(
            f"container {cid}: cannot mount the rootfs of image {image}: {exc.message}", where=str(target)
        ) from None


def _unmount(target: Path) -> None:
    if os.path.ismount(target):
        unmount_rootfs(target)


def _in_rootfs(rootfs: Path, path: str) -> Path | None:
    """Resolve ``path`` inside ``rootfs`` as the container sees it (absolute symlinks stay inside); None if absent."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    cur = rootfs
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            cur = cur.parent if cur != rootfs else rootfs
            continue
        nxt = cur / part
        if nxt.is_symlink():
            hops += 1
            if hops > 40:
                return None
            link = os.readlink(nxt)
            parts = [p for p in link.split("/") if p not in ("", ".")] + parts
            if link.startswith("/"):
                cur = rootfs
            continue
        if not nxt.exists():
            return None
        cur = nxt
    return cur


def find_executable(rootfs: Path, argv0: str, env: Sequence[str], cwd: str) -> Path | None:
    """Where the container's exec would find ``argv0``: a path as is, a bare name along ``PATH``."""
    if "/" in argv0:
        p = _in_rootfs(rootfs, argv0 if argv0.startswith("/") else f"{cwd}/{argv0}")
        return p if p is not None and p.is_file() else None
    path = next((e[5:] for e in env if e.startswith("PATH=")), "")
    for d in path.split(":"):
        p = _in_rootfs(rootfs, f"{d or '.'}/{argv0}")
        if p is not None and p.is_file() and os.access(p, os.X_OK):
            return p
    return None


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    # No fsync: bundle files live no longer than the container, which a power loss ends anyway, and create()
    # discards a bundle left by a crash. 0600: config.json holds the container's environment, secrets included.
    write_atomic(path, json.dumps(data, separators=(",", ":")), durable=False)


def _fd_budget() -> int:
    """Descriptors the runtime may hold open on cgroup files: a quarter of the process's limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft // 4 if soft != resource.RLIM_INFINITY else 1 << 16


def _to_state(st: shim.ShimState) -> ContainerState:
    if st.status == "stopped":
        if st.oom_killed:
            reason = "oom_killed"
        elif st.exit_signal:
            reason = "signal"
        elif st.exit_code is None:
            reason = "runtime_error"
        else:
            reason = "exited"
        return ContainerState(
            "exited" if st.exit_code is not None else "failed",
            exit_code=st.exit_code if st.exit_code is not None else 255,
            signal=st.exit_signal,
            oom_killed=st.oom_killed,
            reason=reason,
            started_at=st.started_at,
            finished_at=st.finished_at,
        )
    status = {"creating": "pending", "created": "pending", "running": "running", "paused": "paused"}[st.status]
    return ContainerState(status, pid=st.pid, started_at=st.started_at)  # type: ignore[arg-type]


class LinuxRuntime:
    """Containers on this Linux host: namespaces, cgroups, overlayfs, seccomp, through one zlayer-shim each."""

    host_network = False  # each container has its network namespace (or joins the host's by its spec)

    def __init__(
        self,
        data_dir: Path,
        images: ImageSource,
        *,
        log_dir: Path | None = None,
        early_exit_window: float = EARLY_EXIT_WINDOW,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.early_exit_window = early_exit_window
        self.images = images
        self.state_root = self.data_dir / "containers"
        self.bundles = self.data_dir / "bundles"
        self.log_dir = Path(log_dir) if log_dir else self.data_dir / "logs"
        # Container names (web-rep-1 ...) repeat from node to node; cgroups are host-wide. Without a per-node part
        # two daemons on one host would share a container's cgroup, and one's stop (SIGKILL to every process of
        # the cgroup) would kill the other's replica.
        self.node_tag = hashlib.sha256(str(self.data_dir.absolute()).encode()).hexdigest()[:8]
        self._cgroups: dict[str, tuple[Path, ...]] = {}  # a live container's cgroup directories, for stats
        self._usage: dict[str, cgroups.UsageFiles] = {}  # a live container's usage files, for usage()
        self._usage_fds = 0  # descriptors those hold: at most a quarter of what the process may open
        self._consoles: dict[str, Console] = {}  # containers whose stdio this daemon holds (stdin_open)
        for d in (self.state_root, self.bundles, self.log_dir):
            private_dir(d)  # container filesystems, specs and output: nothing for other host users

    # ------------------------------------------------------------ helpers

    def _meta(self, cid: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.bundles / cid / "zlayer.json").read_text())
            return data
        except (OSError, ValueError):
            return {}

    def log_path(self, cid: ContainerId | str) -> Path:
        return self.log_dir / f"{cid}.log"

    async def _shim_state(self, cid: str) -> shim.ShimState:
        return await shim.state(cid, self.state_root)

    def _join_namespace(self, target: str, kind: str) -> str:
        st = shim.read_state(target, self.state_root)
        if st.status not in ("created", "running", "paused") or st.pid <= 0:
            raise RuntimeFailure(f"cannot join the {kind} namespace of container {target}: it is {st.status}")
        return f"/proc/{st.pid}/ns/{kind}"

    # ------------------------------------------------------------ protocol

    async def pull(self, image: str, *, policy: str = "if_not_present") -> None:
        await self.images.pull(image, policy)

    async def create(self, cid: ContainerId, service: ServiceSpec, *, dns: Sequence[str] = ()) -> None:
        name = str(cid)
        self._forget_cgroups(name)
        spec = service
        image = spec.image.name
        with contextlib.suppress(NotFoundError):
            st = await self._shim_state(name)
            if st.status != "stopped":
                raise ConflictError(f"container {name} already exists and is {st.status}")
            await self.remove(cid)
        bundle = self.bundles / name
        if bundle.exists():  # leftovers of a crash between mkdir and shim create
            _unmount(bundle / "rootfs")
            shutil.rmtree(bundle, ignore_errors=True)
        undo: list[Any] = []
        try:
            config, layers = await self.images.resolve(image)
            bundle.mkdir(parents=True)
            os.chmod(bundle, PRIVATE_DIR)  # its rootfs may hold a setuid file: no way in for other users
            undo.append(lambda: shutil.rmtree(bundle, ignore_errors=True))
            rootfs, upper, work = bundle / "rootfs", bundle / "upper", bundle / "work"
            for d in (rootfs, upper, work):
                d.mkdir()
            if not layers:
                raise RuntimeFailure(f"container {name}: image {image} has no layers")
            _mount_overlay(rootfs, layers, upper, work, name, image)
            undo.append(lambda: _unmount(rootfs))
            vols = prepare_volumes(spec.storage, data_dir=self.data_dir, container=name, rootfs=rootfs)
            for anon in vols.anonymous:
                undo.append(lambda a=anon: shutil.rmtree(a, ignore_errors=True))
            host_net = spec.uses_host_network
            hostname = spec.hostname or name
            etc = write_etc_files(
                bundle,
                hostname=hostname,
                extra_hosts=spec.extra_hosts,
                dns=[*([] if host_net else dns), *spec.dns],
                host_network=host_net,
            )
            doc = build_config(
                spec,
                config,
                BundleOptions(
                    container_id=name,
                    image=image,
                    rootfs=rootfs,
                    hostname=hostname,
                    cgroups_path=f"{spec.cgroup_parent or '/zlayer'}/{name}-{self.node_tag}",
                    extra_mounts=[*vols.mounts, *etc],
                    join_namespace=self._join_namespace,
                    annotations={
                        "zlayer.image": image,
                        "zlayer.service": cid.service,
                        "zlayer.replica": str(cid.replica),
                    },
                ),
            )
            proc = doc["process"]
            if find_executable(rootfs, proc["args"][0], proc["env"], proc["cwd"]) is None:
                raise RuntimeFailure(f"container {name}: executable file not found: {proc['args'][0]} in image {image}")
            _atomic_json(bundle / "config.json", doc)
            grace = spec.stop_grace_period
            max_log = spec.logs.max_size_bytes if spec.logs is not None else 0
            _atomic_json(
                bundle / "zlayer.json",
                {
                    "id": name,
                    "image": image,
                    "stop_signal": stop_signal(spec, image_settings(config)),
                    "stop_grace_period": grace if grace is not None else DEFAULT_GRACE,
                    "anonymous_volumes": [str(p) for p in vols.anonymous],
                    "labels": dict(spec.labels),
                },
            )
            made: asyncio.Future[Any]
            if spec.stdin_open:
                made = asyncio.ensure_future(self._create_with_console(name, bundle, spec.tty))
            else:
                made = asyncio.ensure_future(
                    shim.create(
                        name,
                        bundle,
                        self.state_root,
                        self.log_path(name),
                        log_max_size=max_log or None,
                        log_max_files=2 if max_log else None,
                    )
                )
            try:
                await asyncio.shield(made)
            except asyncio.CancelledError:
                # The shim runs on without us: let it finish, then delete what it made, or a cancelled deploy
                # leaves a blocked container (cgroups, monitor) behind with its rootfs unmounted under it.
                with contextlib.suppress(BaseException):
                    await made
                with contextlib.suppress(ZLayerError):
                    await shim.delete(name, self.state_root, force=True)
                raise
        except ZLayerError as exc:
            for step in reversed(undo):
                with contextlib.suppress(Exception):
                    step()
            if isinstance(exc, RuntimeFailure):
                exc.add_context(f"container {name}")
            raise
        except BaseException:
            for step in reversed(undo):
                with contextlib.suppress(Exception):
                    step()
            raise

    async def _create_with_console(self, name: str, bundle: Path, tty: bool) -> None:
        """A container whose stdin stays open: its stdio held by this daemon (:mod:`.console`), not logged by the
        shim — a terminal's master from the console socket, or pipes."""
        if not tty:
            ends = [os.pipe() for _ in range(3)]
            try:
                await shim.create(name, bundle, self.state_root, None,
                                  stdio=(ends[0][0], ends[1][1], ends[2][1]))  # fmt: skip
            except BaseException:
                for r, w in ends:
                    os.close(r)
                    os.close(w)
                raise
            for fd in (ends[0][0], ends[1][1], ends[2][1]):
                os.close(fd)
            self._consoles[name] = Console(self.log_path(name), pipes=(ends[0][1], ends[1][0], ends[2][0]))
            return
        path = bundle / "console.sock"  # in the 0700 bundle: nobody else can connect
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(path))
            listener.listen(1)
            listener.setblocking(False)
            accepted = asyncio.ensure_future(asyncio.get_running_loop().sock_accept(listener))
            try:
                await shim.create(name, bundle, self.state_root, None, tty=True, console_socket=path)
                conn, _ = await asyncio.wait_for(accepted, HANDOVER_TIMEOUT)
            finally:
                accepted.cancel()
            with conn:
                conn.settimeout(HANDOVER_TIMEOUT)
                _, fds, _, _ = await asyncio.to_thread(socket.recv_fds, conn, 16, 1)
        finally:
            listener.close()
            with contextlib.suppress(OSError):
                path.unlink()
        if not fds:
            raise RuntimeFailure(f"container {name}: the shim sent no terminal")
        self._consoles[name] = Console(self.log_path(name), master=fds[0])

    async def attach(self, cid: ContainerId) -> AttachSession:
        console = self._consoles.get(str(cid))
        if console is None:
            await self._shim_state(str(cid))  # NotFoundError for a container that is not there
            raise ConflictError(f"container {cid}: its stdin is not open (created without stdin_open / -i), so "
                                "there is nothing to attach to but its logs")  # fmt: skip
        return AttachSession(console, lambda: self.wait(cid))

    async def start(self, cid: ContainerId) -> None:
        name = str(cid)
        try:
            await shim.start(name, self.state_root)
        except RuntimeFailure as exc:
            raise RuntimeFailure(exc.message + self._tail_text(name), where=exc.where) from None
        # Watch briefly for a process that dies at once (bad flags, missing config): report it with its output.
        try:
            ended = await asyncio.wait_for(shim.wait(name, self.state_root), self.early_exit_window)
        except TimeoutError:
            return
        raise RuntimeFailure(f"container {name} exited at once with code {ended.code}" + self._tail_text(name))

    def _tail_text(self, name: str) -> str:
        lines = self._read_log_lines(name)[-EARLY_EXIT_LINES:]
        return "; last output:\n" + "\n".join(str(line) for line in lines) if lines else ""

    async def stop(self, cid: ContainerId, timeout: float | None = None) -> ContainerState:
        name = str(cid)
        st = await self._shim_state(name)
        meta = self._meta(name)
        grace = float(timeout if timeout is not None else meta.get("stop_grace_period", DEFAULT_GRACE))
        if st.status in ("created", "running", "paused"):
            if st.status == "paused":
                await shim.unpause(name, self.state_root)
            with contextlib.suppress(ConflictError):
                await shim.kill(name, self.state_root, meta.get("stop_signal", "SIGTERM"))
            try:
                await asyncio.wait_for(shim.wait(name, self.state_root), grace)
            except TimeoutError:
                with contextlib.suppress(ConflictError):
                    await shim.kill(name, self.state_root, _signal.SIGKILL, all=True)
                await shim.wait(name, self.state_root)
        return await self.state(cid)

    async def kill(self, cid: ContainerId, signal: int | str = "KILL") -> None:
        await shim.kill(str(cid), self.state_root, signal)

    async def wait(self, cid: ContainerId) -> ContainerState:
        await shim.wait(str(cid), self.state_root)
        return await self.state(cid)

    async def remove(self, cid: ContainerId, *, force: bool = False) -> None:
        name = str(cid)
        self._forget_cgroups(name)
        meta = self._meta(name)
        if not force:
            with contextlib.suppress(NotFoundError, RuntimeFailure):
                st = await self._shim_state(name)
                if st.status != "stopped":
                    raise ConflictError(f"container {name} is {st.status}: stop it first or remove with force")
        console = self._consoles.pop(name, None)
        if console is not None:
            console.close()
        try:
            with contextlib.suppress(NotFoundError):
                await shim.delete(name, self.state_root, force=True)
        finally:
            # Whatever the shim said (a cgroup still busy, a monitor that died), the rootfs mount and the bundle go:
            # a mount left behind outlives the daemon and pins the image's layers. In a worker thread: unmounting
            # and deleting trees are blocking syscalls, and a down of 50 replicas would stall the loop for seconds.
            await asyncio.to_thread(self._discard_bundle, self.bundles / name, meta.get("anonymous_volumes", []))

    @staticmethod
    def _discard_bundle(bundle: Path, anonymous_volumes: builtins.list[str]) -> None:
        try:
            _unmount(bundle / "rootfs")
        finally:
            shutil.rmtree(bundle, ignore_errors=True)
            for p in anonymous_volumes:
                shutil.rmtree(p, ignore_errors=True)

    async def exec(
        self,
        cid: ContainerId,
        argv: Sequence[str],
        *,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
    ) -> ExecResult:
        oom = cgroups.OomWatch((await self._shim_state(str(cid))).cgroup_paths)
        code, out, err = await shim.exec_output(str(cid), self.state_root, argv, env=env, cwd=workdir, user=user)
        return ExecResult(code, out, err, oom_killed=oom.killed())

    async def exec_session(
        self,
        cid: ContainerId,
        argv: Sequence[str],
        *,
        stdin: bool = False,
        tty: bool = False,
        size: tuple[int, int] | None = None,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
    ) -> ShimExecSession:
        oom = cgroups.OomWatch((await self._shim_state(str(cid))).cgroup_paths)
        return await ShimExecSession.start(
            str(cid), self.state_root, argv, oom, stdin=stdin, tty=tty, size=size, env=env, cwd=workdir, user=user
        )

    def _read_log_lines(self, name: str) -> list[LogLine]:
        return logfile.read_lines(self.log_path(name))

    async def logs(
        self, cid: ContainerId, *, tail: int | None = None, follow: bool = False, since: str | None = None
    ) -> AsyncIterator[LogLine]:
        name = str(cid)
        base = self.log_path(name)
        if not base.exists() and not (self.state_root / name).exists():
            raise NotFoundError(f"container {name} has no logs", where=str(base))

        def ended() -> bool:
            try:
                return shim.read_state(name, self.state_root).status == "stopped"
            except NotFoundError:
                return True

        async for line in logfile.stream(base, tail=tail, follow=follow, since=since, ended=ended):
            yield line

    async def _cgroup_paths(self, name: str) -> tuple[Path, ...]:
        """The container's cgroup directories, read from the shim's state once while it lives."""
        paths = self._cgroups.get(name)
        if paths is None:
            st = await self._shim_state(name)
            paths = st.cgroup_paths
            if st.status in ("created", "running", "paused"):
                self._cgroups[name] = paths
        return paths

    def _forget_cgroups(self, name: str) -> None:
        self._cgroups.pop(name, None)
        files = self._usage.pop(name, None)
        if files is not None:
            self._usage_fds -= len([fd for fd in files.fds or () if fd >= 0])
            files.close()

    def _gone(self, name: str, paths: Sequence[Path]) -> RuntimeFailure:
        # Figures read as zero from a cgroup that is gone would pass for an idle container.
        self._forget_cgroups(name)
        shown = ", ".join(str(p) for p in paths)
        return RuntimeFailure(f"the cgroup of container {name} is gone ({shown})", where=name)

    async def stats(self, cid: ContainerId) -> ContainerStats:
        name = str(cid)
        paths = await self._cgroup_paths(name)
        if paths and not any(p.is_dir() for p in paths):
            raise self._gone(name, paths)
        return cgroups.read_stats(paths)

    async def usage(self, cid: ContainerId) -> ContainerUsage:
        """From descriptors held open on the container's cgroup files while it lives (a quarter of the process's
        descriptor limit at most; past that each sample opens the files it reads)."""
        name = str(cid)
        files = self._usage.get(name)
        if files is None:
            paths = await self._cgroup_paths(name)
            if paths and not any(p.is_dir() for p in paths):
                raise self._gone(name, paths)
            files = cgroups.UsageFiles(paths)
            if name in self._cgroups:  # alive: keep its files open for the next sample
                self._usage[name] = files
                if self._usage_fds + len(files.files) <= _fd_budget():
                    with contextlib.suppress(OSError):  # gone already: the read below says so
                        self._usage_fds += files.hold()
        try:
            return files.read()
        except OSError:
            raise self._gone(name, files.paths) from None

    async def state(self, cid: ContainerId) -> ContainerState:
        return _to_state(await self._shim_state(str(cid)))

    def _info(self, st: shim.ShimState) -> ContainerInfo:
        meta = self._meta(st.id)
        return ContainerInfo(
            id=st.id,
            state=_to_state(st),
            image=meta.get("image", ""),
            created_at=st.created_at,
            bundle=str(st.bundle),
            log_path=str(st.log_path or ""),
            cgroup_paths=tuple(str(p) for p in st.cgroup_paths),
            labels=dict(meta.get("labels", {})),
        )

    async def list(self) -> list[ContainerInfo]:
        return [self._info(st) for st in await shim.list_containers(self.state_root)]

    async def inspect(self, cid: ContainerId) -> ContainerInfo:
        return self._info(await self._shim_state(str(cid)))

    async def pause(self, cid: ContainerId) -> None:
        await shim.pause(str(cid), self.state_root)

    async def unpause(self, cid: ContainerId) -> None:
        await shim.unpause(str(cid), self.state_root)

    async def _running_pid(self, cid: ContainerId) -> int:
        st = await self._shim_state(str(cid))
        return st.pid if st.status in ("running", "paused") else 0

    async def changes(self, cid: ContainerId) -> builtins.list[FileChange]:
        name = str(cid)
        await self._shim_state(name)  # NotFoundError for a container that is not there
        _, layers = await self.images.resolve(self._meta(name).get("image", ""))
        return await asyncio.to_thread(archive.changes, self.bundles / name / "upper", layers)

    async def path_stat(self, cid: ContainerId, path: str) -> PathStat:
        return await archive.path_stat(str(cid), await self._running_pid(cid), path)

    async def get_archive(self, cid: ContainerId, path: str) -> tuple[bytes, PathStat]:
        return await archive.get_archive(str(cid), await self._running_pid(cid), path)

    async def put_archive(self, cid: ContainerId, path: str, tar: bytes) -> None:
        await archive.put_archive(str(cid), await self._running_pid(cid), path, tar)

    async def top(self, cid: ContainerId) -> builtins.list[ProcessInfo]:
        st = await self._shim_state(str(cid))
        boot = time.time() - float(Path("/proc/uptime").read_text().split()[0])
        hz = os.sysconf("SC_CLK_TCK")
        out = []
        for pid in cgroups.procs(st.cgroup_paths):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                status = Path(f"/proc/{pid}/status").read_text()
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            uid = next((int(x.split()[1]) for x in status.splitlines() if x.startswith("Uid:")), 0)
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(boot + int(fields[19]) / hz))
            out.append(ProcessInfo(uid=uid, pid=pid, ppid=int(fields[1]), stime=started, cmd=cmd))
        return out
