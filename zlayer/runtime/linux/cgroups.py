"""Reading a container's cgroups: CPU, memory, pids and I/O use, on v1, v2 or a v1/v2 hybrid host.

The shim records the container's cgroup directories (one per v1 hierarchy, or one unified v2 directory) in its
state; each figure is read from whichever of them carries the controller. Freezing is the shim module's job.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from zlayer.runtime.protocol import ContainerStats, ContainerUsage

READ_MAX = 8192  # the longest of the files UsageFiles reads (memory.stat, some 40 lines) fits
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


class UsageFiles:
    """A container's CPU time and memory as :func:`read_stats` reads them (v1: ``cpuacct.usage``,
    ``memory.usage_in_bytes`` less ``total_inactive_file``, ``memory.limit_in_bytes``; v2: ``cpu.stat``'s
    ``usage_usec``, ``memory.current`` less ``inactive_file``, ``memory.max``; a hybrid host's from whichever
    hierarchy carries the controller), for a caller that samples it again and again: the files are found once, and
    once :meth:`hold` has opened them each sample is one ``pread`` per file — no path walk, no stat, nothing else
    read. A file of a cgroup removed since reads ``ENODEV`` (an ``OSError``, as a file not found does): the
    container's figures are gone, not zero."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = tuple(paths)
        v1_cpu = _find(paths, "cpuacct.usage")
        self.cpu_v2 = v1_cpu is None
        v1_mem = _find(paths, "memory.usage_in_bytes")
        self.mem_v2 = v1_mem is None
        cpu = v1_cpu or _find(paths, "cpu.stat")
        mem = v1_mem or _find(paths, "memory.current")
        stat = limit = None
        if mem is not None:
            stat = mem.parent / "memory.stat"
            limit = mem.parent / ("memory.max" if self.mem_v2 else "memory.limit_in_bytes")
        self.files = (cpu, mem, stat, limit)
        self.fds: tuple[int, ...] | None = None

    def hold(self) -> int:
        """Keep the files open from now on; returns how many descriptors that holds."""
        if self.fds is None:
            fds: list[int] = []
            try:
                for f in self.files:
                    fds.append(os.open(f, os.O_RDONLY | os.O_CLOEXEC) if f is not None else -1)
            except OSError:
                for fd in fds:
                    if fd >= 0:
                        os.close(fd)
                raise
            self.fds = tuple(fds)
        return sum(fd >= 0 for fd in self.fds)

    def close(self) -> None:
        for fd in self.fds or ():
            if fd >= 0:
                os.close(fd)
        self.fds = None

    def _raw(self, i: int) -> bytes:
        if self.fds is not None:
            fd = self.fds[i]
            return os.pread(fd, READ_MAX, 0) if fd >= 0 else b""
        f = self.files[i]
        if f is None:
            return b""
        fd = os.open(f, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.read(fd, READ_MAX)
        finally:
            os.close(fd)

    def read(self) -> ContainerUsage:
        """One sample; ``OSError`` when the cgroup is gone."""
        raw = self._raw(0)
        cpu = _field(raw, b"usage_usec") * 1000 if self.cpu_v2 else int(raw or 0)  # v2: cpu.stat; v1: ns
        mem = int(self._raw(1) or 0)
        stat = self._raw(2)
        mem = max(0, mem - _field(stat, b"inactive_file" if self.mem_v2 else b"total_inactive_file"))
        text = self._raw(3).strip()
        limit = int(text) if text and text != b"max" else None
        if limit is not None and limit >= UNLIMITED_V1:
            limit = None
        return ContainerUsage(cpu_usage_ns=cpu, memory_usage_bytes=mem, memory_limit_bytes=limit)


def _field(raw: bytes, key: bytes) -> int:
    """The value of ``key`` in a flat-keyed cgroup file (``key N`` lines); 0 when absent."""
    at = raw.find(key + b" ")
    while at > 0 and raw[at - 1] != 10:  # a line that merely ends in the key (total_inactive_file): not it
        at = raw.find(key + b" ", at + 1)
    if at < 0:
        return 0
    end = raw.find(b"\n", at)
    return int(raw[at + len(key) + 1 : end if end >= 0 else len(raw)])


def procs(paths: Sequence[Path]) -> list[int]:
    """Every pid in the container's cgroup (from the first directory that lists them)."""
    for name in ("cgroup.procs", "tasks"):
        f = _find(paths, name)
        if f is not None:
            text = _read(f) or ""
            return sorted({int(x) for x in text.split() if x.isdigit()})
    return []
