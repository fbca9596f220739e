"""The layer unpacker on every compression and tar dialect a registry may serve, and on hostile entries (root)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from tests.fixtures.images import Entry, busybox_entries, tar_bytes
from zlayer.errors import ImageError
from zlayer.images.unpack import unpack_layer

pytestmark = pytest.mark.root


def _compressions(raw: bytes) -> dict[str, bytes]:
    half = len(raw) // 2
    zstd = zstandard.ZstdCompressor()
    return {
        "plain": raw,
        "gzip": gzip.compress(raw, 6),
        "gzip-members": gzip.compress(raw[:half], 1) + gzip.compress(raw[half:], 9),
        "zstd": zstd.compress(raw),
        "zstd-frames": zstd.compress(raw[:half]) + zstd.compress(raw[half:]),
    }


@pytest.mark.parametrize("kind", ["plain", "gzip", "gzip-members", "zstd", "zstd-frames"])
def test_every_compression_gives_the_same_tree_and_diffid(tmp_path: Path, kind: str) -> None:
    raw = tar_bytes(busybox_entries([Entry("big", data=os.urandom(3 << 20) * 2, mode=0o600, uid=7, gid=8)]))
    dest = tmp_path / "fs"
    dest.mkdir()
    diff = unpack_layer(io.BytesIO(_compressions(raw)[kind]), dest, layer=kind)
    assert diff == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert (dest / "bin" / "busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    big = os.lstat(dest / "big")
    assert (big.st_size, big.st_uid, big.st_gid, stat.S_IMODE(big.st_mode)) == (6 << 20, 7, 8, 0o600)
    assert os.readlink(dest / "bin" / "sh") == "busybox"


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_long_names_in_every_tar_dialect(tmp_path: Path, fmt: int) -> None:
    deep = "/".join(["d" * 60] * 3)  # 182 characters: ustar splits it into prefix + name, others extend
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        info = tarfile.TarInfo(f"{deep}/file.txt")
        info.size, info.mtime = 5, 1_600_000_000
        tar.addfile(info, io.BytesIO(b"hello"))
        if fmt != tarfile.USTAR_FORMAT:
            link = tarfile.TarInfo("short")
            link.type, link.linkname = tarfile.SYMTYPE, f"{deep}/file.txt"
            tar.addfile(link)
    dest = tmp_path / "fs"
    dest.mkdir()
    unpack_layer(io.BytesIO(buf.getvalue()), dest, layer="long")
    assert (dest / deep / "file.txt").read_bytes() == b"hello"
    assert os.lstat(dest / deep / "file.txt").st_mtime == 1_600_000_000
    if fmt != tarfile.USTAR_FORMAT:
        assert (dest / "short").read_bytes() == b"hello"


@pytest.mark.parametrize(
    ("entries", "culprit"),
    [
        # a directory replaced by a symlink must not stay trusted as a directory
        ([Entry("a", "dir"), Entry("a", "symlink", link="/"), Entry("a/evil", data=b"x")], "a/evil"),
        ([Entry("d", "dir"), Entry("d/.wh..", data=b"")], "d/.wh.."),
        ([Entry("d", "dir"), Entry("d/.wh...", data=b"")], "d/.wh..."),
        ([Entry("x/../../evil", data=b"x")], "x/../../evil"),
    ],
)
def test_hostile_entries_are_named_and_nothing_lands_outside(
    tmp_path: Path, entries: list[Entry], culprit: str
) -> None:
    dest = tmp_path / "layer" / "fs"
    dest.mkdir(parents=True)
    before = set(os.listdir("/"))
    with pytest.raises(ImageError) as err:
        unpack_layer(io.BytesIO(gzip.compress(tar_bytes(entries))), dest, layer="sha256:hostile")
    assert culprit in str(err.value) and "sha256:hostile" in str(err.value)
    assert set(os.listdir("/")) == before
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (gzip.compress(tar_bytes(busybox_entries()))[:-5000], "ends early"),
        (b"\x1f\x8b" + b"\0" * 100, "not a valid layer tarball"),
        (b"x" * 1024, "checksum"),
        (zstandard.ZstdCompressor().compress(tar_bytes(busybox_entries()))[:-3000], "not a valid layer tarball"),
    ],
)
def test_truncated_or_garbage_blobs_are_one_clear_error(tmp_path: Path, blob: bytes, message: str) -> None:
    dest = tmp_path / "fs"
    dest.mkdir()
    with pytest.raises(ImageError) as err:
        unpack_layer(io.BytesIO(blob), dest, layer="sha256:broken")
    assert message in str(err.value) and "sha256:broken" in str(err.value)
