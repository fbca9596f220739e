"""Importing images into the store and unpacking their layers into overlayfs form, for real (root)."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.images import Entry, busybox_entries, docker_archive, tar_bytes
from zlayer.errors import ImageError
from zlayer.images import ImageStore, export_archive, import_archive, mount_rootfs, unmount_rootfs

pytestmark = pytest.mark.root


def test_multi_layer_image_unpacks_with_whiteouts_opaque_dirs_and_metadata(
    images_store: ImageStore, images_archive_factory: Callable[..., Path], tmp_path: Path
) -> None:
    base = busybox_entries(
        [
            Entry("data", "dir", mode=0o755),
            Entry("data/old.txt", data=b"old"),
            Entry("data/gone.txt", data=b"bye"),
            Entry("cache", "dir", mode=0o755),
            Entry("cache/stale", data=b"stale"),
            Entry("owned", data=b"x", mode=0o640, uid=1234, gid=4321, xattrs={"user.origin": "zlayer"}),
            Entry("dev-null", "char", mode=0o666, dev=(1, 3)),
            Entry("fifo", "fifo", mode=0o600),
            Entry("bin/bb-hard", "hardlink", link="bin/busybox"),
        ]
    )
    top = [
        Entry("data", "dir", mode=0o755),
        Entry("data/.wh.gone.txt"),
        Entry("data/new.txt", data=b"new"),
        Entry("cache", "dir", mode=0o755),
        Entry("cache/.wh..wh..opq"),
        Entry("cache/fresh", data=b"fresh"),
    ]
    image = import_archive(images_store, images_archive_factory([base, top]), tag="test/layers:1")
    lower, upper_layer = image.layer_dirs
    assert stat.S_ISCHR(os.lstat(upper_layer / "data" / "gone.txt").st_mode)
    assert os.lstat(upper_layer / "data" / "gone.txt").st_rdev == 0
    assert os.getxattr(upper_layer / "cache", "trusted.overlay.opaque") == b"y"
    owned = os.lstat(lower / "owned")
    assert (owned.st_uid, owned.st_gid, stat.S_IMODE(owned.st_mode)) == (1234, 4321, 0o640)
    assert owned.st_mtime == 1_700_000_000
    assert os.getxattr(lower / "owned", "user.origin") == b"zlayer"
    assert os.lstat(lower / "dev-null").st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(os.lstat(lower / "fifo").st_mode)
    assert os.lstat(lower / "bin" / "bb-hard").st_ino == os.lstat(lower / "bin" / "busybox").st_ino
    assert os.readlink(lower / "bin" / "sh") == "busybox"

    target = tmp_path / "rootfs"
    mount_rootfs(image.layer_dirs, tmp_path / "upper", tmp_path / "work", target)
    try:
        assert sorted(os.listdir(target / "data")) == ["new.txt", "old.txt"]
        assert os.listdir(target / "cache") == ["fresh"]
        (target / "written").write_text("in the upper dir")
        assert (tmp_path / "upper" / "written").read_text() == "in the upper dir"
        out = subprocess.run(
            ["chroot", str(target), "/bin/sh", "-c", "cat /data/new.txt"], capture_output=True, text=True
        )
        assert out.stdout == "new"
    finally:
        unmount_rootfs(target)
    assert not os.path.ismount(target)
    assert not (lower / "written").exists()


def test_readonly_rootfs_refuses_writes(images_store: ImageStore, images_busybox_oci: Path, tmp_path: Path) -> None:
    image = import_archive(images_store, images_busybox_oci, tag="ro/test")
    target = tmp_path / "ro"
    mount_rootfs(image.layer_dirs, tmp_path / "u", tmp_path / "w", target, readonly=True)
    try:
        with pytest.raises(OSError):
            (target / "x").write_text("no")
    finally:
        unmount_rootfs(target)


@pytest.mark.parametrize(
    ("entries", "culprit"),
    [
        ([Entry("../evil", data=b"x")], "../evil"),
        ([Entry("/abs-evil", data=b"x")], "/abs-evil"),
        ([Entry("up", "symlink", link="/"), Entry("up/evil", data=b"x")], "up/evil"),
        ([Entry("esc", "symlink", link="../outside")], "esc"),
        ([Entry("hl", "hardlink", link="../../etc/passwd")], "../../etc/passwd"),
    ],
)
def test_hostile_layer_entries_are_rejected_by_name_and_nothing_lands_outside(
    images_store: ImageStore,
    images_archive_factory: Callable[..., Path],
    entries: list[Entry],
    culprit: str,
    tmp_path: Path,
) -> None:
    archive = images_archive_factory([entries], name="hostile.tar")
    before = set(os.listdir(tmp_path))
    with pytest.raises(ImageError) as err:
        import_archive(images_store, archive, tag="evil/x")
    assert culprit in str(err.value)
    assert set(os.listdir(tmp_path)) == before
    assert not list((images_store.root / "layers").iterdir())
    assert not list((images_store.root / "tmp").iterdir())


def test_blob_with_wrong_digest_is_discarded(images_store: ImageStore, tmp_path: Path) -> None:
    src = tmp_path / "blob"
    src.write_bytes(b"not what the manifest promised")
    wrong = "sha256:" + "0" * 64
    with pytest.raises(ImageError, match=wrong), open(src, "rb") as f:
        images_store.put_blob_stream(f, expected=wrong)
    assert not images_store.has_blob(wrong)
    assert not list((images_store.root / "blobs" / "sha256").iterdir())
    assert not list((images_store.root / "tmp").iterdir())


def test_layer_left_half_unpacked_by_a_crash_is_redone(images_store: ImageStore, images_busybox_oci: Path) -> None:
    image = import_archive(images_store, images_busybox_oci, tag="crash/test")
    layer_root = image.layer_dirs[0].parent
    (layer_root / "diffid").unlink()  # as if the process died before the layer was marked complete
    (image.layer_dirs[0] / "bin" / "busybox").unlink()
    again = images_store.get("crash/test")
    assert (again.layer_dirs[0] / "bin" / "busybox").is_file()
    assert (layer_root / "diffid").is_file()


def test_same_image_imported_twice_at_once_is_stored_once(images_store: ImageStore, images_busybox_oci: Path) -> None:
    errors: list[BaseException] = []

    def run(tag: str) -> None:
        try:
            import_archive(images_store, images_busybox_oci, tag=tag)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(f"twice/t{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(list((images_store.root / "layers").iterdir())) == 1
    assert images_store.get("twice/t0").digest == images_store.get("twice/t1").digest


def test_rootfs_tarball_import_applies_changes(images_store: ImageStore, tmp_path: Path) -> None:
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(tar_bytes(busybox_entries()))
    changes = ['CMD ["httpd", "-f"]', "ENV GREETING=hello", "WORKDIR /www", "EXPOSE 8080", "USER nobody"]
    image = import_archive(images_store, tarball, tag="plain/rootfs", changes=changes)
    cfg: dict[str, Any] = image.config
    assert cfg["Cmd"] == ["httpd", "-f"]
    assert "GREETING=hello" in cfg["Env"]
    assert (cfg["WorkingDir"], cfg["User"]) == ("/www", "nobody")
    assert "8080/tcp" in cfg["ExposedPorts"]
    assert (image.layer_dirs[0] / "www" / "index.html").read_bytes() == b"hello from busybox\n"


def test_unsupported_change_instruction_is_named(images_store: ImageStore, tmp_path: Path) -> None:
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(tar_bytes(busybox_entries()))
    with pytest.raises(ImageError, match="unsupported instruction RUN"):
        import_archive(images_store, tarball, changes=["RUN rm -rf /"])


def test_docker_save_archive_imports_with_its_repo_tag(images_store: ImageStore, tmp_path: Path) -> None:
    archive = docker_archive(tmp_path / "saved.tar", [busybox_entries()], repo_tag="demo/docker:1")
    image = import_archive(images_store, archive)
    assert image.reference == "docker.io/demo/docker:1"
    assert (image.layer_dirs[0] / "bin" / "busybox").is_file()


def test_multi_platform_archive_picks_the_host_platform(
    images_store: ImageStore, images_archive_factory: Callable[..., Path]
) -> None:
    archive = images_archive_factory([busybox_entries()], platforms=[("linux", "arm64"), ("linux", "amd64")])
    image = import_archive(images_store, archive, tag="multi/arch")
    assert image.platform == "linux/amd64"


def test_archive_for_another_platform_lists_what_exists(
    images_store: ImageStore, images_archive_factory: Callable[..., Path]
) -> None:
    archive = images_archive_factory([busybox_entries()], platforms=[("linux", "arm64"), ("linux", "s390x")])
    with pytest.raises(ImageError, match="linux/arm64, linux/s390x"):
        import_archive(images_store, archive, tag="other/arch")


@pytest.mark.peer
def test_exported_archive_is_read_by_skopeo_and_umoci(
    images_store: ImageStore, images_busybox_oci: Path, tmp_path: Path
) -> None:
    import_archive(images_store, images_busybox_oci, tag="peer/check:1")
    out = tmp_path / "export.tar"
    export_archive(images_store, "peer/check:1", out)
    inspect = subprocess.run(["skopeo", "inspect", f"oci-archive:{out}"], capture_output=True, text=True, check=True)
    assert images_store.get("peer/check:1").digest in inspect.stdout
    subprocess.run(["skopeo", "copy", "-q", f"oci-archive:{out}", f"oci:{tmp_path / 'layout'}:v1"], check=True)
    subprocess.run(
        ["umoci", "unpack", "--image", f"{tmp_path / 'layout'}:v1", str(tmp_path / "bundle")],
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "bundle" / "rootfs" / "bin" / "busybox").is_file()


def test_prune_keeps_named_images_and_drops_the_rest(images_store: ImageStore, images_busybox_oci: Path) -> None:
    import_archive(images_store, images_busybox_oci, tag="keep/me")
    stray = images_store.put_blob(b"unreferenced")
    leftover = images_store.root / "tmp" / "leftover"
    leftover.write_bytes(b"partial download")
    os.utime(leftover, (1, 1))  # left by a crash long ago
    items, freed = images_store.prune()
    assert items >= 2 and freed >= len(b"unreferenced")
    assert not images_store.has_blob(stray)
    assert not leftover.exists()
    assert (images_store.get("keep/me").layer_dirs[0] / "bin" / "busybox").is_file()
