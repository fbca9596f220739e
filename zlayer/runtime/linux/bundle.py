"""Write a standard OCI runtime ``config.json`` from a service spec and an image config.

The result is plain OCI (runtime-spec 1.0.2): ``runc run`` accepts it as it is, and so does ``zlayer-shim``.
Docker's rules are followed wherever ZLayer's spec leaves a choice, and where ZLayer's youki backend differs the
difference is noted:

- argv: ``command.entrypoint`` replaces the image ENTRYPOINT and drops its CMD; ``command.args`` replaces CMD and is
  appended to the (image or spec) entrypoint. (ZLayer runs args alone, without the image ENTRYPOINT; Docker doesn't.)
  Nothing at all is an error, as in Docker (ZLayer falls back to ``/bin/sh``).
- env: image ``Env``, then the spec's ``env`` (later wins); ``PATH`` defaulted, ``HOSTNAME`` set, ``TERM=xterm``
  with a tty. ``$E:NAME`` takes the daemon's variable; ``$S:`` needs a secrets resolver.
- user: ``user`` from the spec, else the image's ``User``, resolved in the image's own /etc/passwd and /etc/group.
- security: Docker's 14 default capabilities, ``cap_add``/``cap_drop`` (``ALL`` allowed) and ``privileged``
  (every capability, no seccomp, every device, no masked paths); Docker's default seccomp profile, or
  ``security_opt: seccomp=PATH|unconfined``; ``no_new_privs`` unless privileged or capabilities were added
  (ZLayer's rule; ``security_opt: no-new-privileges[=true|false]`` overrides).
- ulimits above this host's hard limit are **clamped to it with a warning** (the container still starts; the
  warning names the limit, what was asked and what was given).
- sysctls: only namespaced ones (``net.*`` with its own network, ``kernel.msg*``, ``kernel.sem``, ``kernel.shm*``,
  ``fs.mqueue.*`` with its own IPC namespace).

The spec arrives validated (:func:`zlayer.spec.parse_deployable` refused what no container can be built from, with
its field path, using the tables of :mod:`zlayer.spec.container` that this module reads too); what is left to fail
here are facts of the image and the node, raised as :class:`RuntimeFailure`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zlayer.errors import RuntimeFailure
from zlayer.runtime.linux import seccomp as _seccomp
from zlayer.runtime.linux.users import ResolvedUser, resolve_user
from zlayer.spec.container import (
    ALL_CAPS,
    RLIM_INFINITY,
    RLIMITS,
    cap_name,
    namespace_mode,
    security_opts,
    signal_name,
    ulimit_values,
)
from zlayer.spec.scalars import parse_size

log = logging.getLogger("zlayer.runtime")

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
)  # fmt: skip

MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)  # fmt: skip
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# Docker's default device cgroup rules: mknod of anything, and use of the standard nodes.
DEFAULT_DEVICE_RULES: tuple[tuple[str, int | None, int | None, str], ...] = (
    ("c", None, None, "m"), ("b", None, None, "m"),
    ("c", 1, 3, "rwm"), ("c", 1, 5, "rwm"), ("c", 1, 7, "rwm"), ("c", 1, 8, "rwm"), ("c", 1, 9, "rwm"),
    ("c", 5, 0, "rwm"), ("c", 5, 1, "rwm"), ("c", 5, 2, "rwm"), ("c", 136, None, "rwm"), ("c", 10, 200, "rwm"),
)  # fmt: skip

if TYPE_CHECKING:
    from zlayer.spec.models import ServiceSpec

SecretResolver = Callable[[str], str]


def image_settings(image_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``config`` object of an OCI image config (accepts the whole document or just that object)."""
    if not image_config:
        return {}
    inner = image_config.get("config")
    if isinstance(inner, Mapping):
        return dict(inner)
    return dict(image_config)


# ---------------------------------------------------------------- argv, env, cwd


def resolve_argv(spec: ServiceSpec, image_cfg: Mapping[str, Any], image: str = "") -> list[str]:
    """Docker's rule: spec entrypoint replaces ENTRYPOINT and resets CMD; spec args replace CMD."""
    entrypoint, args = spec.command.entrypoint, spec.command.args
    if entrypoint is not None:
        argv = [*entrypoint, *(args or [])]
    else:
        img_ep = list(image_cfg.get("Entrypoint") or [])
        argv = [*img_ep, *(args if args is not None else list(image_cfg.get("Cmd") or []))]
    if not argv or not argv[0]:
        raise RuntimeFailure(
            f"no command: image {image or '?'} has no ENTRYPOINT or CMD and the spec gives none",
            hint="set command.entrypoint or command.args",
        )
    return [str(a) for a in argv]


def _set_env(env: list[str], key: str, value: str) -> None:
    prefix = key + "="
    env[:] = [e for e in env if not (e == key or e.startswith(prefix))]
    env.append(prefix + value)


def resolve_env(
    spec: ServiceSpec,
    image_cfg: Mapping[str, Any],
    *,
    hostname: str,
    tty: bool,
    host_env: Mapping[str, str] | None = None,
    secrets: SecretResolver | None = None,
) -> list[str]:
    """Image ``Env`` then spec ``env`` (later wins), plus PATH/HOSTNAME (and TERM with a tty) as Docker sets them.
    ``$E:NAME`` takes the daemon's variable and ``$S:NAME`` a secret: facts of the node, so a missing one is a
    :class:`RuntimeFailure` naming the variable."""
    host_env = os.environ if host_env is None else host_env
    env: list[str] = []
    for item in image_cfg.get("Env") or []:
        key = str(item).partition("=")[0]
        _set_env(env, key, str(item).partition("=")[2])
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, "PATH=" + DEFAULT_PATH)
    _set_env(env, "HOSTNAME", hostname)
    if tty and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=xterm")
    for key, value in spec.env.items():
        if value.startswith("$E:"):
            name = value[3:]
            if name not in host_env:
                raise RuntimeFailure(
                    f"env.{key}: $E:{name} refers to {name}, which is not set in the daemon's environment"
                )
            value = host_env[name]
            if not value:
                log.warning("env.%s: $E:%s is empty in the daemon's environment", key, name)
        elif value.startswith("$S:"):
            if secrets is None:
                raise RuntimeFailure(f"env.{key}: secret reference {value} needs a secrets store, and none is attached")
            value = secrets(value[3:])
        _set_env(env, key, value)
    return env


def resolve_cwd(spec: ServiceSpec, image_cfg: Mapping[str, Any]) -> str:
    cwd = spec.command.workdir or image_cfg.get("WorkingDir") or "/"
    if not str(cwd).startswith("/"):  # the spec's workdir is checked when it is validated; this is the image's
        raise RuntimeFailure(f"the image's WorkingDir {cwd!r} is not an absolute path")
    return str(cwd)


# ---------------------------------------------------------------- capabilities, seccomp


def host_caps() -> tuple[str, ...]:
    """The capabilities this kernel knows (``/proc/sys/kernel/cap_last_cap``)."""
    try:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        last = len(ALL_CAPS) - 1
    return ALL_CAPS[: last + 1]


def resolve_caps(spec: ServiceSpec) -> list[str]:
    """Docker's rule: the default set, minus ``cap_drop``, plus ``cap_add`` (either may say ``ALL``)."""
    known = host_caps()
    if spec.privileged:
        return list(known)
    add = [cap_name(c) for c in spec.capabilities]
    drop = [cap_name(c) for c in spec.cap_drop]
    caps = [] if "CAP_ALL" in drop else [c for c in DEFAULT_CAPS if c not in drop]
    extra = list(known) if "CAP_ALL" in add else add
    for c in extra:
        if c not in caps and (c not in drop or "CAP_ALL" in drop):
            caps.append(c)
    return [c for c in caps if c in known]


def resolve_seccomp(spec: ServiceSpec, caps: Sequence[str]) -> dict[str, Any] | None:
    """OCI seccomp for the container, or ``None`` (privileged, or ``seccomp=unconfined``)."""
    opt = security_opts(spec.security_opt).get("seccomp")
    if opt == "unconfined" or (spec.privileged and opt is None):
        return None
    profile = _seccomp.default_profile() if opt in (None, "", "builtin", "default") else _seccomp.load_profile(opt)
    return _seccomp.to_oci(profile, caps)


def resolve_no_new_privs(spec: ServiceSpec) -> bool:
    opt = security_opts(spec.security_opt).get("no-new-privileges")
    if opt is not None:
        return opt.lower() not in ("false", "0", "no")
    return not spec.privileged and not spec.capabilities


# ---------------------------------------------------------------- limits


def host_hard_limit(res: str) -> int:
    num = getattr(resource, res, None)
    if num is None:
        return RLIM_INFINITY
    hard = resource.getrlimit(num)[1]
    return RLIM_INFINITY if hard == resource.RLIM_INFINITY else int(hard)


def resolve_rlimits(spec: ServiceSpec, *, hard_limit: Callable[[str], int] = host_hard_limit) -> list[dict[str, Any]]:
    """``ulimits`` as OCI rlimits; values above this host's hard limit are clamped with a warning."""
    out = []
    for name, lim in spec.ulimits.items():
        res = RLIMITS[name.lower()]
        soft, hard = ulimit_values(lim.soft, lim.hard)
        ceiling = hard_limit(res)
        if hard > ceiling:
            log.warning(
                "ulimits.%s: hard limit %s is above this host's hard limit %d; clamped to %d",
                name, "unlimited" if hard == RLIM_INFINITY else hard, ceiling, ceiling,
            )  # fmt: skip
            hard = ceiling
            soft = min(soft, ceiling)
        out.append({"type": res, "hard": hard, "soft": soft})
    return out


def resolve_resources(spec: ServiceSpec) -> dict[str, Any]:
    """``resources`` as OCI ``linux.resources`` (cpu, memory, pids, blkio)."""
    r = spec.resources
    out: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    if r.cpu is not None:
        cpu["period"] = 100000
        cpu["quota"] = max(1000, round(r.cpu * 100000))
    if r.cpu_shares is not None:
        cpu["shares"] = r.cpu_shares
    if r.cpuset:
        cpu["cpus"] = r.cpuset
    if cpu:
        out["cpu"] = cpu
    mem: dict[str, Any] = {}
    if r.memory:
        mem["limit"] = parse_size(r.memory)
    if r.memory_reservation:
        mem["reservation"] = parse_size(r.memory_reservation)
    if r.memory_swap:
        mem["swap"] = -1 if r.memory_swap.strip() == "-1" else parse_size(r.memory_swap)
    if r.memory_swappiness is not None:
        mem["swappiness"] = r.memory_swappiness
    if r.oom_kill_disable:
        mem["disableOOMKiller"] = True
    if mem:
        out["memory"] = mem
    if r.pids_limit is not None:
        out["pids"] = {"limit": r.pids_limit}
    if r.blkio_weight is not None:
        out["blockIO"] = {"weight": r.blkio_weight}
    return out


# ---------------------------------------------------------------- devices


def _device_entry(path: str, where: str) -> dict[str, Any]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise RuntimeFailure(f"{where} {path}: {exc.strerror} on this node") from None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise RuntimeFailure(f"{where} {path}: not a character or block device on this node")
    return {
        "path": path,
        "type": kind,
        "major": os.major(st.st_rdev),
        "minor": os.minor(st.st_rdev),
        "fileMode": st.st_mode & 0o777,
        "uid": 0,
        "gid": 0,
    }


def _host_devices() -> list[dict[str, Any]]:
    out = []
    for root in (Path("/dev"), *(p for p in Path("/dev").iterdir() if p.is_dir() and not p.is_symlink())):
        if root.name in ("pts", "shm", "mqueue", "hugepages") and root != Path("/dev"):
            continue
        for p in sorted(root.iterdir()):
            with contextlib.suppress(OSError, RuntimeFailure):
                st = p.lstat()
                if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) and p.name not in ("console", "ptmx"):
                    out.append(_device_entry(str(p), "device"))
    return out


def resolve_devices(spec: ServiceSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(linux.devices, linux.resources.devices)``: the spec's devices and the device cgroup rules."""
    if spec.privileged:
        return _host_devices(), [{"allow": True, "access": "rwm"}]
    rules: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    for kind, major, minor, access in DEFAULT_DEVICE_RULES:
        rule: dict[str, Any] = {"allow": True, "type": kind, "access": access}
        if major is not None:
            rule["major"] = major
        if minor is not None:
            rule["minor"] = minor
        rules.append(rule)
    devices = []
    for i, d in enumerate(spec.devices):
        entry = _device_entry(d.path, f"devices[{i}].path")
        access = ("r" if d.read else "") + ("w" if d.write else "") + ("m" if d.mknod else "")
        devices.append(entry)
        rules.append(
            {"allow": True, "type": entry["type"], "major": entry["major"], "minor": entry["minor"], "access": access}
        )
    return devices, rules


# ---------------------------------------------------------------- namespaces, mounts


NamespaceResolver = Callable[[str, str], str]


def resolve_namespaces(spec: ServiceSpec, join: NamespaceResolver | None) -> list[dict[str, Any]]:
    """OCI namespaces: mount, uts, pid, ipc, network, and user on request.

    ``*_mode``: ``host`` shares the host's namespace (not unshared), ``container:<id>`` joins that container's
    (``join(id, kind)`` returns its ``/proc/<pid>/ns/<kind>`` path), empty/``private`` creates a new one.
    """
    out: list[dict[str, Any]] = [{"type": "mount"}, {"type": "uts"}]
    modes = {
        "pid": namespace_mode(spec.pid_mode),
        "ipc": namespace_mode(spec.ipc_mode),
        "network": namespace_mode(spec.network_mode),
        "user": namespace_mode(spec.userns_mode),
    }
    kinds = {"pid": "pid", "ipc": "ipc", "network": "net", "user": "user"}
    for ns, mode in modes.items():
        if mode == "host" or (ns == "user" and mode in ("", "default")):
            continue
        if mode.startswith(("container:", "service:")):
            if join is None:
                raise RuntimeFailure(f"joining container {mode.partition(':')[2]}'s {ns} namespace needs a runtime")
            out.append({"type": ns, "path": join(mode.partition(":")[2], kinds[ns])})
        else:
            out.append({"type": ns})
    return out


def default_mounts(*, privileged: bool, own_net: bool) -> list[dict[str, Any]]:
    """The standard filesystems of a container (Docker's list)."""
    sys_opts = ["nosuid", "noexec", "nodev"] + ([] if privileged else ["ro"])
    if not own_net:
        # sysfs belongs to the network namespace; without one, bind the host's read-only as Docker does.
        sysfs = {"destination": "/sys", "type": "bind", "source": "/sys", "options": ["rbind", "nosuid", "noexec",
                 "nodev", "ro"]}  # fmt: skip
    else:
        sysfs = {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_opts}
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        sysfs,
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]  # fmt: skip


# ---------------------------------------------------------------- the whole document


@dataclass
class BundleOptions:
    """What the config needs besides the spec and the image config."""

    container_id: str
    image: str
    rootfs: Path
    hostname: str = ""
    cgroups_path: str | None = None
    extra_mounts: list[dict[str, Any]] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)
    join_namespace: NamespaceResolver | None = None
    host_env: Mapping[str, str] | None = None
    secrets: SecretResolver | None = None
    rootfs_path_in_config: str = "rootfs"


def stop_signal(spec: ServiceSpec, image_cfg: Mapping[str, Any]) -> str:
    """The signal ``stop`` sends first: the spec's, else the image's ``StopSignal``, else SIGTERM."""
    if spec.stop_signal:
        return signal_name(spec.stop_signal)
    try:
        return signal_name(str(image_cfg.get("StopSignal") or "SIGTERM"))
    except ValueError as e:
        raise RuntimeFailure(f"the image's StopSignal {e}") from None


def build_config(spec: ServiceSpec, image_config: Mapping[str, Any] | None, opts: BundleOptions) -> dict[str, Any]:
    """The OCI ``config.json`` document for one container of a validated service spec. What the image or the node
    lacks (a user, a device, a command) raises :class:`RuntimeFailure` saying what."""
    img = image_settings(image_config)
    privileged = spec.privileged
    hostname = str(spec.hostname or opts.hostname or opts.container_id)[:63]
    tty = spec.tty
    namespaces = resolve_namespaces(spec, opts.join_namespace)
    joined = {n["type"] for n in namespaces}
    user_spec = spec.user or img.get("User") or ""
    user: ResolvedUser = resolve_user(opts.rootfs, str(user_spec), image=opts.image, extra_groups=spec.extra_groups)
    caps = resolve_caps(spec)
    env = resolve_env(spec, img, hostname=hostname, tty=tty, host_env=opts.host_env, secrets=opts.secrets)
    if user.home and not any(e.startswith("HOME=") for e in env):
        env.append("HOME=" + user.home)
    elif not any(e.startswith("HOME=") for e in env):
        env.append("HOME=/" if user.uid != 0 else "HOME=/root")
    process: dict[str, Any] = {
        "terminal": tty,
        "user": {"uid": user.uid, "gid": user.gid},
        "args": resolve_argv(spec, img, opts.image),
        "env": env,
        "cwd": resolve_cwd(spec, img),
        "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted")},
        "rlimits": resolve_rlimits(spec),
        "noNewPrivileges": resolve_no_new_privs(spec),
    }
    if user.additional_gids:
        process["user"]["additionalGids"] = list(user.additional_gids)
    if spec.resources.oom_score_adj is not None:
        process["oomScoreAdj"] = spec.resources.oom_score_adj
    if not process["rlimits"]:
        del process["rlimits"]

    devices, device_rules = resolve_devices(spec)
    resources = resolve_resources(spec)
    resources["devices"] = device_rules
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "resources": resources,
        "rootfsPropagation": "private",
        "maskedPaths": [] if privileged else list(MASKED_PATHS),
        "readonlyPaths": [] if privileged else list(READONLY_PATHS),
    }
    if devices:
        linux["devices"] = devices
    if opts.cgroups_path:
        linux["cgroupsPath"] = opts.cgroups_path
    if spec.sysctls:
        linux["sysctl"] = dict(spec.sysctls)
    sec = resolve_seccomp(spec, caps)
    if sec is not None:
        linux["seccomp"] = sec

    mounts = default_mounts(privileged=privileged, own_net="network" in joined)
    mounts += opts.extra_mounts
    annotations = {"org.opencontainers.image.stopSignal": stop_signal(spec, img), **opts.annotations}
    if "uts" not in joined:
        hostname = ""
    doc: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": opts.rootfs_path_in_config, "readonly": spec.read_only_root_fs},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux,
        "annotations": annotations,
    }
    return doc
