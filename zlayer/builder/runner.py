"""Running one ``RUN`` step in a snapshot with zlayer-shim: the isolation of a container (its own mount, PID, IPC
and UTS namespaces, Docker's capabilities and seccomp profile, masked /proc paths), the host's network as BuildKit
and buildah give a step by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zlayer.runtime.linux import seccomp as _seccomp
from zlayer.runtime.linux import shim
from zlayer.runtime.linux.bundle import (
    DEFAULT_CAPS,
    DEFAULT_PATH,
    MASKED_PATHS,
    OCI_VERSION,
    READONLY_PATHS,
    default_mounts,
)
from zlayer.runtime.linux.users import resolve_user

TAIL_LINES = 20


@dataclass
class RunResult:
    code: int
    tail: list[str] = field(default_factory=list)


def step_config(
    rootfs: Path,
    argv: Sequence[str],
    env: Sequence[str],
    cwd: str,
    user: str,
    extra_mounts: Sequence[dict[str, Any]],
    hostname: str,
) -> dict[str, Any]:
    """The OCI config of a build step (the same security defaults as a service's container)."""
    who = resolve_user(rootfs, user)
    env = list(env)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, "PATH=" + DEFAULT_PATH)
    if not any(e.startswith("HOME=") for e in env):
        env.append("HOME=" + (who.home or ("/root" if who.uid == 0 else "/")))
    caps = [c for c in DEFAULT_CAPS]
    process: dict[str, Any] = {
        "terminal": False,
        "user": {"uid": who.uid, "gid": who.gid},
        "args": list(argv),
        "env": env,
        "cwd": cwd,
        "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted")},
        "noNewPrivileges": False,
    }
    if who.additional_gids:
        process["user"]["additionalGids"] = list(who.additional_gids)
    return {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": hostname,
        "mounts": default_mounts(privileged=False, own_net=False) + list(extra_mounts),
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            "resources": {},
            "rootfsPropagation": "private",
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
            "seccomp": _seccomp.to_oci(_seccomp.default_profile(), caps),
        },
    }


async def run_step(
    container_id: str,
    bundle: Path,
    state_root: Path,
    config: dict[str, Any],
    on_line: Callable[[str], None],
) -> RunResult:
    """Run the step in the foreground; its output goes line by line to ``on_line``. Cancelled, it kills the step's
    processes and waits for the shim to tear the container down before re-raising."""
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "config.json").write_text(json.dumps(config))
    argv = shim.run_argv(container_id, bundle, state_root)
    r, w = os.pipe()
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pid = os.posix_spawn(
            argv[0],
            argv,
            os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, w, 1), (os.POSIX_SPAWN_DUP2, w, 2)],
        )
    finally:
        os.close(w)
        os.close(devnull)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20, loop=loop)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(r, "rb", buffering=0)
    )
    try:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # a line longer than the limit: take what is there
                line = await reader.read(1 << 20)
            if not line:
                break
            text = line.decode(errors="replace").rstrip("\n")
            tail.append(text)
            on_line(text)
        code = await _wait(pid)
    except BaseException:
        with contextlib.suppress(Exception):
            await shim.kill(container_id, state_root, signal.SIGKILL, all=True)
        await asyncio.shield(_wait(pid))
        raise
    finally:
        transport.close()
    # a container that could not be set up says why on the same output (zlayer-shim's message), so both read alike
    return RunResult(code, list(tail))


async def _wait(pid: int) -> int:
    pidfd = os.pidfd_open(pid)
    loop = asyncio.get_running_loop()
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            await _readable(loop, pidfd)
    finally:
        os.close(pidfd)


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)
