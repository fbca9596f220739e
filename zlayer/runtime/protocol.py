"""The Runtime protocol: the workload-driver interface, what the agent may ask of any way of running a workload
(linux now; wasm and docker next, and the platform ones).

It follows ZLayer's ``Runtime`` trait (agent-runtime.md §1) in Python naming, the way Nomad task drivers share one
interface (start, wait, stop, destroy, inspect, stats, exec): every driver implements all of it, takes the typed,
validated service spec, and the agent never asks which one it has — :class:`zlayer.runtime.Drivers` picks one by the
spec. Everything else here is plain data: ids, states, stats, exec results and log lines.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from zlayer.errors import UsageError

if TYPE_CHECKING:
    from zlayer.spec.models import ServiceSpec

Status = Literal["pending", "initializing", "running", "paused", "stopping", "exited", "failed"]
Stream = Literal["stdout", "stderr"]
WaitReason = Literal["exited", "signal", "oom_killed", "runtime_error"]

_REPLICA_TAIL = re.compile(r"^(?P<service>.+)-(?P<role>[^-]+)-(?P<replica>\d+)$")


@dataclass(frozen=True, order=True)
class ContainerId:
    """One replica of one service, named as ZLayer names it.

    ``str()`` gives ZLayer's display form: ``{service}-rep-{replica}`` for the default role on node 0 (``web-rep-1``),
    else ``{service}-{role}-{replica}-on-{node_id}``. That string is also the container's hostname, cgroup leaf and
    on-disk id (ZLayer's youki backend used ``{service}-{replica}`` on disk, which collides between roles; we do not).
    """

    service: str
    replica: int
    role: str = "default"
    node_id: int = 0

    def __post_init__(self) -> None:
        if not self.service:
            raise UsageError("container id: service name is empty")
        if self.replica < 0:
            raise UsageError(f"container id: replica {self.replica} is negative")

    def __str__(self) -> str:
        if self.role == "default" and self.node_id == 0:
            return f"{self.service}-rep-{self.replica}"
        return f"{self.service}-{self.role}-{self.replica}-on-{self.node_id}"

    @classmethod
    def parse(cls, text: str) -> ContainerId:
        """Invert ``str()``: anchor on the rightmost ``-on-``, else the rightmost ``-rep-``."""
        head, sep, node = text.rpartition("-on-")
        if sep and node.isdigit():
            m = _REPLICA_TAIL.match(head)
            if m:
                return cls(m["service"], int(m["replica"]), m["role"], int(node))
        head, sep, rep = text.rpartition("-rep-")
        if sep and head and rep.isdigit():
            return cls(head, int(rep))
        raise UsageError(f"invalid container id {text!r}: expected SERVICE-rep-N or SERVICE-ROLE-N-on-NODE")


@dataclass(frozen=True)
class ContainerState:
    """Where a container is in its life. ``status`` strings are ZLayer's (plus ``paused``, which ZLayer folds into
    ``stopping``). ``exit_code`` is set once exited (``128 + n`` after signal n); ``reason`` says why it ended
    (a :data:`WaitReason`) or why it failed."""

    status: Status
    exit_code: int | None = None
    signal: int | None = None
    oom_killed: bool = False
    reason: str = ""
    pid: int = 0
    started_at: str = ""
    finished_at: str = ""
    ip: str = ""  # the address the workload listens on when its driver chose it (a WASM HTTP replica's loopback)

    @property
    def running(self) -> bool:
        return self.status in ("running", "paused")


@dataclass(frozen=True)
class ContainerStats:
    """One sample of a container's resource use, from its cgroups. Absent figures are ``None``."""

    cpu_usage_ns: int
    memory_usage_bytes: int
    memory_limit_bytes: int | None = None
    memory_max_usage_bytes: int | None = None
    pids_current: int = 0
    pids_limit: int | None = None
    io_read_bytes: int = 0
    io_write_bytes: int = 0
    oom_kills: int = 0
    timestamp: float = 0.0
    calls: int | None = None  # a WASM HTTP replica's handle calls, those that failed, its pooled instances
    call_errors: int | None = None
    instances: int | None = None


@dataclass(frozen=True)
class ContainerUsage:
    """The part of :class:`ContainerStats` the autoscaler samples from every replica every round: CPU time so far
    and memory in use against its limit (``None``: none)."""

    cpu_usage_ns: int
    memory_usage_bytes: int
    memory_limit_bytes: int | None = None


@dataclass(frozen=True)
class ExecResult:
    """A finished exec: exit code (``128 + n`` after signal n) and its whole output. ``oom_killed``: the kernel's
    OOM killer ended a process of the container (at its memory limit) while the exec ran."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    oom_killed: bool = False


@runtime_checkable
class ExecSession(Protocol):
    """A command running in a container with its stdio attached (``zlayer exec -i``/``-t``). Output arrives as
    ``(stream, bytes)`` pieces in the order each stream wrote them (a terminal has only ``stdout``); ``wait`` gives
    the exit code and OOM kill once the process has ended (its ``ExecResult`` carries no output: it was streamed)."""

    def output(self) -> AsyncIterator[tuple[Stream, bytes]]: ...

    async def write(self, data: bytes) -> None:
        """Send bytes to the process's stdin (ignored when stdin was not asked for or the process closed it)."""
        ...

    async def close_stdin(self) -> None:
        """End of input: the process reads EOF (on a terminal, the line discipline's EOF character)."""
        ...

    def resize(self, rows: int, cols: int) -> None:
        """The terminal's new size (nothing without a terminal)."""
        ...

    async def wait(self) -> ExecResult: ...

    def kill(self) -> None:
        """End the process (SIGKILL) when its client went away."""
        ...


@dataclass(frozen=True)
class LogLine:
    """One line a container wrote. ``timestamp`` is RFC 3339 with nanoseconds, UTC, as the shim recorded it."""

    timestamp: str
    stream: Stream
    message: str

    def __str__(self) -> str:
        return f"[{self.stream}] {self.message}"


@dataclass(frozen=True)
class ProcessInfo:
    """One row of ``top``: host pid, parent, user id, start time (RFC 3339) and command line."""

    uid: int
    pid: int
    ppid: int
    stime: str
    cmd: str


@dataclass(frozen=True)
class PathStat:
    """A path in a container: its name, size, ``st_mode`` (type and permission bits), mtime (RFC 3339) and, for a
    symlink, its target."""

    name: str
    size: int
    mode: int
    mtime: str
    link_target: str = ""


@dataclass(frozen=True)
class FileChange:
    """One path a container changed against its image: ``kind`` 0 modified, 1 added, 2 deleted (Docker's)."""

    path: str
    kind: int


@dataclass(frozen=True)
class ContainerInfo:
    """What ``inspect``/``list`` report about one container."""

    id: str
    state: ContainerState
    image: str = ""
    created_at: str = ""
    bundle: str = ""
    log_path: str = ""
    cgroup_paths: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Runtime(Protocol):
    """Every way zlayer runs a workload. All methods are coroutines; errors are :mod:`zlayer.errors` classes
    (``NotFoundError`` for an unknown container, ``ConflictError`` for a wrong state, ``RuntimeFailure`` for the
    rest), each naming the container and the cause."""

    #: True when the driver's workloads live in the node's own network namespace (a WASM guest has no namespace of
    #: its own): the agent then plumbs no interface for them.
    host_network: bool

    async def pull(self, image: str, *, policy: str = "if_not_present") -> None:
        """Make ``image`` available locally (``always`` | ``newer`` | ``if_not_present`` | ``never``)."""
        ...

    async def create(self, cid: ContainerId, service: ServiceSpec, *, dns: Sequence[str] = ()) -> None:
        """Build the container from a validated service spec (``dns``: the node's DNS servers, put before the
        spec's own); it exists but has not started. Half-made state is rolled back on failure, and a failure is
        never a spec error: the spec was checked when it was deployed."""
        ...

    async def start(self, cid: ContainerId) -> None:
        """Run the created container's process. A process that exits at once is reported with its exit code and
        its last log lines."""
        ...

    async def stop(self, cid: ContainerId, timeout: float | None = None) -> ContainerState:
        """Send the stop signal, then SIGKILL after ``timeout`` (default: the spec's ``stop_grace_period``, 10 s)."""
        ...

    async def kill(self, cid: ContainerId, signal: int | str = "KILL") -> None:
        """Send a signal to the container's init (``KILL``, ``TERM``, ``SIGHUP``, ``9`` ...)."""
        ...

    async def wait(self, cid: ContainerId) -> ContainerState:
        """Wait until the container has exited; returns its final state (exit code, signal, OOM)."""
        ...

    async def remove(self, cid: ContainerId, *, force: bool = False) -> None:
        """Delete the container and everything it owns (not its logs or named volumes). Idempotent."""
        ...

    async def exec(
        self,
        cid: ContainerId,
        argv: Sequence[str],
        *,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
    ) -> ExecResult:
        """Run ``argv`` inside the running container and collect its output."""
        ...

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
    ) -> ExecSession:
        """Start ``argv`` in the running container with its output streamed and, with ``stdin``, its input fed by
        the caller; with ``tty`` on a new terminal of the container's, ``size`` (rows, columns) from the start
        (stdout and stderr are then one stream)."""
        ...

    async def attach(self, cid: ContainerId) -> ExecSession:
        """The container's own stdio, for a container created with ``stdin_open`` (``docker run -i``/``-it``): its
        output as it comes (already logged as well), its stdin fed by the caller; ``wait`` waits for the container's
        exit. ``ConflictError`` for a container whose stdin is not open; ``kill`` only detaches."""
        ...

    def logs(
        self, cid: ContainerId, *, tail: int | None = None, follow: bool = False, since: str | None = None
    ) -> AsyncIterator[LogLine]:
        """The container's output lines, oldest first; ``follow`` keeps streaming until the container is gone."""
        ...

    async def stats(self, cid: ContainerId) -> ContainerStats:
        """Resource use now (CPU time, memory, pids, I/O)."""
        ...

    async def usage(self, cid: ContainerId) -> ContainerUsage:
        """CPU time and memory now, the same figures as :meth:`stats`, read as cheaply as the driver can (the
        autoscaler asks for every replica every round). A container whose figures are gone (its cgroup removed)
        raises ``RuntimeFailure`` rather than reading as idle."""
        ...

    async def state(self, cid: ContainerId) -> ContainerState:
        """The container's current state."""
        ...

    async def list(self) -> list[ContainerInfo]:
        """Every container this runtime knows, including ones created by an earlier daemon process."""
        ...

    async def inspect(self, cid: ContainerId) -> ContainerInfo:
        """Details of one container."""
        ...

    async def pause(self, cid: ContainerId) -> None:
        """Freeze every process of the container."""
        ...

    async def unpause(self, cid: ContainerId) -> None:
        """Thaw a paused container."""
        ...

    async def top(self, cid: ContainerId) -> builtins.list[ProcessInfo]:
        """The processes running in the container."""
        ...

    async def changes(self, cid: ContainerId) -> builtins.list[FileChange]:
        """What the container changed in its filesystem against its image."""
        ...

    async def path_stat(self, cid: ContainerId, path: str) -> PathStat:
        """A path of the running container (``NotFoundError`` when it has none)."""
        ...

    async def get_archive(self, cid: ContainerId, path: str) -> tuple[bytes, PathStat]:
        """A path of the running container as a tar, and its stat."""
        ...

    async def put_archive(self, cid: ContainerId, path: str, tar: bytes) -> None:
        """Unpack a tar into a directory of the running container."""
        ...


__all__ = [
    "ContainerId",
    "ContainerInfo",
    "ContainerState",
    "ContainerStats",
    "ContainerUsage",
    "ExecResult",
    "ExecSession",
    "FileChange",
    "LogLine",
    "PathStat",
    "ProcessInfo",
    "Runtime",
    "Status",
    "Stream",
    "WaitReason",
]
