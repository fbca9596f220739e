"""A Docker ``POST /containers/create`` body as zlayer's service spec, checked as a deploy's spec is.

What the HostConfig says maps onto the spec's fields (binds and mounts → ``storage``, port bindings →
``port_mappings``, restart policy, resources, network mode, capabilities, devices, ulimits, sysctls, tmpfs); the whole
is then validated by :func:`zlayer.spec.loader.parse_deployable`, so a container the node cannot build (a device
that does not exist, a bad capability) is refused at create with the reason. Fields the node does not honour are
refused by name (400), never dropped without a word.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zlayer.dockerapi.server import DockerError
from zlayer.errors import SpecError

if TYPE_CHECKING:
    from zlayer.spec.models import ServiceSpec

# HostConfig fields that change what a container is and that the node does not do: refused when set.
UNSUPPORTED_HOST = ("VolumeDriver", "VolumesFrom", "Links", "CgroupnsMode", "Isolation", "UTSMode", "UsernsMode",
                    "DeviceRequests", "DeviceCgroupRules", "MaskedPaths", "ReadonlyPaths")  # fmt: skip
UNSUPPORTED_CONFIG = ("Healthcheck", "OnBuild", "Shell")


@dataclass
class Created:
    """What a create body asks for: the spec, and Docker's own knobs the spec has no field for."""

    spec: ServiceSpec
    source: dict[str, Any]  # the service block ``spec`` was checked from
    restart: str
    max_retries: int
    auto_remove: bool


def _set(value: Any) -> bool:
    return value not in (None, "", [], {}, 0, False)


def _ports(host: dict[str, Any], exposed: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    bindings = host.get("PortBindings") or {}
    if not isinstance(bindings, dict):
        raise DockerError(400, 'HostConfig.PortBindings: expected an object like {"80/tcp": [{"HostPort": "8080"}]}')
    wanted = dict(bindings)
    if host.get("PublishAllPorts"):
        for key in exposed or {}:
            wanted.setdefault(key, [{}])
    for key, binds in wanted.items():
        port, _, proto = str(key).partition("/")
        proto = proto or "tcp"
        if not port.isdigit() or proto not in ("tcp", "udp"):
            raise DockerError(400, f"HostConfig.PortBindings: invalid port {key!r} (expected PORT/tcp or PORT/udp)")
        for b in binds or [{}]:
            b = b or {}
            entry: dict[str, Any] = {"container_port": int(port), "protocol": proto}
            hp = str(b.get("HostPort") or "")
            if hp:
                if not hp.isdigit():
                    raise DockerError(400, f"HostConfig.PortBindings[{key!r}]: invalid host port {hp!r}")
                entry["host_port"] = int(hp)
            if b.get("HostIp"):
                entry["host_ip"] = b["HostIp"]
            out.append(entry)
    return out


def _storage(host: dict[str, Any], volumes: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, bind in enumerate(host.get("Binds") or []):
        parts = str(bind).split(":")
        if len(parts) < 2 or len(parts) > 3:
            raise DockerError(400, f"HostConfig.Binds[{i}]: invalid volume specification {bind!r}")
        src, dst = parts[0], parts[1]
        opts = parts[2].split(",") if len(parts) == 3 else []
        ro = "ro" in opts
        if src.startswith("/"):
            out.append({"type": "bind", "source": src, "target": dst, "readonly": ro})
        else:
            out.append({"type": "named", "name": src, "target": dst, "readonly": ro})
    for i, m in enumerate(host.get("Mounts") or []):
        kind, target = m.get("Type", "volume"), m.get("Target") or m.get("Destination")
        if not target:
            raise DockerError(400, f"HostConfig.Mounts[{i}]: Target is required")
        ro = bool(m.get("ReadOnly"))
        if kind == "bind":
            out.append({"type": "bind", "source": m.get("Source", ""), "target": target, "readonly": ro})
        elif kind == "volume":
            if m.get("Source"):
                out.append({"type": "named", "name": m["Source"], "target": target, "readonly": ro})
            else:
                out.append({"type": "anonymous", "target": target})
        elif kind == "tmpfs":
            size = (m.get("TmpfsOptions") or {}).get("SizeBytes")
            out.append({"type": "tmpfs", "target": target, **({"size": str(size)} if size else {})})
        else:
            raise DockerError(400, f"HostConfig.Mounts[{i}]: mount type {kind!r} is not supported")
    for path, opts in (host.get("Tmpfs") or {}).items():
        entry: dict[str, Any] = {"type": "tmpfs", "target": path}
        for opt in str(opts or "").split(","):
            if opt.startswith("size="):
                entry["size"] = opt[5:]
        out.append(entry)
    have = {s["target"] for s in out}
    for path in volumes or {}:
        if path not in have:
            out.append({"type": "anonymous", "target": path})
    return out


def _binary_size(n: int) -> str:
    """Docker's bytes in the spec's form (ZLayer's memory sizes carry a binary suffix): the largest unit that divides
    them, else KiB rounded up (the kernel counts memory in pages anyway)."""
    if n <= 0:
        raise ValueError(f"a memory size must be a positive number of bytes, not {n}")
    for unit, size in (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return f"{-(-n // 1024)}Ki"


def _network_mode(mode: str) -> str:
    if mode in ("", "default", "bridge") or not mode:
        return "default"
    if mode in ("host", "none") or mode.startswith("container:"):
        return mode
    return "default"  # a user-defined network: containers share the node's network (see the networks routes)


def service_dict(body: dict[str, Any], image: str, hostname: str) -> tuple[dict[str, Any], str, int, bool]:
    if not isinstance(body, dict):
        raise DockerError(400, "the container config must be a JSON object")
    host = body.get("HostConfig") or {}
    if not isinstance(host, dict):
        raise DockerError(400, "HostConfig must be a JSON object")
    for k in UNSUPPORTED_HOST:
        if _set(host.get(k)) and not (k == "CgroupnsMode" and host.get(k) in ("private", "host")):
            raise DockerError(400, f"HostConfig.{k} is not supported by this node (zlayer)")
    for k in UNSUPPORTED_CONFIG:
        if _set(body.get(k)):
            raise DockerError(400, f"{k} is not supported by this node (zlayer)")
    runtime = host.get("Runtime") or ""
    if runtime not in ("", "runc", "zlayer"):
        raise DockerError(400, f"HostConfig.Runtime: unknown runtime {runtime!r} (this node runs containers itself)")
    svc: dict[str, Any] = {"image": {"name": image, "pull_policy": "never"}, "scale": {"mode": "manual"}}
    cmd: dict[str, Any] = {}
    ep = body.get("Entrypoint")
    if isinstance(ep, str):
        ep = [ep]
    if ep:
        cmd["entrypoint"] = list(ep)
    args = body.get("Cmd")
    if isinstance(args, str):
        args = [args]
    if args:
        cmd["args"] = list(args)
    elif ep:
        cmd["args"] = []
    if body.get("WorkingDir"):
        cmd["workdir"] = body["WorkingDir"]
    if cmd:
        svc["command"] = cmd
    env: dict[str, str] = {}
    for i, item in enumerate(body.get("Env") or []):
        k, eq, v = str(item).partition("=")
        if not k:
            raise DockerError(400, f"Env[{i}]: invalid environment variable {item!r}")
        if eq:
            env[k] = v
    if env:
        svc["env"] = env
    for src, dst in (("User", "user"), ("StopSignal", "stop_signal"), ("Labels", "labels")):
        if body.get(src):
            svc[dst] = body[src]
    svc["hostname"] = body.get("Hostname") or hostname
    if body.get("StopTimeout") is not None:
        svc["stop_grace_period"] = f"{int(body['StopTimeout'])}s"
    if body.get("Tty"):
        svc["tty"] = True
    if body.get("OpenStdin"):
        svc["stdin_open"] = True
    res: dict[str, Any] = {}
    if host.get("Memory"):
        res["memory"] = _binary_size(int(host["Memory"]))
    if host.get("MemorySwap") and int(host["MemorySwap"]) > 0:
        res["memory_swap"] = _binary_size(int(host["MemorySwap"]))
    if host.get("MemoryReservation"):
        res["memory_reservation"] = _binary_size(int(host["MemoryReservation"]))
    if host.get("NanoCpus"):
        res["cpu"] = int(host["NanoCpus"]) / 1e9
    elif host.get("CpuQuota") and host.get("CpuPeriod"):
        res["cpu"] = int(host["CpuQuota"]) / int(host["CpuPeriod"])
    if host.get("CpuShares"):
        res["cpu_shares"] = int(host["CpuShares"])
    if host.get("CpusetCpus"):
        res["cpuset"] = host["CpusetCpus"]
    if host.get("PidsLimit") and int(host["PidsLimit"]) > 0:
        res["pids_limit"] = int(host["PidsLimit"])
    if host.get("OomScoreAdj"):
        res["oom_score_adj"] = int(host["OomScoreAdj"])
    if host.get("BlkioWeight"):
        res["blkio_weight"] = int(host["BlkioWeight"])
    if res:
        svc["resources"] = res
    storage = _storage(host, body.get("Volumes") or {})
    if storage:
        svc["storage"] = storage
    ports = _ports(host, body.get("ExposedPorts") or {})
    if ports:
        svc["port_mappings"] = ports
    svc["network_mode"] = _network_mode(str(host.get("NetworkMode") or ""))
    if host.get("Privileged"):
        svc["privileged"] = True
    if host.get("CapAdd"):
        svc["capabilities"] = list(host["CapAdd"])
    if host.get("CapDrop"):
        svc["cap_drop"] = list(host["CapDrop"])
    devices = []
    for i, d in enumerate(host.get("Devices") or []):
        path = d.get("PathOnHost")
        if not path:
            raise DockerError(400, f"HostConfig.Devices[{i}]: PathOnHost is required")
        if not os.path.exists(path):  # as dockerd says it, at create
            raise DockerError(400, f"error gathering device information while adding custom device {path!r}: "
                                   "no such file or directory")  # fmt: skip
        perms = d.get("CgroupPermissions") or "rwm"
        devices.append({"path": path, "read": "r" in perms, "write": "w" in perms, "mknod": "m" in perms})
        if d.get("PathInContainer") not in (None, "", path):
            raise DockerError(400, f"HostConfig.Devices[{i}]: a device must keep its host path in the container")
    if devices:
        svc["devices"] = devices
    for src, dst in (("Dns", "dns"), ("ExtraHosts", "extra_hosts"), ("Sysctls", "sysctls"),
                     ("SecurityOpt", "security_opt"), ("GroupAdd", "extra_groups")):  # fmt: skip
        if host.get(src):
            svc[dst] = host[src]
    if host.get("Ulimits"):
        svc["ulimits"] = {u["Name"]: {"soft": u.get("Soft"), "hard": u.get("Hard")} for u in host["Ulimits"]}
    if host.get("ReadonlyRootfs"):
        svc["read_only_root_fs"] = True
    if host.get("Init"):
        svc["init_container"] = True
    for src, dst in (("PidMode", "pid_mode"), ("IpcMode", "ipc_mode"), ("CgroupParent", "cgroup_parent")):
        if host.get(src):
            svc[dst] = host[src]
    policy = host.get("RestartPolicy") or {}
    restart = str(policy.get("Name") or "no")
    if restart not in ("no", "always", "unless-stopped", "on-failure"):
        raise DockerError(400, f"invalid restart policy {restart!r}")
    retries = int(policy.get("MaximumRetryCount") or 0)
    if retries and restart != "on-failure":
        raise DockerError(400, "maximum retry count cannot be used with restart policy " + repr(restart))
    auto_remove = bool(host.get("AutoRemove"))
    if auto_remove and restart != "no":
        raise DockerError(400, "can't create 'AutoRemove' container with restart policy")
    return svc, restart, retries, auto_remove


def created(body: dict[str, Any], image: str, hostname: str) -> Created:
    """The spec of a create body, validated as a deploy's (400 naming the field when the node cannot build it)."""
    from zlayer.agent.standalone import container_spec

    try:
        svc, restart, retries, auto_remove = service_dict(body, image, hostname)
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # a field of the wrong type or shape
        raise DockerError(400, f"invalid container config: {type(e).__name__}: {e}") from None
    try:
        spec = container_spec(svc, "<container config>")
    except SpecError as e:
        raise DockerError(400, e.message) from None
    return Created(spec, svc, restart, retries, auto_remove)


__all__ = ["Created", "created", "service_dict"]
