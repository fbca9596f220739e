"""Build snapshots: a step's root filesystem as an overlayfs over the store's layers, and its upper directory turned
into an OCI layer (BuildKit's model).

The upper directory is already in overlayfs form (whiteouts are 0/0 character devices, an opaque directory has
``trusted.overlay.opaque=y``), which is the store's unpacked form too: it moves into the store as the layer's
directory as it is, and its tarball is written once, with the whiteouts in OCI form (``.wh.NAME``,
``.wh..wh..opq``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zlayer.errors import StoreError
from zlayer.images import ImageStore, mount_rootfs, unmount_rootfs
from zlayer.images.unpack import OPAQUE, WHITEOUT

LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
_OVERLAY_XATTR = "trusted.overlay."
SNAPSHOT_OPTIONS = "redirect_dir=off,metacopy=off,index=off"


@dataclass(frozen=True)
class Layer:
    """One layer of an image being built: its manifest descriptor, DiffID and ChainID (its directory's key)."""

    descriptor: dict[str, Any]
    diff_id: str
    chain: str


def chain_of(parent: str | None, diff_id: str) -> str:
    """The ChainID of a layer with this DiffID on top of the layer ``parent`` (None: the first layer)."""
    if parent is None:
        return diff_id
    return _chain(parent, diff_id)


def _chain(parent: str, diff_id: str) -> str:
    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


class _HashingFile:
    """A file that hashes what is written to it (the tarball's digest is its DiffID: it is stored uncompressed)."""

    def __init__(self, fd: int) -> None:
        self.f = os.fdopen(fd, "wb", buffering=1 << 20)
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.h.update(data)
        self.size += len(data)
        return self.f.write(data)

    def close(self) -> None:
        # No fsync per layer: each one would flush every file the build wrote so far (ext4 orders data before the
        # journal commit). The build flushes the filesystem once before it records the image (executor._syncfs);
        # a cache entry whose blob a crash cut short is a miss (its size is checked).
        self.f.flush()
        self.f.close()


class Snapshot:
    """A writable root filesystem for one step: ``merged`` (the overlay), ``upper`` (what the step changed)."""

    def __init__(self, work: Path, lowers: list[Path]) -> None:
        self.dir = Path(tempfile.mkdtemp(dir=work, prefix="step-"))
        self.upper = self.dir / "layer" / "fs"
        self.merged = self.dir / "merged"
        self.upper.parent.mkdir()
        # no redirects and no metacopy: the upper dir must hold whole files and plain directories to be a layer
        mount_rootfs(lowers, self.upper, self.dir / "work", self.merged, options=SNAPSHOT_OPTIONS)
        self.mounted = True

    def unmount(self) -> None:
        if self.mounted:
            unmount_rootfs(self.merged)
            self.mounted = False

    def discard(self) -> None:
        self.unmount()
        shutil.rmtree(self.dir, ignore_errors=True)

    def commit(self, store: ImageStore, parent: str | None, created_by: str = "") -> Layer:
        """Unmount, write the upper directory's tarball into the store and move the directory in as the layer."""
        self.unmount()
        shutil.rmtree(self.dir / "work", ignore_errors=True)
        fd, tmp = tempfile.mkstemp(dir=store.root / "tmp", prefix="build-layer-")
        out = _HashingFile(fd)
        try:
            size = write_layer_tar(self.upper, out)
        except BaseException:
            with contextlib.suppress(OSError):
                out.close()
            os.unlink(tmp)
            raise
        out.close()
        digest = "sha256:" + out.h.hexdigest()
        store.adopt_blob(Path(tmp), digest, durable=False)
        chain = chain_of(parent, digest)
        store.adopt_layer(self.upper.parent, digest, chain, size, durable=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        return Layer({"mediaType": LAYER_TAR, "digest": digest, "size": out.size}, digest, chain)


def _xattrs(path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return out
    for name in names:
        if name.startswith(_OVERLAY_XATTR):
            continue
        with contextlib.suppress(OSError):
            out[name] = os.getxattr(path, name, follow_symlinks=False).decode("utf-8", "surrogateescape")
    return out


def _walk(root: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """(relative name, full path, lstat) of everything below ``root``."""
    stack = [""]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel) if rel else root
        with os.scandir(full) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in reversed(entries):
            r = f"{rel}/{e.name}" if rel else e.name
            st = e.stat(follow_symlinks=False)
            yield r, e.path, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(r)


_ZEROS = bytes(1024)
_MAX_ID = 0o7777777
_MAX_SIZE = 0o77777777777


def _header(info: tarfile.TarInfo) -> bytes:
    """The header block(s) of one entry: plain ustar when it fits (the common case, built here directly), else
    tarfile's PAX form (long names, big ids or sizes, xattrs)."""
    name = info.name.encode("utf-8", "surrogateescape")
    link = info.linkname.encode("utf-8", "surrogateescape")
    simple = (
        len(name) <= 100 and len(link) <= 100 and not info.pax_headers and name.isascii() and link.isascii()
        and 0 <= info.uid <= _MAX_ID and 0 <= info.gid <= _MAX_ID and info.size <= _MAX_SIZE and info.mtime >= 0
    )  # fmt: skip
    if not simple:
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    h = bytearray(512)
    h[0 : len(name)] = name
    h[100:108] = b"%07o\0" % info.mode
    h[108:116] = b"%07o\0" % info.uid
    h[116:124] = b"%07o\0" % info.gid
    h[124:136] = b"%011o\0" % info.size
    h[136:148] = b"%011o\0" % int(info.mtime)
    h[148:156] = b" " * 8
    h[156:157] = info.type
    h[157 : 157 + len(link)] = link
    h[257:265] = b"ustar\x0000"
    h[329:337] = b"%07o\0" % info.devmajor
    h[337:345] = b"%07o\0" % info.devminor
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def write_layer_tar(upper: Path, out: Any) -> int:
    """Write ``upper`` (overlayfs form) as an OCI layer tarball to ``out``; returns the bytes its files hold."""
    total = 0
    links: dict[tuple[int, int], str] = {}
    for rel, full, st in sorted(_walk(str(upper)), key=lambda t: t[0].split("/")):
        mode = st.st_mode
        info = tarfile.TarInfo(rel)
        info.uid, info.gid, info.mtime = st.st_uid, st.st_gid, int(st.st_mtime)
        info.mode = stat.S_IMODE(mode)
        if stat.S_ISCHR(mode) and st.st_rdev == 0:
            parent, _, base = rel.rpartition("/")
            wh = tarfile.TarInfo(f"{parent}/{WHITEOUT}{base}" if parent else f"{WHITEOUT}{base}")
            wh.mtime, wh.mode = info.mtime, 0
            out.write(_header(wh))
            continue
        xattrs = _xattrs(full)
        if xattrs:
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
        data = b""
        if stat.S_ISDIR(mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(full)
        elif stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in links:
                info.type, info.linkname = tarfile.LNKTYPE, links[key]
            else:
                links[key] = rel
                info.size = st.st_size
                total += st.st_size
                if st.st_size <= 1 << 20:
                    data = _read_small(full, st.st_size)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            info.type = tarfile.FIFOTYPE
        else:
            continue  # sockets are not layer content
        pad = _ZEROS[: 512 - info.size % 512] if info.size % 512 else b""
        if info.size and not data:
            out.write(_header(info))
            _stream(full, info.size, out)
            out.write(pad)
        else:  # one write per small entry: header, data and padding
            out.write(b"".join((_header(info), data, pad)))
        if stat.S_ISDIR(mode):
            with contextlib.suppress(OSError):
                if os.getxattr(full, "trusted.overlay.opaque", follow_symlinks=False) == b"y":
                    opq = tarfile.TarInfo(f"{rel}/{OPAQUE}")
                    opq.mtime, opq.mode = info.mtime, 0
                    out.write(_header(opq))
    out.write(_ZEROS)
    return total


def _read_small(path: str, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        data = os.read(fd, size + 1)
    finally:
        os.close(fd)
    if len(data) != size:
        raise StoreError(f"{path} changed while its layer was written")
    return data


def _stream(path: str, size: int, out: Any) -> None:
    left = size
    with open(path, "rb") as f:
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                raise StoreError(f"{path} changed while its layer was written")
            out.write(chunk)
            left -= len(chunk)


def resolve_in_root(root: Path, path: str, *, follow_last: bool = True) -> Path:
    """``path`` (absolute, as the container sees it) on the host, its symlinks resolved inside ``root`` as the
    container would resolve them: nothing it names can lead out of ``root``."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, part)
        if (parts or follow_last) and os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise StoreError(f"too many levels of symbolic links in {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return Path(root, *done)
