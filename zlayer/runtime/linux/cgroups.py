"""Reading a container's cgroups: CPU, memory, pids and I/O use, on v1, v2 or a v1/v2 hybrid host.

The shim records the container's cgroup directories (one per v1 hierarchy, or one unified v2 directory) in its
state; each figure is read from whichever of them carries the controller. Freezing is the shim module's job.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from zlayer.runtime.protocol import ContainerStats

UNLIMITED_V1 = 2**62  # v1 reports "no limit" as a huge page-aligned number (0x7FFFFFFFFFFFF000 and the like)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    if text is None or text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _kv(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _find(paths: Sequence[Path], name: str) -> Path | None:
    """The first directory holding ``name``; on v1 the controller's own hierarchy (``memory.*`` under
    ``.../memory/...``, ``cpuacct.*`` under ``.../cpu,cpuacct/...``) is looked at first, so a stats sample costs a
    stat per file rather than one per hierarchy per file."""
    ctrl = name.split(".", 1)[0]
    marks = (f"/{ctrl}/", f"/{ctrl},", f",{ctrl}/", f",{ctrl},")
    texts = [f"{p}/" for p in paths]
    own = [i for i, t in enumerate(texts) if any(m in t for m in marks)]
    for i in (*own, *(i for i in range(len(paths)) if i not in own)):
        f = paths[i] / name
        if f.exists():
            return f
    return None


def oom_kills(paths: Sequence[Path]) -> int | None:
    """The memory cgroup's count of processes the kernel's OOM killer ended (``oom_kill`` of v1's
    ``memory.oom_control`` or v2's ``memory.events``); ``None`` when the kernel keeps no such count."""
    for name in ("memory.oom_control", "memory.events"):
        if f := _find(paths, name):
            return _kv(f).get("oom_kill")
    return None


class OomWatch:
    """Whether the kernel's OOM killer ended a process of the cgroup between this object's creation and
    :meth:`killed` (an exec's life: the shim's exit record covers only the init's)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = tuple(paths)
        self.start = oom_kills(self.paths)

    def killed(self) -> bool:
        now = oom_kills(self.paths)
        return self.start is not None and now is not None and now > self.start


def read_stats(paths: Sequence[Path]) -> ContainerStats:
    """One sample from the container's cgroup directories (missing controllers read as zero / ``None``)."""
    cpu = 0
    mem = 0
    limit: int | None = None
    peak: int | None = None
    rd = wr = 0
    if f := _find(paths, "cpuacct.usage"):  # v1, nanoseconds
        cpu = _int(f) or 0
    elif f := _find(paths, "cpu.stat"):
        cpu = _kv(f).get("usage_usec", 0) * 1000
    if f := _find(paths, "memory.usage_in_bytes"):  # v1
        mem = _int(f) or 0
        d = f.parent
        stat = _kv(d / "memory.stat")
        mem = max(0, mem - stat.get("total_inactive_file", 0))  # what docker stats shows: usage minus page cache
        limit = _int(d / "memory.limit_in_bytes")
        if limit is not None and limit >= UNLIMITED_V1:
            limit = None
        peak = _int(d / "memory.max_usage_in_bytes")
    elif f := _find(paths, "memory.current"):  # v2
        d = f.parent
        mem = max(0, (_int(f) or 0) - _kv(d / "memory.stat").get("inactive_file", 0))
        limit = _int(d / "memory.max")
        peak = _int(d / "memory.peak")
    pids = _int(f) or 0 if (f := _find(paths, "pids.current")) else 0
    pids_limit = _int(f.parent / "pids.max") if f else None
    if f := _find(paths, "blkio.throttle.io_service_bytes"):  # v1: "MAJ:MIN Read N"
        for line in (_read(f) or "").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2].isdigit():
                if parts[1] == "Read":
                    rd += int(parts[2])
                elif parts[1] == "Write":
                    wr += int(parts[2])
    elif f := _find(paths, "io.stat"):  # v2: "MAJ:MIN rbytes=N wbytes=N ..."
        for line in (_read(f) or "").splitlines():
            for item in line.split()[1:]:
                k, _, v = item.partition("=")
                if k == "rbytes" and v.isdigit():
                    rd += int(v)
                elif k == "wbytes" and v.isdigit():
                    wr += int(v)
    return ContainerStats(
        cpu_usage_ns=cpu,
        memory_usage_bytes=mem,
        memory_limit_bytes=limit,
        memory_max_usage_bytes=peak,
        pids_current=pids,
        pids_limit=pids_limit,
        io_read_bytes=rd,
        io_write_bytes=wr,
        oom_kills=oom_kills(paths) or 0,
        timestamp=time.time(),
    )


def procs(paths: Sequence[Path]) -> list[int]:
    """Every pid in the container's cgroup (from the first directory that lists them)."""
    for name in ("cgroup.procs", "tasks"):
        f = _find(paths, name)
        if f is not None:
            text = _read(f) or ""
            return sorted({int(x) for x in text.split() if x.isdigit()})
    return []
