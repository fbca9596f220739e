"""Unpacking one layer tarball into a directory in overlayfs form.

OCI whiteouts become what overlayfs reads: ``.wh.NAME`` a 0/0 character device named NAME, ``.wh..wh..opq`` the
``trusted.overlay.opaque=y`` xattr on its directory. Hardlinks, symlinks, device nodes, xattrs, ownership, modes and
mtimes are kept. An entry that would land outside the layer (``..``, an absolute path, a hardlink to outside, a
relative symlink climbing above the root, or a write through a symlink) is rejected with the entry's name.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
from pathlib import Path
from typing import IO, BinaryIO

from zlayer.errors import ImageError

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_CHUNK = 1 << 20


class _HashingReader:
    """A read-only file object that hashes every byte read through it (the layer's DiffID)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


def open_decompressed(fileobj: BinaryIO) -> IO[bytes]:
    """The layer's tar stream, whatever its compression (gzip, zstd or none), told by its magic bytes."""
    head = fileobj.read(4)
    fileobj.seek(0)
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=fileobj, mode="rb")  # type: ignore[return-value]
    if head == b"\x28\xb5\x2f\xfd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(fileobj, read_size=_CHUNK)
    return fileobj


def _clean_name(name: str, layer: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts:
        raise ImageError(f"layer {layer}: entry {name!r} escapes the layer (absolute path or '..'); nothing unpacked")
    return "/".join(parts)


class _Unpacker:
    def __init__(self, dest: Path, layer: str) -> None:
        self.dest = dest
        self.layer = layer
        self.safe_dirs: set[str] = {""}
        self.dir_times: list[tuple[str, int]] = []

    def _ensure_parent(self, rel: str, entry: str) -> None:
        parent = rel.rpartition("/")[0]
        if parent in self.safe_dirs:
            return
        walked = ""
        for part in parent.split("/"):
            walked = f"{walked}/{part}" if walked else part
            if walked in self.safe_dirs:
                continue
            full = self.dest / walked
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                os.mkdir(full, 0o755)
            else:
                if stat.S_ISLNK(st.st_mode):
                    raise ImageError(
                        f"layer {self.layer}: entry {entry!r} would be written through the symlink {walked!r}"
                    )
                if not stat.S_ISDIR(st.st_mode):
                    raise ImageError(f"layer {self.layer}: entry {entry!r} has a non-directory parent {walked!r}")
            self.safe_dirs.add(walked)

    def _remove_existing(self, full: Path, keep_dir: bool) -> None:
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            import shutil

            shutil.rmtree(full)
        else:
            os.unlink(full)

    def entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        rel = _clean_name(m.name, self.layer)
        if not rel:
            return  # the root itself
        self._ensure_parent(rel, m.name)
        base = rel.rpartition("/")[2]
        parent = self.dest / rel.rpartition("/")[0] if "/" in rel else self.dest
        if base == OPAQUE:
            os.setxattr(parent, "trusted.overlay.opaque", b"y")
            return
        if base.startswith(WHITEOUT):
            target = parent / base[len(WHITEOUT) :]
            self._remove_existing(target, keep_dir=False)
            os.mknod(target, 0o600 | stat.S_IFCHR, os.makedev(0, 0))
            return
        full = self.dest / rel
        self._remove_existing(full, keep_dir=m.isdir())
        if m.isdir():
            if not full.exists():
                os.mkdir(full, 0o700)
            self.safe_dirs.add(rel)
            self.dir_times.append((rel, int(m.mtime)))
        elif m.isreg():
            src = tar.extractfile(m)
            assert src is not None
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
        elif m.issym():
            link = m.linkname
            if not link.startswith("/"):
                depth = rel.count("/")
                climbed = [p for p in link.split("/") if p not in ("", ".")]
                level = depth
                for p in climbed:
                    level = level - 1 if p == ".." else level + 1
                    if level < 0:
                        raise ImageError(f"layer {self.layer}: symlink {m.name!r} -> {link!r} points out of the layer")
            os.symlink(link, full)
        elif m.islnk():
            target_rel = _clean_name(m.linkname, self.layer)
            target = self.dest / target_rel
            if not target_rel or not os.path.lexists(target):
                raise ImageError(
                    f"layer {self.layer}: hardlink {m.name!r} -> {m.linkname!r} has no target in the layer"
                )
            if os.path.realpath(target).startswith(str(self.dest) + os.sep) is False:
                raise ImageError(f"layer {self.layer}: hardlink {m.name!r} -> {m.linkname!r} points out of the layer")
            os.link(target, full, follow_symlinks=False)
            return  # a hardlink shares the target's metadata
        elif m.ischr() or m.isblk():
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(full, m.mode | kind, os.makedev(m.devmajor, m.devminor))
        elif m.isfifo():
            os.mkfifo(full, m.mode)
        else:
            return
        self._metadata(full, m)

    def _metadata(self, full: Path, m: tarfile.TarInfo) -> None:
        for key, value in m.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                try:
                    os.setxattr(
                        full,
                        key[len("SCHILY.xattr.") :],
                        value.encode("utf-8", "surrogateescape"),
                        follow_symlinks=False,
                    )
                except OSError as e:
                    raise ImageError(
                        f"layer {self.layer}: cannot set xattr {key[13:]} on {m.name!r}: {e.strerror}"
                    ) from e
        os.lchown(full, m.uid, m.gid)
        if not m.issym():
            os.chmod(full, m.mode)
            if not m.isdir():
                os.utime(full, (m.mtime, m.mtime))
        else:
            os.utime(full, (m.mtime, m.mtime), follow_symlinks=False)

    def finish(self) -> None:
        # Directory mtimes last: creating their children changed them.
        for rel, mtime in reversed(self.dir_times):
            os.utime(self.dest / rel, (mtime, mtime), follow_symlinks=False)


def unpack_layer(fileobj: BinaryIO, dest: Path, *, layer: str) -> str:
    """Unpack one (possibly compressed) layer into the existing empty directory ``dest``; returns its DiffID."""
    reader = _HashingReader(open_decompressed(fileobj))
    unpacker = _Unpacker(dest, layer)
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                unpacker.entry(tar, member)
        reader.drain()
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        if isinstance(e, ImageError):
            raise
        raise ImageError(f"layer {layer}: not a valid layer tarball: {e}") from e
    unpacker.finish()
    return "sha256:" + reader.hash.hexdigest()


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The OCI ChainID of each layer position: ChainID(n) = sha256(ChainID(n-1) + ' ' + DiffID(n))."""
    out: list[str] = []
    for diff in diff_ids:
        out.append(diff if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {diff}".encode()).hexdigest())
    return out
