"""A busybox bundle from `runc spec` run by zlayer-shim, checked from inside the container (and side by side with
runc on the same bundle)."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from tests.fixtures.runtime_shim import DOCKER_DEFAULT_CAPEFF, BundleFactory

pytestmark = [pytest.mark.root]


def shim_run(shim: Path, root: Path, bundle: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    cid = f"t-{uuid.uuid4().hex[:10]}"
    return subprocess.run(
        [str(shim), "run", "--root", str(root), "--bundle", str(bundle), cid],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_pid1_is_the_entrypoint_and_host_processes_are_invisible(
    runtime_shim_binary: Path, runtime_shim_root: Path, runtime_shim_bundle: BundleFactory
) -> None:
    bundle = runtime_shim_bundle(["sh", "-c", "echo pid=$$; ps -o pid | tail -n +2 | wc -l"])
    r = shim_run(runtime_shim_binary, runtime_shim_root, bundle)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[0] == "pid=1"
    # sh, ps, tail and wc: nothing of the host's hundreds of processes
    assert int(lines[1]) <= 4


def test_default_seccomp_and_capabilities_as_docker(
    runtime_shim_binary: Path, runtime_shim_root: Path, runtime_shim_bundle: BundleFactory
) -> None:
    bundle = runtime_shim_bundle(["grep", "-E", "^(Seccomp|CapEff|CapBnd|NoNewPrivs):", "/proc/self/status"])
    r = shim_run(runtime_shim_binary, runtime_shim_root, bundle)
    assert r.returncode == 0, r.stderr
    fields = dict(line.split(":\t") for line in r.stdout.splitlines())
    assert fields["Seccomp"] == "2"
    assert fields["CapEff"] == DOCKER_DEFAULT_CAPEFF
    assert fields["CapBnd"] == DOCKER_DEFAULT_CAPEFF
    assert fields["NoNewPrivs"] == "1"


def test_masked_paths_read_empty_and_mount_is_denied(
    runtime_shim_binary: Path, runtime_shim_root: Path, runtime_shim_bundle: BundleFactory
) -> None:
    # This kernel has no /proc/kcore (CONFIG_PROC_KCORE off); the other masked paths it has must read empty.
    assert Path("/proc/timer_list").stat() and Path("/proc/timer_list").read_bytes()
    script = (
        "wc -c < /proc/timer_list; ls /sys/firmware | wc -l; test -e /proc/kcore && wc -c < /proc/kcore || echo 0;"
        " mount -t tmpfs none /mnt && echo MOUNTED; echo 1 > /proc/sys/kernel/panic; true"
    )
    r = shim_run(runtime_shim_binary, runtime_shim_root, runtime_shim_bundle(["sh", "-c", script]))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[:3] == ["0", "0", "0"]
    assert "MOUNTED" not in r.stdout
    assert "mount" in r.stderr and ("denied" in r.stderr or "not permitted" in r.stderr)
    assert "Read-only file system" in r.stderr


def test_hostname_and_readonly_sys(
    runtime_shim_binary: Path, runtime_shim_root: Path, runtime_shim_bundle: BundleFactory
) -> None:
    bundle = runtime_shim_bundle(["sh", "-c", "hostname; touch /sys/x 2>&1; touch /x 2>&1; true"], hostname="box7")
    r = shim_run(runtime_shim_binary, runtime_shim_root, bundle)
    out = r.stdout.splitlines()
    assert out[0] == "box7"
    assert out[1:] and all("Read-only file system" in line for line in out[1:])


def test_exit_code_propagates(
    runtime_shim_binary: Path, runtime_shim_root: Path, runtime_shim_bundle: BundleFactory
) -> None:
    r = shim_run(runtime_shim_binary, runtime_shim_root, runtime_shim_bundle(["sh", "-c", "exit 42"]))
    assert r.returncode == 42
    # a process of the container killed by a signal: the shell sees 128+11
    segv = runtime_shim_bundle(["sh", "-c", "sh -c 'kill -SEGV $$'; echo $?"])
    assert shim_run(runtime_shim_binary, runtime_shim_root, segv).stdout.strip() == "139"


def test_same_bundle_under_runc_sees_the_same(
    runtime_shim_root: Path, runtime_shim_bundle: BundleFactory, tmp_path: Path
) -> None:
    from zlayer.runtime.linux.shim import shim_path

    script = "echo $$; hostname; grep -E '^(Seccomp|CapEff):' /proc/self/status; wc -c < /proc/kcore; ls /dev | sort"
    bundle = runtime_shim_bundle(["sh", "-c", script])
    ours = shim_run(shim_path(), runtime_shim_root, bundle)
    cid = f"runc-{uuid.uuid4().hex[:8]}"
    theirs = subprocess.run(
        ["runc", "--root", str(tmp_path / "runc"), "run", "--bundle", str(bundle), cid],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert theirs.returncode == 0, theirs.stderr
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout
