"""zlayer-shim's reading of a memory cgroup's OOM-kill counter, the source of every OOMKilled zlayer reports: the
``oom_kill`` line of cgroup v2's ``memory.events`` and of cgroup v1's ``memory.oom_control``, whichever the
directory has. The hierarchy this host runs containers in is exercised for real by the integration tests; here
both formats are read from files written as the kernel writes them, and the parser survives a libFuzzer run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from zlayer.runtime.linux.shim import shim_path

ROOT_DIR = Path(__file__).resolve().parents[3]

V2_EVENTS = "low 0\nhigh 0\nmax 1471\noom 4\noom_kill 3\noom_group_kill 0\n"
V1_OOM_CONTROL = "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n"


def oom_kills(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(shim_path()), "oom-kills", str(directory)], capture_output=True, text=True, timeout=10)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("memory.events", V2_EVENTS, "3"),
        ("memory.oom_control", V1_OOM_CONTROL, "7"),
        ("memory.events", "oom_group_kill 9\noom 1\noom_kill 0\n", "0"),
        ("memory.oom_control", "oom_kill_disable 1\nunder_oom 1\noom_kill 18446744073709551615", str(2**64 - 1)),
    ],
)
def test_counter_is_read_from_either_hierarchys_file(
    runtime_shim_binary: Path, tmp_path: Path, name: str, text: str, expected: str
) -> None:
    (tmp_path / name).write_text(text)
    r = oom_kills(tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expected


@pytest.mark.parametrize(
    "text",
    [
        "oom_kill_disable 0\nunder_oom 0\n",  # a v1 kernel before 4.13 has no counter
        "oom_kill \noom_kill 2\n",
        "oom_kill 3x\n",
        "oom_kill 18446744073709551616\n",
        "oom_kill_disable 5\n",
    ],
)
def test_a_missing_or_malformed_counter_is_no_count(runtime_shim_binary: Path, tmp_path: Path, text: str) -> None:
    (tmp_path / "memory.oom_control").write_text(text)
    r = oom_kills(tmp_path)
    assert r.returncode == 1
    assert f"{tmp_path}: no oom_kill counter" in r.stderr and r.stdout == ""


@pytest.mark.slow
def test_counter_parser_survives_fuzzing(tmp_path: Path) -> None:
    if not shutil.which("clang"):
        pytest.fail("clang (with libclang-rt for libFuzzer) is required: it is in .ci/apt-packages.txt")
    out = tmp_path / "build"
    subprocess.run(
        ["make", "-s", "-C", str(ROOT_DIR / "csrc" / "runtime"), f"{out}/oom-fuzz", f"O={out}"],
        check=True,
        capture_output=True,
    )
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "v2").write_text(V2_EVENTS)
    (corpus / "v1").write_text(V1_OOM_CONTROL)
    r = subprocess.run(
        [str(out / "oom-fuzz"), "-max_total_time=15", "-timeout=5", "-rss_limit_mb=1024", str(corpus)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Done" in r.stderr
