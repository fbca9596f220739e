"""zlayer and the Debian peers on one registry: skopeo pushes, zlayer pulls and runs; zlayer pushes, skopeo copies
and umoci unpacks the same root filesystem; a WASM artifact travels end to end; pull policies are observable."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.images import busybox_entries, oci_archive
from tests.fixtures.images_peers import Entry, Proxy, Registry, multi_layer_image, push_image, push_wasm_artifact
from zlayer.images import ImageStore, mount_rootfs, unmount_rootfs

pytestmark = [pytest.mark.root, pytest.mark.peer]


def zl(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zlayer", "--data-dir", str(data), *args], capture_output=True, text=True, timeout=120
    )


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a container would see under ``root``: type, mode, owner, content or link target."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                what: object = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = None
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, what)
    return out


@pytest.mark.parametrize("fmt", ["oci", "v2s2"])
def test_image_pushed_by_skopeo_is_pulled_and_runs(tmp_path: Path, images_registry: Registry, fmt: str) -> None:
    ref = f"{images_registry.host}/peer/skopeo:1"
    archive = oci_archive(tmp_path / "img.tar", multi_layer_image())
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            "--format",
            fmt,
            "--dest-tls-verify=false",
            f"oci-archive:{archive}",
            f"docker://{ref}",
        ],
        check=True,
    )
    raw = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    want = {"oci": "application/vnd.oci.image.manifest.v1+json"}.get(
        fmt, "application/vnd.docker.distribution.manifest.v2+json"
    )
    assert raw["mediaType"] == want
    remote = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"], capture_output=True, text=True, check=True
        ).stdout
    )
    data = tmp_path / "data"
    out = zl(data, "pull", "-q", ref)
    assert out.returncode == 0, out.stderr
    assert remote["Digest"] in out.stdout, "the local image must have the registry's digest"
    image = ImageStore(data / "images").get(ref)
    assert image.digest == remote["Digest"] and len(image.layer_dirs) == 3
    target = tmp_path / "rootfs"
    mount_rootfs(image.layer_dirs, tmp_path / "upper", tmp_path / "work", target)
    try:
        run = subprocess.run(
            ["chroot", str(target), "/bin/sh", "-c", "cat /etc/motd; ls /data /cache; echo ok > /tmp/w; cat /tmp/w"],
            capture_output=True,
            text=True,
        )
    finally:
        unmount_rootfs(target)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["top", "layer", "/cache:", "fresh", "/data:", "keep.txt", "new.txt", "ok"]


def test_image_zlayer_pushes_is_read_by_skopeo_and_umoci_with_the_same_rootfs(
    tmp_path: Path, images_registry: Registry
) -> None:
    from zlayer.images import import_archive

    ref = f"{images_registry.host}/peer/zlayer:1"
    data = tmp_path / "data"
    store = ImageStore(data / "images")
    import_archive(store, oci_archive(tmp_path / "img.tar", multi_layer_image()), tag=ref)
    pushed = zl(data, "image", "push", ref)
    assert pushed.returncode == 0, pushed.stderr
    layout = tmp_path / "layout"
    subprocess.run(
        ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:v1"], check=True
    )
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:v1", str(bundle)], check=True, capture_output=True)

    image = store.get(ref)
    target = tmp_path / "rootfs"
    mount_rootfs(image.layer_dirs, tmp_path / "upper", tmp_path / "work", target, readonly=True)
    try:
        ours = tree(target)
    finally:
        unmount_rootfs(target)
    theirs = tree(bundle / "rootfs")
    assert ours == theirs
    assert "data/gone.txt" not in ours and "cache/stale" not in ours
    assert ours["data/new.txt"][1:4] == (0o600, 1000, 1000)


@pytest.mark.parametrize(
    "kinds",
    [
        ("application/wasm", "application/vnd.wasm.config.v0+json", "application/wasm"),
        (None, "application/vnd.wasm.config.v1+json", "application/vnd.wasm.content.layer.v1.wasm"),
    ],
    ids=["artifactType-v0-config", "v1-config-content-layer"],
)
def test_wasm_artifact_is_pulled_and_reported_as_wasm(
    tmp_path: Path, images_registry: Registry, kinds: tuple[str | None, str, str]
) -> None:
    import wasmtime

    ref = f"{images_registry.host}/wasm/add:1"
    artifact_type, config_type, layer_type = kinds
    digest, module = push_wasm_artifact(
        images_registry.host,
        "wasm/add",
        "1",
        artifact_type=artifact_type,
        config_type=config_type,
        layer_type=layer_type,
    )
    data = tmp_path / "data"
    out = zl(data, "pull", "-q", ref)
    assert out.returncode == 0, out.stderr
    assert digest in out.stdout
    inspect = json.loads(zl(data, "image", "inspect", ref).stdout)
    assert inspect["wasm"] is True and inspect["wasi_version"] == "preview1"
    assert inspect["layers"] == []  # nothing to unpack: the runtime loads the module itself
    listed = json.loads(zl(data, "image", "ls", "-o", "json").stdout)
    assert [(i["reference"], i["wasm"]) for i in listed] == [(ref, True)]

    image = ImageStore(data / "images").get(ref)
    assert image.is_wasm and len(image.wasm_modules) == 1
    assert [str(p) for p in image.wasm_modules] == inspect["wasm_modules"]
    assert image.wasm_modules[0].read_bytes() == module
    engine = wasmtime.Engine()
    wstore = wasmtime.Store(engine)
    instance = wasmtime.Instance(wstore, wasmtime.Module.from_file(engine, str(image.wasm_modules[0])), [])
    add = instance.exports(wstore)["add"]
    assert isinstance(add, wasmtime.Func)
    assert add(wstore, 2, 3) == 5
    # a container image is not WASM
    push_image(images_registry.host, "plain/app", "1", [busybox_entries()])
    assert zl(data, "pull", "-q", f"{images_registry.host}/plain/app:1").returncode == 0
    plain = json.loads(zl(data, "image", "inspect", f"{images_registry.host}/plain/app:1").stdout)
    assert plain["wasm"] is False and "wasm_modules" not in plain


def test_pull_policies_are_observable_at_the_registry(
    tmp_path: Path, images_registry: Registry, images_proxy_factory: Callable[[str], Proxy]
) -> None:
    proxy = images_proxy_factory(images_registry.host)
    host = images_registry.host
    ref = f"{proxy.host}/pol/app:1"
    data = tmp_path / "data"

    out = zl(data, "pull", "-q", "--policy", "never", ref)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert f"image {ref} is not in the local store and pull_policy is never" in out.stderr
    assert proxy.seen == [], "policy never contacted the registry"

    first = push_image(host, "pol/app", "1", [busybox_entries()])
    out = zl(data, "pull", "-q", "--policy", "if_not_present", ref)
    assert out.returncode == 0 and first.digest in out.stdout, out.stderr
    assert proxy.requests("GET", "/blobs/"), "the first pull fetched the blobs"

    proxy.seen.clear()
    for policy in ("if_not_present", "never"):
        out = zl(data, "pull", "-q", "--policy", policy, ref)
        assert out.returncode == 0 and first.digest in out.stdout, out.stderr
    assert proxy.seen == [], "if_not_present/never with a local image contacted the registry"

    out = zl(data, "pull", "-q", "--policy", "newer", ref)
    assert out.returncode == 0 and first.digest in out.stdout, out.stderr
    assert [(s.method, s.status) for s in proxy.seen if "/manifests/" in s.path] == [("HEAD", 200)]
    assert not proxy.requests("GET", "/blobs/"), "newer re-downloaded an unchanged image"

    proxy.seen.clear()
    out = zl(data, "pull", "-q", "--policy", "always", ref)
    assert out.returncode == 0 and first.digest in out.stdout, out.stderr
    assert proxy.requests("GET", "/manifests/1$"), "always did not ask the registry"
    assert not proxy.requests("GET", "/blobs/"), "blobs already in the store were downloaded again"

    second = push_image(host, "pol/app", "1", [busybox_entries([Entry("etc/v2", data=b"2")])])
    proxy.seen.clear()
    out = zl(data, "pull", "-q", "--policy", "newer", ref)
    assert out.returncode == 0 and second.digest in out.stdout, out.stderr
    assert proxy.requests("GET", f"/blobs/{second.layers[0]}$")
    image = ImageStore(data / "images").get(ref)
    assert image.digest == second.digest and (image.layer_dirs[0] / "etc" / "v2").read_bytes() == b"2"
