"""Set-up failures come back as one clear message naming the container and the cause, and leave nothing behind."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.fixtures.runtime_shim import BundleFactory
from zlayer.errors import ConflictError, RuntimeFailure
from zlayer.runtime.linux import shim

pytestmark = [pytest.mark.root]


def _cgroup_dirs(bundle: Path) -> list[Path]:
    rel = json.loads((bundle / "config.json").read_text())["linux"]["cgroupsPath"]
    return [p / rel.lstrip("/") for p in Path("/sys/fs/cgroup").iterdir() if (p / "cgroup.procs").exists()]


def _create_fails(root: Path, bundle: Path) -> str:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    with pytest.raises(RuntimeFailure) as info:
        asyncio.run(shim.create(name, bundle, root, None))
    assert not (root / name).exists()
    assert not any(p.exists() for p in _cgroup_dirs(bundle))
    assert name in str(info.value)
    return str(info.value)


def test_missing_executable_is_named_and_rolled_back(
    runtime_shim_binary: Path, runtime_shim_root: Path, runtime_shim_bundle: BundleFactory
) -> None:
    msg = _create_fails(runtime_shim_root, runtime_shim_bundle(["/bin/foo"]))
    assert "executable file not found: /bin/foo" in msg
    msg = _create_fails(runtime_shim_root, runtime_shim_bundle(["nosuchprogram", "x"]))
    assert "executable file not found in $PATH: nosuchprogram" in msg


def test_rlimit_above_the_host_hard_limit_is_refused(
    runtime_shim_root: Path, runtime_shim_bundle: BundleFactory
) -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    bundle = runtime_shim_bundle(["true"], rlimits=[{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1048576}])
    msg = _create_fails(runtime_shim_root, bundle)
    assert f"RLIMIT_NOFILE: hard limit 1048576 is above the host's hard limit {hard}" in msg


def test_rlimits_within_the_host_limit_apply(runtime_shim_root: Path, runtime_shim_bundle: BundleFactory) -> None:
    bundle = runtime_shim_bundle(
        ["sh", "-c", "ulimit -n; ulimit -Hn"], rlimits=[{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 2048}]
    )
    from zlayer.runtime.linux.shim import shim_path

    r = subprocess.run(
        [str(shim_path()), "run", "--root", str(runtime_shim_root), "--bundle", str(bundle), "rl"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.stdout.split() == ["512", "2048"]


def test_a_mount_the_kernel_refuses_is_named(
    runtime_shim_binary: Path, runtime_shim_root: Path, runtime_shim_bundle: BundleFactory
) -> None:
    bad = {"destination": "/data", "type": "nosuchfs", "source": "x", "options": []}
    msg = _create_fails(runtime_shim_root, runtime_shim_bundle(["true"], mounts_extra=[bad]))
    assert "mount x (nosuchfs) on /data" in msg and "No such device" in msg
    missing = {"destination": "/data", "type": "bind", "source": "/nonexistent-dir", "options": ["rbind"]}
    msg = _create_fails(runtime_shim_root, runtime_shim_bundle(["true"], mounts_extra=[missing]))
    assert "bind source /nonexistent-dir" in msg


def test_a_limit_the_kernel_rejects_is_named(runtime_shim_root: Path, runtime_shim_bundle: BundleFactory) -> None:
    bundle = runtime_shim_bundle(["true"], resources={"cpu": {"cpus": "0-99"}})
    msg = _create_fails(runtime_shim_root, bundle)
    assert "cgroup: cannot set cpuset.cpus to 0-99" in msg


def test_a_sysctl_of_the_host_is_refused(runtime_shim_root: Path, runtime_shim_bundle: BundleFactory) -> None:
    bundle = runtime_shim_bundle(["true"], sysctl={"vm.swappiness": "10"})
    msg = _create_fails(runtime_shim_root, bundle)
    assert "linux.sysctl.vm.swappiness" in msg and "refusing to change the host" in msg


def test_a_namespaced_sysctl_is_set(runtime_shim_root: Path, runtime_shim_bundle: BundleFactory) -> None:
    bundle = runtime_shim_bundle(
        ["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"],
        sysctl={"net.ipv4.ip_unprivileged_port_start": "80"},
    )
    from zlayer.runtime.linux.shim import shim_path

    r = subprocess.run(
        [str(shim_path()), "run", "--root", str(runtime_shim_root), "--bundle", str(bundle), "sc"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "80"


def test_the_same_id_twice_conflicts(runtime_shim_root: Path, runtime_shim_bundle: BundleFactory) -> None:
    bundle = runtime_shim_bundle(["true"])

    async def go() -> None:
        await shim.create("twice", bundle, runtime_shim_root, None)
        with pytest.raises(ConflictError, match="twice already exists"):
            await shim.create("twice", bundle, runtime_shim_root, None)
        await shim.delete("twice", runtime_shim_root)

    asyncio.run(go())


def test_oci_cli_runs_a_runc_spec_bundle(runtime_shim_bundle: BundleFactory, tmp_path: Path) -> None:
    bundle = runtime_shim_bundle(["sh", "-c", "echo from-cli; exit 6"])
    root = tmp_path / "cli-root"
    zl = [sys.executable, "-m", "zlayer", "runtime", "--root", str(root)]
    run = subprocess.run([*zl, "run", "--bundle", str(bundle), "cli1"], capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout) == (6, "from-cli\n")
    assert not (root / "cli1").exists()
    log = tmp_path / "cli2.log"
    subprocess.run([*zl, "create", "--bundle", str(bundle), "--log", str(log), "cli2"], check=True, timeout=60)
    state = json.loads(subprocess.run([*zl, "state", "cli2"], capture_output=True, check=True, timeout=60).stdout)
    assert state["status"] == "created" and state["id"] == "cli2" and state["bundle"] == str(bundle)
    assert state["pid"] > 0
    subprocess.run([*zl, "start", "cli2"], check=True, timeout=60)
    asyncio.run(shim.wait("cli2", root))
    state = json.loads(subprocess.run([*zl, "state", "cli2"], capture_output=True, check=True, timeout=60).stdout)
    assert state["status"] == "stopped"
    assert "stdout F from-cli" in log.read_text()
    subprocess.run([*zl, "delete", "cli2"], check=True, timeout=60)
    gone = subprocess.run([*zl, "state", "cli2"], capture_output=True, text=True, timeout=60)
    assert gone.returncode != 0 and "container cli2 does not exist" in gone.stderr
    assert "Traceback" not in gone.stderr


def test_oci_hooks_run_with_the_state_on_stdin_and_a_failing_one_rolls_back(
    runtime_shim_root: Path, runtime_shim_bundle: BundleFactory, tmp_path: Path
) -> None:
    out = tmp_path / "hooks.out"
    record = tmp_path / "record.sh"
    record.write_text(f'#!/bin/sh\nread -r state\necho "$1 $state" >> {out}\n')
    record.chmod(0o755)
    hooks = {
        kind: [{"path": str(record), "args": ["record.sh", kind]}]
        for kind in ("createRuntime", "poststart", "poststop")
    }
    bundle = runtime_shim_bundle(["true"])
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["hooks"] = hooks
    (bundle / "config.json").write_text(json.dumps(cfg))

    async def go() -> None:
        st = await shim.create("hooked", bundle, runtime_shim_root, None)
        await shim.start("hooked", runtime_shim_root)
        await shim.wait("hooked", runtime_shim_root)
        await shim.delete("hooked", runtime_shim_root)
        lines = out.read_text().splitlines()
        assert [line.split()[0] for line in lines] == ["createRuntime", "poststart", "poststop"]
        first = json.loads(lines[0].split(" ", 1)[1])
        assert first["id"] == "hooked" and first["pid"] == st.pid and first["bundle"] == str(bundle)

    asyncio.run(go())
    cfg["hooks"] = {"createRuntime": [{"path": "/bin/false"}]}
    (bundle / "config.json").write_text(json.dumps(cfg))
    msg = _create_fails(runtime_shim_root, bundle)
    assert "hooks.createRuntime[0] (/bin/false) failed with exit code 1" in msg
