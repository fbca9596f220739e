"""Thin async driver of ``zlayer-shim``, the per-container C monitor (csrc/runtime/).

Contract with the rest of zlayer: a standard OCI runtime bundle (``config.json`` + ``rootfs``), consumed as runc
consumes it, and the functions below. Nothing here keeps state in memory: everything lives under
``state_root/<id>/`` so a new daemon re-adopts running containers by calling :func:`state` / :func:`list_containers`.

On-disk layout of ``state_root/<id>/`` (written by the shim, atomically: temp + fsync + rename):

- ``state.json`` – the shim's view (see :class:`ShimState`); rewritten on every transition
  (``created`` → ``running`` → ``stopped``).
- ``ctl.sock`` – the shim's control socket (unix stream). One line per request: ``start`` → ``ok`` or
  ``error <message>``; ``wait`` → the final ``state.json`` line once the container has exited.
- ``cgroups`` – not a file: cgroup directories are listed in ``state.json`` (``cgroup_paths``).

How a container runs: :func:`create` execs ``zlayer-shim create``, which parses ``config.json``, forks a monitor
that leaves the caller's session (it survives the daemon), clones the container init into new namespaces, places it
in its cgroups, sets up the rootfs (mounts, ``pivot_root``), checks that the executable exists, and then blocks it
until :func:`start`. Errors during set-up come back as :class:`~zlayer.errors.RuntimeFailure` naming the container
and the cause, with everything half-made rolled back. The monitor owns the container's stdio: stdout/stderr go to
``log_path`` in the CRI log format (``2026-11-22T10:00:00.123456789Z stdout F line``; ``P`` marks a partial line
split at 16 KiB), rotated when ``log_max_size`` is given (``log_path.1`` … ``log_path.<log_max_files-1>``).
The monitor reaps the init, records exit code / signal / OOM in ``state.json`` and exits; :func:`delete` removes the
cgroups and the state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import signal as _signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from zlayer._native import executable
from zlayer.errors import CommandNotFound, ConflictError, NotFoundError, RuntimeFailure, UsageError

Status = Literal["creating", "created", "running", "paused", "stopped"]

SIGNALS_BY_NAME = {s.name: int(s) for s in _signal.Signals}


@dataclass(frozen=True)
class ShimState:
    """What the shim recorded about one container, as read from ``state_root/<id>/state.json``.

    ``status`` is ``paused`` when the freezer says so, and ``stopped`` once the init has exited (or its monitor died
    with it). ``exit_code`` is the shell-style code (``128 + signal`` after a signal) and is set only when stopped;
    ``exit_signal`` is the signal number when the init was killed by one. ``pid`` is the init's pid on the host
    (0 once stopped). Times are RFC 3339 strings in UTC, empty when not reached yet.
    """

    id: str
    status: Status
    pid: int
    bundle: Path
    shim_pid: int = 0
    exit_code: int | None = None
    exit_signal: int | None = None
    oom_killed: bool = False
    created_at: str = ""
    started_at: str = ""
    finished_at: str = ""
    log_path: Path | None = None
    cgroup_paths: tuple[Path, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)

    def oci_state(self) -> dict[str, Any]:
        """The OCI runtime-spec ``state`` document (what ``runc state`` prints)."""
        return {
            "ociVersion": "1.0.2",
            "id": self.id,
            "status": "creating" if self.status == "creating" else self.status,
            "pid": self.pid,
            "bundle": str(self.bundle),
            "annotations": dict(self.annotations),
        }


@dataclass(frozen=True)
class ExitStatus:
    """How a container (or exec'd process) ended: ``code`` is ``128 + signal`` when killed by a signal."""

    code: int
    signal: int | None = None
    oom_killed: bool = False


def shim_path() -> Path:
    """The compiled ``zlayer-shim`` (``$ZLAYER_SHIM`` overrides it, e.g. to test a sanitizer build)."""
    override = os.environ.get("ZLAYER_SHIM")
    return Path(override) if override else executable("zlayer-shim")


def _container_dir(state_root: Path, container_id: str) -> Path:
    _check_id(container_id)
    return Path(state_root) / container_id


def _check_id(container_id: str) -> None:
    ok = container_id and len(container_id) <= 128 and container_id not in (".", "..")
    if not ok or not all(c.isalnum() or c in "-_.+" for c in container_id):
        raise UsageError(f"invalid container id {container_id!r}: use 1-128 of [A-Za-z0-9_.+-]")


def _parse_state(container_id: str, raw: dict[str, Any]) -> ShimState:
    log = raw.get("log_path") or ""
    return ShimState(
        id=container_id,
        status=raw.get("status", "stopped"),
        pid=int(raw.get("pid") or 0),
        bundle=Path(raw.get("bundle", "")),
        shim_pid=int(raw.get("shim_pid") or 0),
        exit_code=raw.get("exit_code"),
        exit_signal=raw.get("exit_signal"),
        oom_killed=bool(raw.get("oom_killed", False)),
        created_at=raw.get("created_at", ""),
        started_at=raw.get("started_at", ""),
        finished_at=raw.get("finished_at", ""),
        log_path=Path(log) if log else None,
        cgroup_paths=tuple(Path(p) for p in raw.get("cgroup_paths", [])),
        annotations=dict(raw.get("annotations") or {}),
    )


def _pid_start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def _alive(pid: int, start_time: int | None) -> bool:
    if pid <= 0:
        return False
    now = _pid_start_time(pid)
    if now is None:
        return False
    if start_time is not None and now != start_time:
        return False  # the pid was reused by another process
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        return st[st.rindex(")") + 2] != "Z"
    except OSError:
        return False


def _freezer_state(paths: Sequence[Path]) -> str | None:
    for p in paths:
        for name in ("freezer.state", "cgroup.freeze"):
            f = p / name
            if f.exists():
                with contextlib.suppress(OSError):
                    return f.read_text().strip()
    return None


def _read_raw(cdir: Path, container_id: str) -> dict[str, Any]:
    try:
        raw: dict[str, Any] = json.loads((cdir / "state.json").read_text())
    except FileNotFoundError:
        raise NotFoundError(f"container {container_id} does not exist", where=str(cdir)) from None
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(f"container {container_id}: unreadable state.json: {exc}", where=str(cdir)) from None
    return raw


def read_state(container_id: str, state_root: Path) -> ShimState:
    """Synchronous :func:`state` (reads files only, never blocks)."""
    cdir = _container_dir(state_root, container_id)
    raw = _read_raw(cdir, container_id)
    st = _parse_state(container_id, raw)
    if st.status in ("created", "running"):
        if not _alive(st.pid, raw.get("pid_start_time")):
            return _after_init_exit(cdir, container_id, raw)
        if st.status == "running":
            fz = _freezer_state(st.cgroup_paths)
            if fz in ("FROZEN", "FREEZING", "1"):
                return _replace(st, status="paused")
    return st


def _after_init_exit(cdir: Path, container_id: str, raw: dict[str, Any]) -> ShimState:
    # The init is gone: a live monitor records how within moments; a dead one (killed with -9) never will.
    for _ in range(250):
        raw = _read_raw(cdir, container_id)
        if raw.get("status") == "stopped":
            break
        if not _alive(int(raw.get("shim_pid") or 0), raw.get("shim_start_time")):
            raw = _read_raw(cdir, container_id)
            if raw.get("status") != "stopped":
                return _replace(_parse_state(container_id, raw), status="stopped", pid=0)
            break
        time.sleep(0.002)
    return _parse_state(container_id, raw)


def _replace(st: ShimState, **kw: Any) -> ShimState:
    from dataclasses import replace

    return replace(st, **kw)


async def _readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def _run_shim(args: list[str], container_id: str, pass_fds: Sequence[int] = ()) -> str:
    # posix_spawn + a pidfd instead of asyncio's subprocess machinery: no child-watcher thread, no transports;
    # this is on every container's start path.
    exe = str(shim_path())
    r, w = os.pipe()
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    for fd in pass_fds:
        os.set_inheritable(fd, True)
    try:
        pid = os.posix_spawn(
            exe,
            [exe, *args],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull, 0),
                (os.POSIX_SPAWN_DUP2, w, 1),
                (os.POSIX_SPAWN_DUP2, w, 2),
            ],
        )
    finally:
        os.close(w)
        os.close(devnull)
    out = b""
    try:
        os.set_blocking(r, False)
        while True:
            try:
                chunk = os.read(r, 65536)
            except BlockingIOError:
                await _readable(r)
                continue
            if not chunk:
                break
            out += chunk
    finally:
        os.close(r)
    pidfd = os.pidfd_open(pid)
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            await _readable(pidfd)
    finally:
        os.close(pidfd)
    code = os.waitstatus_to_exitcode(status)
    text = out.decode(errors="replace").strip()
    if code != 0:
        raise RuntimeFailure(text or f"zlayer-shim exited with {code}", where=f"container {container_id}")
    return text


async def create(
    container_id: str,
    bundle: Path,
    state_root: Path,
    log_path: Path | None,
    *,
    tty: bool = False,
    log_max_size: int | None = None,
    log_max_files: int | None = None,
    console_socket: Path | None = None,
    stdio: tuple[int, int, int] | None = None,
    pid_file: Path | None = None,
) -> ShimState:
    """Create the container described by ``bundle/config.json``; it is ``created`` and blocked before its exec.

    ``log_path``: the monitor writes stdout/stderr there (CRI format); ``None`` discards output unless ``stdio``
    is given. ``stdio``: three file descriptors the container gets as its fds 0, 1, 2 instead of logging (the OCI
    CLI's pass-through). ``tty``: run the init on a pseudo-terminal (``process.terminal`` in config.json also turns it
    on); its output is logged as ``stdout``, or its master fd is sent to ``console_socket`` when given (OCI
    ``--console-socket`` semantics, SCM_RIGHTS). Raises :class:`ConflictError` if the id exists,
    :class:`RuntimeFailure` (message names the container and the cause, e.g. ``executable file not found:
    /bin/foo``) when set-up fails; nothing is left behind in that case.
    """
    cdir = _container_dir(state_root, container_id)
    if cdir.exists():
        raise ConflictError(f"container {container_id} already exists", where=str(cdir))
    args = ["create", "--root", str(state_root), "--bundle", str(Path(bundle).absolute())]
    if log_path is not None:
        args += ["--log", str(log_path)]
    if log_max_size:
        args += ["--log-max-size", str(int(log_max_size))]
    if log_max_files:
        args += ["--log-max-files", str(int(log_max_files))]
    if tty:
        args.append("--tty")
    if console_socket is not None:
        args += ["--console-socket", str(console_socket)]
    if pid_file is not None:
        args += ["--pid-file", str(pid_file)]
    pass_fds: tuple[int, ...] = ()
    if stdio is not None:
        # fds 0-2 of the shim process are its own pipes: hand the container's stdio over as fresh descriptors
        pass_fds = tuple(os.dup(fd) for fd in stdio)
        args += ["--stdio-fds", ",".join(str(fd) for fd in pass_fds)]
    args.append(container_id)
    try:
        await _run_shim(args, container_id, pass_fds)
    finally:
        for fd in pass_fds:
            os.close(fd)
    return read_state(container_id, state_root)


def _connect(cdir: Path) -> socket.socket:
    # Reach the socket through an O_PATH fd of its directory: state roots can be longer than sun_path allows.
    dfd = os.open(cdir, os.O_PATH | os.O_DIRECTORY)
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(f"/proc/self/fd/{dfd}/ctl.sock")
        except OSError:
            s.close()
            raise
        return s
    finally:
        os.close(dfd)


async def _ctl(cdir: Path, request: str) -> str | None:
    """Send one request line to the monitor; ``None`` when no monitor listens (it has exited)."""
    try:
        sock = _connect(cdir)
    except OSError:
        return None
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, request.encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                break
            buf += chunk
        return buf.decode(errors="replace").strip()
    except OSError:
        return None
    finally:
        sock.close()


async def start(container_id: str, state_root: Path) -> ShimState:
    """Let a ``created`` container exec its process; returns once the exec happened (status ``running``).

    Raises :class:`ConflictError` when the container is not in ``created`` state, :class:`RuntimeFailure` when the
    exec failed (the container is then ``stopped`` with exit code 127 or 126, like a shell).
    """
    cdir = _container_dir(state_root, container_id)
    st = read_state(container_id, state_root)
    if st.status != "created":
        raise ConflictError(f"container {container_id} is {st.status}, not created: cannot start it")
    reply = await _ctl(cdir, "start")
    if reply is None:
        raise RuntimeFailure(f"container {container_id}: its shim is gone", where=str(cdir))
    if reply != "ok":
        msg = reply.removeprefix("error ").strip()
        raise RuntimeFailure(f"container {container_id}: {msg}", where=str(cdir))
    return read_state(container_id, state_root)


async def state(container_id: str, state_root: Path) -> ShimState:
    """The container's current state, from disk (works for containers created by another, dead, daemon).

    Raises :class:`NotFoundError` when there is no such container.
    """
    return read_state(container_id, state_root)


async def list_containers(state_root: Path) -> list[ShimState]:
    """Every container under ``state_root`` (skips half-written or foreign directories)."""
    out: list[ShimState] = []
    root = Path(state_root)
    if not root.is_dir():
        return out
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not (entry / "state.json").exists():
            continue
        with contextlib.suppress(NotFoundError, RuntimeFailure, UsageError):
            out.append(read_state(entry.name, root))
    return out


def _signum(sig: int | str) -> int:
    if isinstance(sig, int):
        return sig
    s = sig.strip().upper()
    if s.isdigit():
        return int(s)
    if not s.startswith("SIG"):
        s = "SIG" + s
    if s not in SIGNALS_BY_NAME:
        raise UsageError(f"unknown signal {sig!r}")
    return SIGNALS_BY_NAME[s]


async def kill(container_id: str, state_root: Path, sig: int | str = _signal.SIGTERM, *, all: bool = False) -> None:
    """Send ``sig`` (number or name, ``TERM``/``SIGTERM``) to the init, or with ``all`` to every process of the
    container (its cgroup). Raises :class:`ConflictError` when the container is not running or created."""
    signum = _signum(sig)
    cdir = _container_dir(state_root, container_id)
    raw = _read_raw(cdir, container_id)
    st = read_state(container_id, state_root)
    if st.status not in ("created", "running", "paused"):
        raise ConflictError(f"container {container_id} is {st.status}: cannot signal it")
    pids = {st.pid}
    if all:
        for p in st.cgroup_paths:
            with contextlib.suppress(OSError):
                pids.update(int(x) for x in (p / "cgroup.procs").read_text().split())
    # pidfd_send_signal cannot hit a recycled pid once the pidfd is open; check it is still the same process.
    for pid in pids:
        try:
            pfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            if pid == st.pid and _pid_start_time(pid) != raw.get("pid_start_time"):
                continue
            _signal.pidfd_send_signal(pfd, signum)
        except ProcessLookupError:
            pass
        finally:
            os.close(pfd)


async def wait(container_id: str, state_root: Path) -> ExitStatus:
    """Wait until the container has exited; returns its exit status (works after a daemon restart)."""
    cdir = _container_dir(state_root, container_id)
    while True:
        st = read_state(container_id, state_root)
        if st.status == "stopped" and st.exit_code is not None:
            return ExitStatus(st.exit_code, st.exit_signal, st.oom_killed)
        if st.status == "stopped":
            return ExitStatus(255, None, False)  # the monitor died without recording the exit
        reply = await _ctl(cdir, "wait")
        if reply is None:
            await asyncio.sleep(0.01)


async def delete(container_id: str, state_root: Path, *, force: bool = False) -> None:
    """Remove a stopped container: its cgroups and state directory (logs stay). With ``force`` a running
    container is killed (SIGKILL) first. Raises :class:`ConflictError` for a live container without ``force``."""
    cdir = _container_dir(state_root, container_id)
    st = read_state(container_id, state_root)
    if st.status != "stopped":
        if not force and st.status != "created":
            raise ConflictError(
                f"container {container_id} is {st.status}: stop it first or delete with force",
                where=str(cdir),
            )
        if st.status == "paused":
            _thaw(st.cgroup_paths)
        await kill(container_id, state_root, _signal.SIGKILL, all=True)
        if st.status == "created":
            await _ctl(cdir, "start")  # a killed created init never execs; this just wakes the monitor
        deadline = time.monotonic() + 10
        while read_state(container_id, state_root).status != "stopped":
            if time.monotonic() > deadline:
                raise RuntimeFailure(f"container {container_id} did not die after SIGKILL", where=str(cdir))
            await asyncio.sleep(0.005)
    await _remove_cgroups(container_id, st.cgroup_paths)
    shutil.rmtree(cdir, ignore_errors=True)


def _thaw(paths: Sequence[Path]) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            if (p / "freezer.state").exists():
                (p / "freezer.state").write_text("THAWED")
            elif (p / "cgroup.freeze").exists():
                (p / "cgroup.freeze").write_text("0")


async def _remove_cgroups(container_id: str, paths: Sequence[Path]) -> None:
    # The kernel frees a cgroup a little after its last task is reaped: EBUSY for a few ms is normal.
    deadline = time.monotonic() + 5
    for p in paths:
        while True:
            try:
                p.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise RuntimeFailure(
                        f"container {container_id}: cannot remove cgroup {p}: {exc.strerror}"
                    ) from None
                await asyncio.sleep(0.002)


async def pause(container_id: str, state_root: Path) -> None:
    """Freeze every process of the container (cgroup freezer)."""
    st = read_state(container_id, state_root)
    if st.status != "running":
        raise ConflictError(f"container {container_id} is {st.status}: only a running container can be paused")
    done = False
    for p in st.cgroup_paths:
        if (p / "freezer.state").exists():
            (p / "freezer.state").write_text("FROZEN")
            done = True
        elif (p / "cgroup.freeze").exists():
            (p / "cgroup.freeze").write_text("1")
            done = True
    if not done:
        raise RuntimeFailure(f"container {container_id}: no freezer cgroup to pause it with")
    for _ in range(1000):
        if _freezer_state(st.cgroup_paths) in ("FROZEN", "1"):
            return
        await asyncio.sleep(0.001)


async def unpause(container_id: str, state_root: Path) -> None:
    """Thaw a paused container."""
    st = read_state(container_id, state_root)
    if st.status != "paused":
        raise ConflictError(f"container {container_id} is {st.status}, not paused")
    _thaw(st.cgroup_paths)


def run_argv(container_id: str, bundle: Path, state_root: Path, log_path: Path | None = None) -> list[str]:
    """The ``zlayer-shim run`` command line: create, start and wait in the foreground, stdio passed through (or
    logged to ``log_path``), cgroups and state removed at the end; its exit code is the container's."""
    _check_id(container_id)
    args = [str(shim_path()), "run", "--root", str(state_root), "--bundle", str(Path(bundle).absolute())]
    if log_path is not None:
        args += ["--log", str(log_path)]
    return [*args, container_id]


def exec_argv(
    container_id: str,
    state_root: Path,
    argv: Sequence[str],
    *,
    env: Sequence[str] | None = None,
    cwd: str | None = None,
    user: str | None = None,
    tty: bool = False,
    console_socket: Path | None = None,
    console_size: tuple[int, int] | None = None,
) -> list[str]:
    """The ``zlayer-shim exec`` command line (see :func:`exec`), for callers that exec or spawn it themselves."""
    _check_id(container_id)
    if not argv:
        raise UsageError("exec needs a command")
    args = [str(shim_path()), "exec", "--root", str(state_root)]
    for e in env or ():
        args += ["--env", e]
    if cwd:
        args += ["--cwd", cwd]
    if user:
        args += ["--user", user]
    if tty:
        if console_socket is None:
            raise UsageError("exec with a tty needs a console socket to receive the pty master")
        args += ["--tty", "--console-socket", str(console_socket)]
        if console_size:
            args += ["--console-size", f"{console_size[0]},{console_size[1]}"]
    return [*args, container_id, "--", *argv]


async def exec(
    container_id: str,
    state_root: Path,
    argv: Sequence[str],
    *,
    env: Sequence[str] | None = None,
    cwd: str | None = None,
    user: str | None = None,
    tty: bool = False,
    console_socket: Path | None = None,
    console_size: tuple[int, int] | None = None,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
) -> asyncio.subprocess.Process:
    """Start ``argv`` inside a running container: all its namespaces, its cgroups, the same seccomp filter,
    capabilities, ``no_new_privs`` and (unless ``user`` = ``uid[:gid]`` overrides) user as its init.

    ``env`` entries (``KEY=VALUE``) are added to the container's process env (later wins). Returns the
    ``zlayer-shim exec`` process: its stdio is the exec'd process' stdio (``stdin``/``stdout``/``stderr`` as for
    :func:`asyncio.create_subprocess_exec`, default pipes), and its return code is the exit code
    (``128 + signal`` after a signal). With ``tty`` the process gets a new pty whose master fd is sent to
    ``console_socket`` (required then), sized ``console_size`` (rows, columns) before the process starts. A set-up
    failure exits with code 255 and a one-line message on stderr
    (:func:`exec_output` turns that into :class:`RuntimeFailure`).
    """
    st = read_state(container_id, state_root)
    if st.status != "running":
        raise ConflictError(f"container {container_id} is {st.status}: exec needs a running container")
    args = exec_argv(container_id, state_root, argv, env=env, cwd=cwd, user=user, tty=tty,
                     console_socket=console_socket, console_size=console_size)  # fmt: skip
    pipe = asyncio.subprocess.PIPE
    return await asyncio.create_subprocess_exec(
        *args,
        stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=stdout if stdout is not None else pipe,
        stderr=stderr if stderr is not None else pipe,
    )


async def exec_output(
    container_id: str,
    state_root: Path,
    argv: Sequence[str],
    *,
    env: Sequence[str] | None = None,
    cwd: str | None = None,
    user: str | None = None,
) -> tuple[int, bytes, bytes]:
    """Buffered :func:`exec`: ``(exit_code, stdout, stderr)``; set-up failures raise :class:`RuntimeFailure`."""
    proc = await exec(container_id, state_root, argv, env=env, cwd=cwd, user=user)
    try:
        out, err = await proc.communicate()
    except asyncio.CancelledError:
        # The caller gave up (a health check or init step timed out): end the process, or every timed-out check
        # leaves one behind in the container. SIGTERM goes through the shim to the process; KILL if it stays.
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(_signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 2.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        raise
    code = proc.returncode if proc.returncode is not None else 255
    if code == 255 and err.startswith(b"zlayer-shim: "):
        raise exec_failure(err.decode(errors="replace").strip().removeprefix("zlayer-shim: "))
    return code, out, err


def exec_failure(message: str) -> RuntimeFailure:
    """An exec the shim could not start: a program that is not in the container is the caller's
    (:class:`CommandNotFound`), anything else the node's."""
    return (CommandNotFound if "executable file not found" in message else RuntimeFailure)(message)
