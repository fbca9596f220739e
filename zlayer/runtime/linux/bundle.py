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
  warning names the limit, what was asked and what was given). Soft above hard or an unknown name is an error.
- sysctls: only namespaced ones (``net.*`` with its own network, ``kernel.msg*``, ``kernel.sem``, ``kernel.shm*``,
  ``fs.mqueue.*`` with its own IPC namespace); anything else is an error naming the key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import resource
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zlayer.errors import SpecError
from zlayer.runtime.linux import seccomp as _seccomp
from zlayer.runtime.linux.users import ResolvedUser, resolve_user

log = logging.getLogger("zlayer.runtime")

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
)  # fmt: skip

# Every capability by number (capability.h); privileged containers get those this kernel knows.
ALL_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip

MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)  # fmt: skip
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

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

# Docker's default device cgroup rules: mknod of anything, and use of the standard nodes.
DEFAULT_DEVICE_RULES: tuple[tuple[str, int | None, int | None, str], ...] = (
    ("c", None, None, "m"), ("b", None, None, "m"),
    ("c", 1, 3, "rwm"), ("c", 1, 5, "rwm"), ("c", 1, 7, "rwm"), ("c", 1, 8, "rwm"), ("c", 1, 9, "rwm"),
    ("c", 5, 0, "rwm"), ("c", 5, 1, "rwm"), ("c", 5, 2, "rwm"), ("c", 136, None, "rwm"), ("c", 10, 200, "rwm"),
)  # fmt: skip

SecretResolver = Callable[[str], str]


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """A field of a spec given as a pydantic model, a dataclass or a plain dict (as parsed from YAML)."""
    if obj is None:
        return default
    val = obj.get(name, default) if isinstance(obj, Mapping) else getattr(obj, name, default)
    return default if val is None else val


def _enum(val: Any) -> Any:
    return getattr(val, "value", val)


def image_settings(image_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``config`` object of an OCI image config (accepts the whole document or just that object)."""
    if not image_config:
        return {}
    inner = image_config.get("config")
    if isinstance(inner, Mapping):
        return dict(inner)
    return dict(image_config)


# ---------------------------------------------------------------- argv, env, cwd


def resolve_argv(spec: Any, image_cfg: Mapping[str, Any], image: str = "") -> list[str]:
    """Docker's rule: spec entrypoint replaces ENTRYPOINT and resets CMD; spec args replace CMD."""
    cmd = _get(spec, "command")
    entrypoint = _get(cmd, "entrypoint")
    args = _get(cmd, "args")
    if entrypoint is not None:
        argv = [*entrypoint, *(args or [])]
    else:
        img_ep = list(image_cfg.get("Entrypoint") or [])
        argv = [*img_ep, *(args if args is not None else list(image_cfg.get("Cmd") or []))]
    if not argv or not argv[0]:
        raise SpecError(
            f"no command: image {image or '?'} has no ENTRYPOINT or CMD and the spec gives none",
            hint="set command.entrypoint or command.args",
        )
    return [str(a) for a in argv]


def _set_env(env: list[str], key: str, value: str) -> None:
    prefix = key + "="
    env[:] = [e for e in env if not (e == key or e.startswith(prefix))]
    env.append(prefix + value)


def resolve_env(
    spec: Any,
    image_cfg: Mapping[str, Any],
    *,
    hostname: str,
    tty: bool,
    host_env: Mapping[str, str] | None = None,
    secrets: SecretResolver | None = None,
) -> list[str]:
    """Image ``Env`` then spec ``env`` (later wins), plus PATH/HOSTNAME (and TERM with a tty) as Docker sets them."""
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
    for key, raw in (_get(spec, "env", {}) or {}).items():
        value = str(raw)
        if not key or "=" in key:
            raise SpecError(f"env.{key}: invalid variable name")
        if value.startswith("$E:"):
            name = value[3:]
            if name not in host_env:
                raise SpecError(f"env.{key}: $E:{name} refers to {name}, which is not set in the daemon's environment")
            value = host_env[name]
            if not value:
                log.warning("env.%s: $E:%s is empty in the daemon's environment", key, name)
        elif value.startswith("$S:"):
            if secrets is None:
                raise SpecError(f"env.{key}: secret reference {value} needs a secrets store, and none is attached")
            value = secrets(value[3:])
        _set_env(env, key, value)
    return env


def resolve_cwd(spec: Any, image_cfg: Mapping[str, Any]) -> str:
    cwd = _get(_get(spec, "command"), "workdir") or image_cfg.get("WorkingDir") or "/"
    if not str(cwd).startswith("/"):
        raise SpecError(f"command.workdir {cwd!r}: the working directory must be an absolute path")
    return str(cwd)


# ---------------------------------------------------------------- capabilities, seccomp


def _cap_name(name: str, where: str) -> str:
    n = str(name).strip().upper()
    if not n.startswith("CAP_"):
        n = "CAP_" + n
    if n != "CAP_ALL" and n not in ALL_CAPS:
        raise SpecError(f"{where}: unknown capability {name!r}")
    return n


def host_caps() -> tuple[str, ...]:
    """The capabilities this kernel knows (``/proc/sys/kernel/cap_last_cap``)."""
    try:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        last = len(ALL_CAPS) - 1
    return ALL_CAPS[: last + 1]


def resolve_caps(spec: Any) -> list[str]:
    """Docker's rule: the default set, minus ``cap_drop``, plus ``cap_add`` (either may say ``ALL``)."""
    known = host_caps()
    if bool(_get(spec, "privileged", False)):
        return list(known)
    add = [_cap_name(c, "capabilities") for c in _get(spec, "capabilities", []) or []]
    drop = [_cap_name(c, "cap_drop") for c in _get(spec, "cap_drop", []) or []]
    caps = [] if "CAP_ALL" in drop else [c for c in DEFAULT_CAPS if c not in drop]
    extra = list(known) if "CAP_ALL" in add else add
    for c in extra:
        if c not in caps and (c not in drop or "CAP_ALL" in drop):
            caps.append(c)
    return [c for c in caps if c in known]


def security_opts(spec: Any) -> dict[str, str]:
    """``security_opt`` entries as ``{key: value}`` (``key=value`` or Docker's older ``key:value``)."""
    out: dict[str, str] = {}
    for i, item in enumerate(_get(spec, "security_opt", []) or []):
        text = str(item)
        m = re.match(r"^([a-z-]+)[=:](.*)$", text)
        if m:
            out[m.group(1)] = m.group(2)
        elif text == "no-new-privileges":
            out["no-new-privileges"] = "true"
        else:
            raise SpecError(f"security_opt[{i}] {text!r}: expected seccomp=PATH|unconfined or no-new-privileges")
        key = m.group(1) if m else text
        if key not in ("seccomp", "no-new-privileges", "apparmor", "label"):
            raise SpecError(f"security_opt[{i}] {text!r}: unknown option {key!r}")
    return out


def resolve_seccomp(spec: Any, caps: Sequence[str]) -> dict[str, Any] | None:
    """OCI seccomp for the container, or ``None`` (privileged, or ``seccomp=unconfined``)."""
    opt = security_opts(spec).get("seccomp")
    if opt == "unconfined" or (bool(_get(spec, "privileged", False)) and opt is None):
        return None
    profile = _seccomp.default_profile() if opt in (None, "", "builtin", "default") else _seccomp.load_profile(opt)
    return _seccomp.to_oci(profile, caps)


def resolve_no_new_privs(spec: Any) -> bool:
    opt = security_opts(spec).get("no-new-privileges")
    if opt is not None:
        return opt.lower() not in ("false", "0", "no")
    return not bool(_get(spec, "privileged", False)) and not (_get(spec, "capabilities", []) or [])


# ---------------------------------------------------------------- limits


def host_hard_limit(res: str) -> int:
    num = getattr(resource, res, None)
    if num is None:
        return RLIM_INFINITY
    hard = resource.getrlimit(num)[1]
    return RLIM_INFINITY if hard == resource.RLIM_INFINITY else int(hard)


def resolve_rlimits(spec: Any, *, hard_limit: Callable[[str], int] = host_hard_limit) -> list[dict[str, Any]]:
    """``ulimits`` as OCI rlimits; values above this host's hard limit are clamped with a warning."""
    out = []
    for name, lim in (_get(spec, "ulimits", {}) or {}).items():
        res = RLIMITS.get(str(name).lower())
        if res is None:
            raise SpecError(f"ulimits.{name}: unknown limit; expected one of {', '.join(RLIMITS)}")
        soft, hard = _get(lim, "soft"), _get(lim, "hard")
        if soft is None and hard is None:
            soft = hard = 0
        soft = hard if soft is None else soft
        hard = soft if hard is None else hard
        soft = RLIM_INFINITY if int(soft) < 0 else int(soft)
        hard = RLIM_INFINITY if int(hard) < 0 else int(hard)
        if soft > hard:
            raise SpecError(f"ulimits.{name}: soft limit {soft} is above the hard limit {hard}")
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


def check_sysctls(spec: Any, *, own_net: bool, own_ipc: bool) -> dict[str, str]:
    """Only sysctls that belong to the container's own namespaces; anything else is an error naming the key."""
    out: dict[str, str] = {}
    for key, val in (_get(spec, "sysctls", {}) or {}).items():
        k = str(key)
        if k.startswith("net."):
            if not own_net:
                raise SpecError(f"sysctls.{k}: not allowed with the host's network (it would change the host)")
        elif k in IPC_SYSCTLS or k.startswith("fs.mqueue."):
            if not own_ipc:
                raise SpecError(f"sysctls.{k}: not allowed with the host's IPC namespace (it would change the host)")
        else:
            raise SpecError(
                f"sysctls.{k}: not a namespaced sysctl; a container may set only net.*, kernel.msg*, kernel.sem, "
                "kernel.shm* and fs.mqueue.*"
            )
        out[k] = str(val)
    return out


_MEM_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_bytes(text: Any, where: str) -> int:
    """``512Mi``, ``1Gi``, ``512M``, ``1g``, ``1048576`` → bytes (binary multiples; ``-1`` = unlimited)."""
    s = str(text).strip()
    if s == "-1":
        return -1
    m = re.fullmatch(r"(\d+)\s*([kKmMgGtT]?)(i?[bB]?)", s)
    if not m:
        raise SpecError(f"{where} {text!r}: expected a size such as 512Mi, 2Gi or a number of bytes")
    return int(m.group(1)) * _MEM_UNITS[m.group(2).lower()]


def resolve_resources(spec: Any) -> dict[str, Any]:
    """``resources`` as OCI ``linux.resources`` (cpu, memory, pids, blkio)."""
    r = _get(spec, "resources")
    out: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    if _get(r, "cpu") is not None:
        cpus = float(_get(r, "cpu"))
        if cpus <= 0:
            raise SpecError(f"resources.cpu {cpus}: must be above 0")
        cpu["period"] = 100000
        cpu["quota"] = max(1000, round(cpus * 100000))
    if _get(r, "cpu_shares") is not None:
        cpu["shares"] = int(_get(r, "cpu_shares"))
    if _get(r, "cpuset"):
        cs = str(_get(r, "cpuset"))
        if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", cs):
            raise SpecError(f"resources.cpuset {cs!r}: expected a CPU list such as 0-3 or 0,2")
        cpu["cpus"] = cs
    if cpu:
        out["cpu"] = cpu
    mem: dict[str, Any] = {}
    if _get(r, "memory"):
        mem["limit"] = parse_bytes(_get(r, "memory"), "resources.memory")
        if mem["limit"] < 4 * 1024 * 1024 and mem["limit"] != -1:
            raise SpecError(f"resources.memory {_get(r, 'memory')!r}: the minimum is 4Mi (the kernel needs more)")
    if _get(r, "memory_reservation"):
        mem["reservation"] = parse_bytes(_get(r, "memory_reservation"), "resources.memory_reservation")
    if _get(r, "memory_swap"):
        swap = parse_bytes(_get(r, "memory_swap"), "resources.memory_swap")
        if swap != -1 and "limit" in mem and swap < mem["limit"]:
            raise SpecError("resources.memory_swap: is memory + swap (Docker's meaning), so it cannot be below memory")
        if "limit" not in mem and swap != -1:
            raise SpecError("resources.memory_swap: needs resources.memory as well")
        mem["swap"] = swap
    if _get(r, "memory_swappiness") is not None:
        mem["swappiness"] = int(_get(r, "memory_swappiness"))
    if _get(r, "oom_kill_disable"):
        mem["disableOOMKiller"] = True
    if mem:
        out["memory"] = mem
    if _get(r, "pids_limit") is not None:
        out["pids"] = {"limit": int(_get(r, "pids_limit"))}
    if _get(r, "blkio_weight") is not None:
        out["blockIO"] = {"weight": int(_get(r, "blkio_weight"))}
    return out


# ---------------------------------------------------------------- devices


def _device_entry(path: str, where: str) -> dict[str, Any]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SpecError(f"{where} {path}: {exc.strerror}") from None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise SpecError(f"{where} {path}: not a character or block device")
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
            with contextlib.suppress(OSError, SpecError):
                st = p.lstat()
                if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) and p.name not in ("console", "ptmx"):
                    out.append(_device_entry(str(p), "device"))
    return out


def resolve_devices(spec: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(linux.devices, linux.resources.devices)``: the spec's devices and the device cgroup rules."""
    if bool(_get(spec, "privileged", False)):
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
    for i, d in enumerate(_get(spec, "devices", []) or []):
        path = str(_get(d, "path", ""))
        if not path.startswith("/dev/"):
            raise SpecError(f"devices[{i}].path {path!r}: expected a device under /dev/")
        entry = _device_entry(path, f"devices[{i}].path")
        access = ("r" if _get(d, "read", True) else "") + ("w" if _get(d, "write", True) else "")
        access += "m" if _get(d, "mknod", False) else ""
        if not access:
            raise SpecError(f"devices[{i}]: read, write and mknod are all false")
        devices.append(entry)
        rules.append(
            {"allow": True, "type": entry["type"], "major": entry["major"], "minor": entry["minor"], "access": access}
        )
    return devices, rules


# ---------------------------------------------------------------- namespaces, mounts


NamespaceResolver = Callable[[str, str], str]


def _mode(val: Any) -> str:
    v = _enum(val)
    if isinstance(v, Mapping):  # e.g. {"container": "web-rep-1"}
        (k, x), *_ = v.items()
        return f"{k}:{x}"
    return str(v or "").strip()


def resolve_namespaces(spec: Any, join: NamespaceResolver | None) -> list[dict[str, Any]]:
    """OCI namespaces: mount, uts, pid, ipc, network, and cgroup/user on request.

    ``*_mode``: ``host`` shares the host's namespace (not unshared), ``container:<id>`` joins that container's
    (``join(id, kind)`` returns its ``/proc/<pid>/ns/<kind>`` path), empty/``private`` creates a new one.
    """
    out: list[dict[str, Any]] = [{"type": "mount"}, {"type": "uts"}]
    modes = {
        "pid": _mode(_get(spec, "pid_mode")),
        "ipc": _mode(_get(spec, "ipc_mode")),
        "network": _mode(_get(spec, "network_mode")),
        "user": _mode(_get(spec, "userns_mode")),
        "cgroup": _mode(_get(spec, "cgroupns_mode")),
    }
    if _get(spec, "host_network", False):
        modes["network"] = "host"
    kinds = {"pid": "pid", "ipc": "ipc", "network": "net", "user": "user", "cgroup": "cgroup"}
    for ns, mode in modes.items():
        field_name = "network_mode" if ns == "network" else f"{ns}ns_mode" if ns in ("user", "cgroup") else f"{ns}_mode"
        if mode == "host" or (ns in ("user", "cgroup") and mode in ("", "default")):
            continue
        if mode.startswith("container:") or mode.startswith("service:"):
            target = mode.partition(":")[2]
            if not target:
                raise SpecError(f"{field_name} {mode!r}: name the container to join")
            if join is None:
                raise SpecError(f"{field_name} {mode!r}: joining another container needs a runtime")
            out.append({"type": ns, "path": join(target, kinds[ns])})
        elif mode in ("", "default", "private", "bridge", "none", "shareable") or mode.startswith("bridge:"):
            out.append({"type": ns})
        else:
            raise SpecError(f"{field_name} {mode!r}: expected host, private or container:<id>")
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


def stop_signal(spec: Any, image_cfg: Mapping[str, Any]) -> str:
    """The signal ``stop`` sends first: the spec's, else the image's ``StopSignal``, else SIGTERM."""
    sig = str(_get(spec, "stop_signal") or image_cfg.get("StopSignal") or "SIGTERM").strip().upper()
    import signal as _signal

    if sig.isdigit():
        if int(sig) not in {int(s) for s in _signal.Signals}:
            raise SpecError(f"stop_signal {sig}: not a signal number")
        return _signal.Signals(int(sig)).name
    name = sig if sig.startswith("SIG") else "SIG" + sig
    if name not in _signal.Signals.__members__:
        raise SpecError(f"stop_signal {sig!r}: unknown signal")
    return name


def build_config(spec: Any, image_config: Mapping[str, Any] | None, opts: BundleOptions) -> dict[str, Any]:
    """The OCI ``config.json`` document for one container. Raises :class:`SpecError` naming the field at fault."""
    img = image_settings(image_config)
    privileged = bool(_get(spec, "privileged", False))
    hostname = str(_get(spec, "hostname") or opts.hostname or opts.container_id)[:63]
    tty = bool(_get(spec, "tty", False))
    namespaces = resolve_namespaces(spec, opts.join_namespace)
    own = {n["type"] for n in namespaces if "path" not in n}
    joined = {n["type"] for n in namespaces}
    user_spec = _get(spec, "user") or img.get("User") or ""
    user: ResolvedUser = resolve_user(
        opts.rootfs, str(user_spec), image=opts.image, extra_groups=[str(g) for g in _get(spec, "extra_groups", [])]
    )
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
    oom_adj = _get(_get(spec, "resources"), "oom_score_adj")
    if oom_adj is not None:
        process["oomScoreAdj"] = int(oom_adj)
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
    sysctls = check_sysctls(spec, own_net="network" in own, own_ipc="ipc" in own)
    if sysctls:
        linux["sysctl"] = sysctls
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
        "root": {"path": opts.rootfs_path_in_config, "readonly": bool(_get(spec, "read_only_root_fs", False))},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux,
        "annotations": annotations,
    }
    return doc
