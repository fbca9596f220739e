"""What this node accepts from a service spec (its Linux containers and its proxy), checked when it is deployed.

ZLayer's parser leaves these fields unchecked (spec-and-cli.md §7) and its runtime refuses bad values when it builds
the container — after the API has answered. Here they are refused with the spec's other problems, at their field
path, so that a container create never fails on the spec. The runtime (``zlayer.runtime.linux.bundle``) reads the
same tables and helpers, so what is accepted here is exactly what it can build. Only facts of the spec are checked;
facts of the node (a bind source, a seccomp profile file, a user in the image) are the runtime's.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal as _signal
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from zlayer.spec.scalars import parse_duration, parse_size

if TYPE_CHECKING:
    from zlayer.spec.models import DeploymentSpec, ServiceSpec

PathT = tuple[str | int, ...]

# Every capability by number (capability.h); privileged containers get those the kernel knows.
ALL_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip

RLIMITS = {
    "cpu": "RLIMIT_CPU", "fsize": "RLIMIT_FSIZE", "data": "RLIMIT_DATA", "stack": "RLIMIT_STACK",
    "core": "RLIMIT_CORE", "rss": "RLIMIT_RSS", "nproc": "RLIMIT_NPROC", "nofile": "RLIMIT_NOFILE",
    "memlock": "RLIMIT_MEMLOCK", "as": "RLIMIT_AS", "locks": "RLIMIT_LOCKS", "sigpending": "RLIMIT_SIGPENDING",
    "msgqueue": "RLIMIT_MSGQUEUE", "nice": "RLIMIT_NICE", "rtprio": "RLIMIT_RTPRIO", "rttime": "RLIMIT_RTTIME",
}  # fmt: skip
RLIM_INFINITY = 2**64 - 1

IPC_SYSCTLS = frozenset(
    {"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall", "kernel.shmmax",
     "kernel.shmmni", "kernel.shm_rmid_forced"}
)  # fmt: skip

DEFAULT_SESSION_TIMEOUT = 60.0  # seconds a UDP session lives without traffic (ZLayer's)
# ZLayer's load-balancer strategies (LbStrategy, named as its API shows them). Its spec has no field for them, so a
# service picks one with a label: STRATEGY_LABEL for all its HTTP endpoints, STRATEGY_LABEL + ".<endpoint>" for one.
STRATEGIES = ("round_robin", "least_connections")
STRATEGY_LABEL = "zlayer.proxy.strategy"
MIN_MEMORY = 4 * 1024 * 1024  # below this the kernel cannot run a container's init
VOLUME_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_CPUSET = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")
_SECURITY_OPT = re.compile(r"^([a-z-]+)[=:](.*)$")
_MODE_OK = ("", "default", "private", "bridge", "none", "shareable")


def cap_name(name: str) -> str:
    """``net_admin`` / ``NET_ADMIN`` / ``CAP_NET_ADMIN`` → ``CAP_NET_ADMIN`` (``CAP_ALL`` for ``all``); raises
    ``ValueError`` for a capability no kernel has."""
    n = name.strip().upper()
    if not n.startswith("CAP_"):
        n = "CAP_" + n
    if n != "CAP_ALL" and n not in ALL_CAPS:
        raise ValueError(f"unknown capability {name!r}")
    return n


def security_opts(items: list[str]) -> dict[str, str]:
    """``security_opt`` entries as ``{key: value}`` (``key=value`` or Docker's older ``key:value``)."""
    out: dict[str, str] = {}
    for item in items:
        m = _SECURITY_OPT.match(item)
        if m:
            out[m.group(1)] = m.group(2)
        elif item == "no-new-privileges":
            out["no-new-privileges"] = "true"
        else:
            raise ValueError(f"{item!r}: expected seccomp=PATH|unconfined or no-new-privileges")
        key = m.group(1) if m else item
        if key not in ("seccomp", "no-new-privileges", "apparmor", "label"):
            raise ValueError(f"{item!r}: unknown option {key!r}")
    return out


def ulimit_values(soft: int | None, hard: int | None) -> tuple[int, int]:
    """(soft, hard) as the kernel takes them: a negative value is unlimited."""
    s = RLIM_INFINITY if (soft or 0) < 0 else int(soft or 0)
    h = RLIM_INFINITY if (hard or 0) < 0 else int(hard or 0)
    return s, h


def signal_name(text: str) -> str:
    """``quit``, ``SIGQUIT`` or ``3`` → ``SIGQUIT``; raises ``ValueError`` for what is not a signal."""
    sig = text.strip().upper()
    if sig.isdigit():
        if int(sig) not in {int(s) for s in _signal.Signals}:
            raise ValueError(f"{sig}: not a signal number")
        return _signal.Signals(int(sig)).name
    name = sig if sig.startswith("SIG") else "SIG" + sig
    if name not in _signal.Signals.__members__:
        raise ValueError(f"{text!r}: unknown signal")
    return name


def namespace_mode(value: str | None) -> str:
    """A ``*_mode`` value in its canonical form: ``host``, ``container:<id>``, or one meaning a private one."""
    mode = (value or "").strip()
    if mode == "host" or mode in _MODE_OK or mode.startswith("bridge:"):
        return mode
    if mode.startswith(("container:", "service:")):
        if not mode.partition(":")[2]:
            raise ValueError(f"{mode!r}: name the container to join")
        return mode
    raise ValueError(f"{mode!r}: expected host, private or container:<id>")


def own_namespaces(spec: ServiceSpec) -> tuple[bool, bool]:
    """(own network namespace, own IPC namespace): neither shared with the host nor joined from a container."""

    def own(mode: str | None) -> bool:
        m = (mode or "").strip()
        return m != "host" and not m.startswith(("container:", "service:"))

    return own(spec.network_mode), own(spec.ipc_mode)


def tmpfs_size(text: str) -> int | str:
    """A tmpfs ``size``: bytes (``64Mi``, ``1g``, ``1048576``) or a share of memory (``50%``)."""
    s = text.strip()
    if re.fullmatch(r"\d+%", s):
        return s
    return parse_size(s)


def tmpfs_mode(mode: int) -> str:
    """YAML reads ``mode: 1777`` as the decimal 1777; people mean octal, so digits 0-7 are read as octal."""
    digits = str(mode)
    if not digits.isdigit() or any(c in "89" for c in digits) or int(digits, 8) > 0o7777:
        raise ValueError(f"{mode!r}: expected an octal file mode such as 1777 or 755")
    return digits.lstrip("0") or "0"


def lb_strategy(labels: Mapping[str, str], endpoint: str) -> str:
    """The balancing strategy a service's labels choose for one endpoint (round_robin when none does); raises
    ``ValueError`` for one that does not exist."""
    for key in (f"{STRATEGY_LABEL}.{endpoint}", STRATEGY_LABEL):
        if key in labels:
            value = labels[key].strip().lower().replace("-", "_")
            if value not in STRATEGIES:
                raise ValueError(f"load-balancing strategy must be one of {', '.join(STRATEGIES)}, got {labels[key]!r}")
            return value
    return "round_robin"


def session_timeout_seconds(text: str | None) -> float:
    """A stream's ``session_timeout`` in seconds (60 s when unset); raises ``ValueError`` unless it is a positive
    duration."""
    if text is None or text == "":
        return DEFAULT_SESSION_TIMEOUT
    try:
        seconds = parse_duration(text)
    except ValueError as e:
        raise ValueError(f"invalid duration {text!r}: {e}") from None
    if seconds <= 0:
        raise ValueError(f"session_timeout must be positive, got {text!r}")
    return seconds


def _endpoints(spec: ServiceSpec) -> Iterator[tuple[PathT, str]]:
    from zlayer.spec.models import UdpProbeCheck

    for i, ep in enumerate(spec.endpoints):
        at: PathT = ("endpoints", i)
        if ep.protocol in ("http", "https", "websocket"):
            try:
                lb_strategy(spec.labels, ep.name)
            except ValueError as e:
                key = next(k for k in (f"{STRATEGY_LABEL}.{ep.name}", STRATEGY_LABEL) if k in spec.labels)
                yield ("labels", key), str(e)
        stream = ep.stream
        if stream is None:
            continue
        try:
            session_timeout_seconds(stream.session_timeout)
        except ValueError as e:
            yield (*at, "stream", "session_timeout"), str(e)
        check = stream.health_check
        if isinstance(check, UdpProbeCheck) and check.expect is not None:
            try:
                re.compile(check.expect)
            except re.error as e:
                yield (*at, "stream", "health_check", "expect"), f"expect is not a valid regex: {e}"


def _each(spec: ServiceSpec) -> Iterator[tuple[PathT, str]]:
    for key in spec.env:
        if not key or "=" in key:
            yield ("env", key), "invalid variable name"
    workdir = spec.command.workdir
    if workdir is not None and not workdir.startswith("/"):
        yield ("command", "workdir"), f"{workdir!r}: the working directory must be an absolute path"
    for field in ("capabilities", "cap_drop"):
        for i, cap in enumerate(getattr(spec, field)):
            try:
                cap_name(cap)
            except ValueError as e:
                yield (field, i), str(e)
    for i, item in enumerate(spec.security_opt):
        try:
            security_opts([item])
        except ValueError as e:
            yield ("security_opt", i), str(e)
    for name, lim in spec.ulimits.items():
        if name.lower() not in RLIMITS:
            yield ("ulimits", name), f"unknown limit; expected one of {', '.join(RLIMITS)}"
            continue
        soft, hard = ulimit_values(lim.soft, lim.hard)
        if soft > hard:
            yield ("ulimits", name), f"soft limit {soft} is above the hard limit {hard}"
    own_net, own_ipc = own_namespaces(spec)
    for key in spec.sysctls:
        if key.startswith("net."):
            if not own_net:
                yield ("sysctls", key), "not allowed with the host's network (it would change the host)"
        elif key in IPC_SYSCTLS or key.startswith("fs.mqueue."):
            if not own_ipc:
                yield ("sysctls", key), "not allowed with the host's IPC namespace (it would change the host)"
        else:
            yield (
                ("sysctls", key),
                (
                    "not a namespaced sysctl; a container may set only net.*, kernel.msg*, kernel.sem, kernel.shm* "
                    "and fs.mqueue.*"
                ),
            )
    yield from _resources(spec)
    yield from _scale(spec)
    for i, dev in enumerate(spec.devices):
        if not dev.path.startswith("/dev/"):
            yield ("devices", i, "path"), f"{dev.path!r}: expected a device under /dev/"
        if not (dev.read or dev.write or dev.mknod):
            yield ("devices", i), "read, write and mknod are all false"
    for field in ("pid_mode", "ipc_mode", "network_mode", "userns_mode"):
        try:
            namespace_mode(getattr(spec, field))
        except ValueError as e:
            yield (field,), str(e)
    if spec.stop_signal is not None:
        try:
            signal_name(spec.stop_signal)
        except ValueError as e:
            yield ("stop_signal",), str(e)
    yield from _storage(spec)
    yield from _endpoints(spec)
    for i, item in enumerate(spec.extra_hosts):
        name, sep, addr = item.partition(":")
        if not sep or not name:
            yield ("extra_hosts", i), f"{item!r}: expected HOST:IP"
        elif addr != "host-gateway" and not _is_ip(addr.strip("[]")):
            yield ("extra_hosts", i), f"{item!r}: {addr!r} is not an IP address"
    for i, server in enumerate(spec.dns):
        if not _is_ip(server):
            yield ("dns", i), f"{server!r} is not an IP address"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _scale(spec: ServiceSpec) -> Iterator[tuple[PathT, str]]:
    """Autoscaling targets a replica could never reach (it would sit at max, or never scale): percentages past 100
    (CPU is a share of the whole node, memory of the replica's limit), zero targets (always reached), and a CPU
    target above what the replica's own CPU limit lets it use of this node."""
    from zlayer.spec.models import AdaptiveScale

    s = spec.scale
    if not isinstance(s, AdaptiveScale):
        return
    at: PathT = ("scale", "targets")
    t = s.targets
    for name, value in (("cpu", t.cpu), ("memory", t.memory)):
        if value is not None and not 1 <= value <= 100:
            yield (*at, name), f"{value}: a {name} target is a percentage, 1 to 100 (of the {_OF[name]})"
    if t.rps is not None and t.rps < 1:
        yield (*at, "rps"), "0: a requests-per-second target must be at least 1 (0 is always reached)"
    cpus = os.cpu_count() or 1
    limit = spec.resources.cpu
    if t.cpu is not None and 1 <= t.cpu <= 100 and limit is not None and limit > 0:
        reachable = 100.0 * limit / cpus
        if t.cpu > reachable:
            yield (
                (*at, "cpu"),
                (
                    f"{t.cpu}% of the node can never be reached: resources.cpu {limit:g} lets a replica use at most "
                    f"{reachable:.1f}% of this node's {cpus} CPUs"
                ),
            )


_OF = {"cpu": "node's CPU time", "memory": "replica's memory limit, or the node's memory without one"}


def _resources(spec: ServiceSpec) -> Iterator[tuple[PathT, str]]:
    r = spec.resources
    at: PathT = ("resources",)
    if r.cpuset and not _CPUSET.fullmatch(r.cpuset):
        yield (*at, "cpuset"), f"{r.cpuset!r}: expected a CPU list such as 0-3 or 0,2"
    limit: int | None = None
    if r.memory:
        try:
            limit = parse_size(r.memory)
        except ValueError:
            pass  # the spec's own memory rule reports it
        else:
            if limit < MIN_MEMORY:
                yield (*at, "memory"), f"{r.memory!r}: the minimum is 4Mi (the kernel needs more)"
    if r.memory_reservation:
        try:
            parse_size(r.memory_reservation)
        except ValueError as e:
            yield (*at, "memory_reservation"), str(e)
    if r.memory_swap and r.memory_swap.strip() != "-1":
        try:
            swap = parse_size(r.memory_swap)
        except ValueError as e:
            yield (*at, "memory_swap"), str(e)
        else:
            if not r.memory:
                yield (*at, "memory_swap"), "needs resources.memory as well"
            elif limit is not None and swap < limit:
                yield (*at, "memory_swap"), "is memory + swap (Docker's meaning), so it cannot be below memory"


def _storage(spec: ServiceSpec) -> Iterator[tuple[PathT, str]]:
    from zlayer.spec.models import BindStorage, NamedStorage, S3Storage, TmpfsStorage

    for i, entry in enumerate(spec.storage):
        at: PathT = ("storage", i)
        target = entry.target
        if not target.startswith("/"):
            yield (*at, "target"), f"{target!r}: must be an absolute path in the container"
        elif ".." in target.split("/"):
            yield (*at, "target"), f"{target!r}: must not contain '..'"
        if isinstance(entry, BindStorage) and not entry.source.startswith("/"):
            yield (*at, "source"), f"{entry.source!r}: a bind source must be an absolute host path"
        elif isinstance(entry, NamedStorage) and not VOLUME_NAME.match(entry.name):
            yield (*at, "name"), f"{entry.name!r}: use 1-63 of [a-z0-9-], starting and ending alnum"
        elif isinstance(entry, TmpfsStorage):
            if entry.size:
                try:
                    tmpfs_size(entry.size)
                except ValueError:
                    yield (*at, "size"), f"{entry.size!r}: expected a size like 64Mi, 1G or 50%"
            if entry.mode is not None:
                try:
                    tmpfs_mode(entry.mode)
                except ValueError as e:
                    yield (*at, "mode"), str(e)
        elif isinstance(entry, S3Storage):
            yield at, "s3 volumes need s3fs (FUSE), which zlayer nodes do not provide"


def container_problems(spec: DeploymentSpec) -> list[tuple[PathT, str]]:
    """Every value of the deployment's services that no Linux container could be built from, with its path."""
    return [(("services", name, *path), msg) for name, svc in spec.services.items() for path, msg in _each(svc)]


__all__ = [
    "ALL_CAPS",
    "DEFAULT_SESSION_TIMEOUT",
    "IPC_SYSCTLS",
    "MIN_MEMORY",
    "RLIMITS",
    "RLIM_INFINITY",
    "STRATEGIES",
    "STRATEGY_LABEL",
    "cap_name",
    "container_problems",
    "lb_strategy",
    "namespace_mode",
    "own_namespaces",
    "security_opts",
    "session_timeout_seconds",
    "signal_name",
    "tmpfs_mode",
    "tmpfs_size",
    "ulimit_values",
]
