"""Namespaces config.json asks for beyond the defaults: user (with id maps), cgroup, and joining one by path."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.fixtures.runtime_shim import BundleFactory, build_busybox_rootfs
from zlayer.runtime.linux.shim import shim_path

pytestmark = [pytest.mark.root]


def run(root: Path, bundle: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(shim_path()), "run", "--root", str(root), "--bundle", str(bundle), f"ns-{uuid.uuid4().hex[:8]}"],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_user_and_cgroup_namespaces_on_request(runtime_shim_root: Path, runtime_shim_bundle: BundleFactory) -> None:
    maps = [{"containerID": 0, "hostID": 200000, "size": 65536}]
    bundle = runtime_shim_bundle(
        ["sh", "-c", "id -u; cat /proc/self/uid_map; grep ':memory:' /proc/self/cgroup"],
        uidMappings=maps,
        gidMappings=maps,
    )
    import json

    cfg = json.loads((bundle / "config.json").read_text())
    cfg["linux"]["namespaces"] += [{"type": "user"}, {"type": "cgroup"}]
    # the mapped root (host uid 200000) must be able to reach the rootfs: pytest's tmp dirs are 0700
    top = Path(f"/tmp/zlayer-shim-userns-{uuid.uuid4().hex[:8]}")
    top.mkdir(mode=0o755)
    try:
        cfg["root"]["path"] = str(build_busybox_rootfs(top / "rootfs"))
        (bundle / "config.json").write_text(json.dumps(cfg))
        r = run(runtime_shim_root, bundle)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "0"
    assert lines[1].split() == ["0", "200000", "65536"]
    assert lines[2].endswith(":memory:/")  # the container's cgroup is the root of its cgroup namespace


def test_joins_a_network_namespace_given_by_path(runtime_shim_root: Path, runtime_shim_bundle: BundleFactory) -> None:
    name = f"zls-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        path = f"/var/run/netns/{name}"
        bundle = runtime_shim_bundle(["readlink", "/proc/self/ns/net"])
        import json

        cfg = json.loads((bundle / "config.json").read_text())
        for ns in cfg["linux"]["namespaces"]:
            if ns["type"] == "network":
                ns["path"] = path
        (bundle / "config.json").write_text(json.dumps(cfg))
        r = run(runtime_shim_root, bundle)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f"net:[{os.stat(path).st_ino}]"
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)
