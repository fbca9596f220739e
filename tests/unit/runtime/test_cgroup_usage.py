"""What the autoscaler reads of a replica: CPU time and memory from its cgroup files on a v1, v2 or hybrid host,
normalised as ZLayer normalises them (CPU as a share of the whole node, memory of the limit), and the same figures
``stats`` gives. The hierarchies are laid out as the kernel lays them out, file formats included; the real kernel's
are read by the live autoscaler tests (tests/integration/daemon/test_autoscale_live.py)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from zlayer.agent.usage import cpu_percent, memory_percent
from zlayer.runtime.linux.cgroups import UsageFiles, read_stats

MiB = 1 << 20
V1_UNLIMITED = "9223372036854771712"  # what v1's memory.limit_in_bytes says without a limit


def v1_memory_stat(inactive_file: int, total_inactive_file: int) -> str:
    # v1 lists the cgroup's own figures, then the hierarchical ones (total_*): the total is what counts
    return (
        f"cache 10665984\nrss 8495104\nshmem 0\nactive_anon 8200192\ninactive_file {inactive_file}\n"
        f"active_file 2363392\nhierarchical_memory_limit 33554432\ntotal_cache 10665984\ntotal_rss 8495104\n"
        f"total_inactive_file {total_inactive_file}\ntotal_active_file 2363392\n"
    )


def write(d: Path, files: dict[str, str]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)
    return d


def v1_dirs(root: Path, limit: str) -> list[Path]:
    """One directory per v1 hierarchy (cpu and cpuacct apart, as some hosts mount them), the memory one limited."""
    return [
        # v1's cpu controller has a cpu.stat too, of throttling: not where CPU time is
        write(root / "cpu/zlayer/x", {"cpu.shares": "1024\n", "cpu.stat": "nr_periods 0\nnr_throttled 0\n"}),
        write(root / "cpuacct/zlayer/x", {"cpuacct.usage": "7500000000\n", "cpuacct.stat": "user 600\nsystem 150\n"}),
        write(
            root / "memory/zlayer/x",
            {
                "memory.usage_in_bytes": f"{24 * MiB}\n",
                "memory.stat": v1_memory_stat(1 * MiB, 4 * MiB),
                "memory.limit_in_bytes": f"{limit}\n",
                "memory.max_usage_in_bytes": f"{30 * MiB}\n",
            },
        ),
        write(root / "pids/zlayer/x", {"pids.current": "3\n", "pids.max": "max\n"}),
    ]


def v2_dir(root: Path, limit: str) -> Path:
    return write(
        root / "zlayer/x",
        {
            "cpu.stat": "usage_usec 7500000\nuser_usec 6000000\nsystem_usec 1500000\nnr_periods 0\n",
            "memory.current": f"{24 * MiB}\n",
            "memory.stat": f"anon 8495104\nfile 10665984\nactive_file 2363392\ninactive_file {4 * MiB}\n",
            "memory.max": f"{limit}\n",
            "memory.peak": f"{30 * MiB}\n",
            "pids.current": "3\n",
            "pids.max": "max\n",
        },
    )


LAYOUTS = ["v1", "v2", "hybrid"]


def layout(kind: str, root: Path, limit: str) -> list[Path]:
    if kind == "v1":
        return v1_dirs(root / "v1", limit)
    if kind == "v2":
        return [v2_dir(root / "unified", "max" if limit == V1_UNLIMITED else limit)]
    # hybrid: the v1 controllers, and the unified hierarchy systemd mounts beside them carrying none of them
    return [*v1_dirs(root / "v1", limit), write(root / "unified/zlayer/x", {"cgroup.procs": "", "cpu.pressure": ""})]


@pytest.mark.parametrize("kind", LAYOUTS)
def test_cpu_time_and_working_set_memory_read_as_stats_reads_them(kind: str, tmp_path: Path) -> None:
    paths = layout(kind, tmp_path, str(32 * MiB))
    files = UsageFiles(paths)
    got = files.read()
    assert got.cpu_usage_ns == 7_500_000_000  # v1 counts nanoseconds, v2 microseconds
    assert got.memory_usage_bytes == 20 * MiB  # in use less the inactive page cache (the hierarchy's on v1)
    assert got.memory_limit_bytes == 32 * MiB
    st = read_stats(paths)
    assert (st.cpu_usage_ns, st.memory_usage_bytes, st.memory_limit_bytes) == (
        got.cpu_usage_ns,
        got.memory_usage_bytes,
        got.memory_limit_bytes,
    )


@pytest.mark.parametrize("kind", LAYOUTS)
def test_no_memory_limit_reads_as_none_on_every_layout(kind: str, tmp_path: Path) -> None:
    assert UsageFiles(layout(kind, tmp_path, V1_UNLIMITED)).read().memory_limit_bytes is None


@pytest.mark.parametrize("kind", LAYOUTS)
def test_held_files_follow_the_counters(kind: str, tmp_path: Path) -> None:
    files = UsageFiles(layout(kind, tmp_path, str(32 * MiB)))
    try:
        assert files.hold() == 4  # CPU, memory in use, memory.stat, the limit
        cpu = next(f for f in files.files if f is not None and f.name in ("cpuacct.usage", "cpu.stat"))
        cpu.write_text("usage_usec 9000000\n" if cpu.name == "cpu.stat" else "9000000000\n")
        assert files.read().cpu_usage_ns == 9_000_000_000
    finally:
        files.close()


def test_cpu_is_a_share_of_the_whole_node_as_zlayer_counts_it() -> None:
    assert cpu_percent(1_000_000_000, 1.0, 4) == pytest.approx(25.0)  # one core busy for a second of four
    assert cpu_percent(4_000_000_000, 2.0, 2) == pytest.approx(100.0)
    assert cpu_percent(-5, 1.0, 2) == 0.0  # a counter that went back (a restarted container)
    assert cpu_percent(10, 0.0, 2) == 0.0


def test_memory_is_a_share_of_the_limit_or_else_of_the_node() -> None:
    assert memory_percent(16 * MiB, 64 * MiB, 1024 * MiB) == pytest.approx(25.0)
    assert memory_percent(16 * MiB, None, 1024 * MiB) == pytest.approx(100 * 16 / 1024)
    assert memory_percent(16 * MiB, None, None) == 0.0


@pytest.mark.root
def test_this_hosts_kernel_counts_a_busy_process_and_reports_its_cgroup_gone(tmp_path: Path) -> None:
    """A cgroup made in this host's own hierarchies (whatever they are) holding a process that burns CPU and
    touches memory: the figures grow between two samples from the held files; once the cgroup is removed, reading
    them fails."""
    if os.geteuid() != 0:
        pytest.skip("needs root (cgroups)")
    name = f"zlayer-test-usage-{os.getpid()}"
    root = Path("/sys/fs/cgroup")
    v2 = not (root / "memory").is_dir()
    dirs = [root / name] if v2 else [root / c / name for c in ("cpuacct", "memory")]
    for d in dirs:
        d.mkdir()

    def enter() -> None:  # in the cgroup before it allocates: v1 charges memory where it was first touched
        for d in dirs:
            (d / "cgroup.procs").write_text("0")

    hog = "b = bytearray(24 << 20)\nwhile True:\n    b[::4096] = bytes(len(b) // 4096)"
    burn = subprocess.Popen(["python3", "-c", hog], preexec_fn=enter)
    files = UsageFiles(dirs)
    try:
        files.hold()
        first = files.read()
        time.sleep(0.5)
        second = files.read()
        assert second.cpu_usage_ns - first.cpu_usage_ns > 50_000_000, (first, second)
        assert second.memory_usage_bytes >= 20 * MiB, second
    finally:
        burn.kill()
        burn.wait()
        for d in dirs:
            for _ in range(50):  # the killed process leaves the cgroup a moment after its end
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.05)
    with pytest.raises(OSError):
        files.read()
    files.close()
