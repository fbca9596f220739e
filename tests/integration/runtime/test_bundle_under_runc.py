"""The config.json we write is standard OCI: Debian's runc runs it, and from inside the container the Docker
defaults are visible (capabilities, seccomp, masked paths, no mount, generated /etc files, env, user, volumes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.runtime import RuncRunner
from zlayer.runtime.linux.bundle import BundleOptions, build_config
from zlayer.runtime.linux.etcfiles import write_etc_files
from zlayer.runtime.linux.volumes import prepare_volumes
from zlayer.spec.models import ServiceSpec

pytestmark = [pytest.mark.root, pytest.mark.peer]

DOCKER_DEFAULT_CAPEFF = "00000000a80425fb"


def write_bundle(bundle: Path, rootfs: Path, raw: dict[str, Any], image_config: dict[str, Any]) -> None:
    spec = ServiceSpec.model_validate({"image": {"name": "busybox"}, **raw})
    vols = prepare_volumes(spec.storage, data_dir=bundle / "data", container="t", rootfs=rootfs)
    etc = write_etc_files(bundle, hostname="web-rep-1", extra_hosts=spec.extra_hosts)
    doc = build_config(
        spec,
        image_config,
        BundleOptions(container_id="web-rep-1", image="busybox", rootfs=rootfs, extra_mounts=[*vols.mounts, *etc],
                      rootfs_path_in_config=str(rootfs)),
    )  # fmt: skip
    (bundle / "config.json").write_text(json.dumps(doc))


def run(runtime_runc: RuncRunner, tmp_path: Path, rootfs: Path, image_config: dict[str, Any], spec: dict[str, Any],
        script: str) -> str:  # fmt: skip
    spec = {**spec, "command": {**spec.get("command", {}), "entrypoint": ["sh", "-c", script]}}
    write_bundle(tmp_path, rootfs, spec, image_config)
    res = runtime_runc.run(tmp_path)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_docker_default_security_seen_from_inside(runtime_runc, tmp_path, runtime_rootfs, runtime_image_config):  # type: ignore[no-untyped-def]
    out = run(runtime_runc, tmp_path, runtime_rootfs, runtime_image_config, {},
              "grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/self/status; echo pid=$$; "
              "echo kcore=$(head -c 64 /proc/kcore 2>/dev/null | wc -c); "
              "mount -t tmpfs none /mnt 2>/dev/null; echo mount=$?; "
              "touch /proc/sys/x 2>/dev/null; echo procsys=$?")  # fmt: skip
    assert f"CapEff:\t{DOCKER_DEFAULT_CAPEFF}" in out
    assert "Seccomp:\t2" in out and "NoNewPrivs:\t1" in out
    assert "pid=1" in out and "kcore=0" in out
    assert "mount=1" in out and "procsys=1" in out


def test_generated_etc_files_env_workdir_and_user(runtime_runc, tmp_path, runtime_rootfs, runtime_image_config):  # type: ignore[no-untyped-def]
    spec = {"user": "app", "env": {"GREETING": "hello"}, "command": {"workdir": "/home/app"},
            "extra_hosts": ["db.local:10.1.2.3"]}  # fmt: skip
    out = run(runtime_runc, tmp_path, runtime_rootfs, runtime_image_config, spec,
              "id; pwd; echo $GREETING $HOSTNAME; cat /etc/hostname; grep db.local /etc/hosts")  # fmt: skip
    assert "uid=1000(app) gid=1000(app) groups=" in out and "50(staff)" in out and "29(audio)" in out
    assert "/home/app\nhello web-rep-1\nweb-rep-1\n10.1.2.3\tdb.local" in out


def test_volumes_and_read_only_rootfs(runtime_runc, tmp_path, runtime_rootfs, runtime_image_config):  # type: ignore[no-untyped-def]
    host = tmp_path / "hostdir"
    host.mkdir()
    (host / "f").write_text("bound\n")
    spec = {
        "read_only_root_fs": True,
        "storage": [
            {"type": "bind", "source": str(host), "target": "/b", "readonly": True},
            {"type": "named", "name": "data", "target": "/var/lib/data"},
            {"type": "anonymous", "target": "/anon"},
            {"type": "tmpfs", "target": "/scratch", "size": "1Mi", "mode": 1777},
        ],
    }
    out = run(runtime_runc, tmp_path, runtime_rootfs, runtime_image_config, spec,
              "cat /b/f; cat /var/lib/data/seed.txt; echo x > /var/lib/data/new && echo named-rw; "
              "echo x > /anon/f && echo anon-rw; echo x > /scratch/f && echo tmpfs-rw; "
              "touch /b/g 2>/dev/null || echo bind-ro; touch /rootfile 2>/dev/null || echo root-ro")  # fmt: skip
    assert out.split() == ["bound", "from-image", "named-rw", "anon-rw", "tmpfs-rw", "bind-ro", "root-ro"]
    assert (tmp_path / "data/volumes/data/new").exists()  # the named volume lives on the host


def test_cap_drop_and_ulimit_clamp(runtime_runc, tmp_path, runtime_rootfs, runtime_image_config):  # type: ignore[no-untyped-def]
    spec = {"cap_drop": ["ALL"], "ulimits": {"nofile": {"soft": 1048576, "hard": 1048576}}}
    out = run(runtime_runc, tmp_path, runtime_rootfs, runtime_image_config, spec,
              "grep CapEff /proc/self/status; ulimit -n")  # fmt: skip
    import resource

    assert "CapEff:\t0000000000000000" in out
    assert out.split()[-1] == str(resource.getrlimit(resource.RLIMIT_NOFILE)[1])
