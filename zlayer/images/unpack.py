"""Unpacking one layer tarball into a directory in overlayfs form.

OCI whiteouts become what overlayfs reads: ``.wh.NAME`` a 0/0 character device named NAME, ``.wh..wh..opq`` the
``trusted.overlay.opaque=y`` xattr on its directory. Hardlinks, symlinks, device nodes, xattrs, ownership, modes and
mtimes are kept. An entry that would land outside the layer (``..``, an absolute path, a hardlink to outside, a
relative symlink climbing above the root, or a write through a symlink) is rejected with the entry's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from zlayer.errors import ImageError
from zlayer.images.manifest import size_text

_inflate: Any
try:  # ISA-L inflates gzip layers in about half the CPU time of zlib, with the same API
    from isal import isal_zlib as _inflate
except ImportError:  # pragma: no cover - isal is a dependency; zlib is the fallback
    _inflate = zlib
_BAD_STREAM: tuple[type[Exception], ...] = (OSError, ValueError, EOFError, zlib.error, _inflate.error)

LAYER_ENV = "ZLAYER_MAX_LAYER_SIZE"
IMAGE_ENV = "ZLAYER_MAX_IMAGE_SIZE"
DEFAULT_MAX_LAYER = 64 << 30
DEFAULT_MAX_IMAGE = 256 << 30
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class UnpackLimits:
    """How much a layer, and all layers of an image, may unpack to (the tar stream, decompressed): a small compressed
    layer can otherwise fill the disk. Generous by default; ``from_env`` reads ``ZLAYER_MAX_LAYER_SIZE`` and
    ``ZLAYER_MAX_IMAGE_SIZE`` (``64Gi``, ``512Mi``: Ki, Mi, Gi or Ti), which ``zlayer serve`` options override."""

    layer: int = DEFAULT_MAX_LAYER
    image: int = DEFAULT_MAX_IMAGE

    @classmethod
    def from_env(cls, layer: str | None = None, image: str | None = None) -> UnpackLimits:
        return cls(
            layer=parse_limit(layer or os.environ.get(LAYER_ENV), LAYER_ENV, DEFAULT_MAX_LAYER),
            image=parse_limit(image or os.environ.get(IMAGE_ENV), IMAGE_ENV, DEFAULT_MAX_IMAGE),
        )


def parse_limit(text: str | None, name: str, default: int) -> int:
    if not text:
        return default
    from zlayer.spec.scalars import parse_memory

    try:
        return parse_memory(text.strip())
    except ValueError as e:
        option = "--max-layer-size" if name == LAYER_ENV else "--max-image-size"
        raise ImageError(f"{name} (zlayer serve {option}): {e}", hint="e.g. 64Gi") from None


class UnpackBudget:
    """What the layers of one image have unpacked to, against its limits; layers unpacking in parallel threads share
    one budget. ``unpacked`` holds each layer's size once counted."""

    def __init__(self, limits: UnpackLimits, already: int = 0) -> None:
        self.limits = limits
        self.used = already
        self.unpacked: dict[str, int] = {}
        self._lock = threading.Lock()

    def charge(self, layer: str, layer_total: int, n: int) -> None:
        with self._lock:
            self.used += n
            self.unpacked[layer] = layer_total
            used = self.used
        if layer_total > self.limits.layer:
            raise ImageError(
                f"layer {layer}: unpacks to more than {size_text(self.limits.layer)}, the limit per layer; "
                "nothing of it is kept",
                hint=f"if the image is trusted, raise the limit: {LAYER_ENV} or zlayer serve --max-layer-size",
            )
        if used > self.limits.image:
            raise ImageError(
                f"layer {layer}: the image unpacks to more than {size_text(self.limits.image)}, the limit per image; "
                "nothing of this layer is kept",
                hint=f"if the image is trusted, raise the limit: {IMAGE_ENV} or zlayer serve --max-image-size",
            )


def _clean_name(name: str, layer: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts:
        raise ImageError(f"layer {layer}: entry {name!r} escapes the layer (absolute path or '..'); nothing unpacked")
    return "/".join(parts)


class _Decompressed:
    """The tar stream of a layer in large chunks (gzip, possibly multi-member; zstd; or none), hashed as it goes.

    Decompression and hashing run on megabyte-sized buffers, so they spend their time outside the GIL; no chunk is
    larger than a few megabytes whatever the compression ratio.
    """

    def __init__(self, src: BinaryIO, layer: str, budget: UnpackBudget | None = None) -> None:
        self.hash = hashlib.sha256()
        self.size = 0
        self._layer = layer
        self._budget = budget
        self._src = src
        self._zlib: Any = None
        self._zlib_full = False
        self._zstd: Any = None
        self._pending = src.read(4)
        if self._pending[:2] == b"\x1f\x8b":
            self._zlib = _inflate.decompressobj(wbits=31)
        elif self._pending == b"\x28\xb5\x2f\xfd":
            import zstandard

            reader = cast(IO[bytes], _Prefixed(self._pending, src))
            self._pending = b""
            self._zstd = zstandard.ZstdDecompressor().stream_reader(reader, read_size=_CHUNK, read_across_frames=True)

    def _raw(self) -> bytes:
        raw = self._pending or self._src.read(_CHUNK)
        self._pending = b""
        return raw

    def _gunzip(self) -> bytes | None:
        """Output of the gzip stream; None at its end."""
        z = self._zlib
        if z.unconsumed_tail or self._zlib_full:
            data: bytes = z.decompress(z.unconsumed_tail, _OUT_CHUNK)
        else:
            raw = self._raw()
            if not raw:
                if not z.eof:
                    raise ImageError("the gzip stream ends early (truncated blob)")
                return None
            if z.eof:  # another gzip member follows, or zero padding after the last one
                if not raw.strip(b"\0"):
                    return b""
                z = self._zlib = _inflate.decompressobj(wbits=31)
            data = z.decompress(raw, _OUT_CHUNK)
            if z.eof and z.unused_data:
                self._pending = z.unused_data
        self._zlib_full = len(data) == _OUT_CHUNK
        return data

    def chunk(self) -> bytes:
        """The next piece of the tar stream; b"" at its end."""
        while True:
            if self._zlib is not None:
                data = self._gunzip()
                if data is None:
                    return b""
            elif self._zstd is not None:
                data = self._zstd.read(_OUT_CHUNK)
                if not data:
                    return b""
            else:
                data = self._raw()
                if not data:
                    return b""
            if data:
                self.size += len(data)
                if self._budget is not None:
                    self._budget.charge(self._layer, self.size, len(data))
                self.hash.update(data)
                return data


class _Prefixed:
    """A reader that yields ``head`` and then the rest of ``src``."""

    def __init__(self, head: bytes, src: BinaryIO) -> None:
        self._head = head
        self._src = src

    def read(self, n: int = -1) -> bytes:
        if self._head:
            out, self._head = self._head, b""
            return out
        return self._src.read(n)


class _TarReader:
    """A minimal, strict reader of ustar / GNU / pax tar headers over a :class:`_Decompressed` stream."""

    def __init__(self, stream: _Decompressed) -> None:
        self._stream = stream
        self._buf = b""
        self._pos = 0
        self.global_pax: dict[str, str] = {}

    def _fill(self, n: int) -> bool:
        while len(self._buf) - self._pos < n:
            more = self._stream.chunk()
            if not more:
                return False
            self._buf = self._buf[self._pos :] + more
            self._pos = 0
        return True

    def read(self, n: int) -> bytes:
        if not self._fill(n):
            raise ImageError("the tar stream ends in the middle of an entry")
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def skip(self, n: int) -> None:
        while n:
            if self._pos >= len(self._buf) and not self._fill(1):
                raise ImageError("the tar stream ends in the middle of an entry")
            step = min(n, len(self._buf) - self._pos)
            self._pos += step
            n -= step

    def copy_to(self, fd: int, n: int) -> None:
        """Write the next ``n`` bytes of the stream to ``fd``."""
        while n:
            if self._pos >= len(self._buf) and not self._fill(1):
                raise ImageError("the tar stream ends in the middle of a file")
            step = min(n, len(self._buf) - self._pos)
            view = memoryview(self._buf)[self._pos : self._pos + step]
            while view:
                written = os.write(fd, view)
                view = view[written:]
            self._pos += step
            n -= step

    def drain(self) -> None:
        while self._stream.chunk():
            pass
        self._buf, self._pos = b"", 0

    def next(self) -> _Member | None:
        """The next entry's header (pax and GNU long names applied); None at the end of the archive."""
        pax: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        while True:
            if not self._fill(BLOCK):
                return None  # no end-of-archive blocks: tolerated, like tar does
            block = self.read(BLOCK)
            if block == _ZERO_BLOCK:
                return None
            _check_sum(block)
            kind = block[156:157]
            size = _number(block[124:136], "size")
            if kind in (b"x", b"g"):
                records = _pax_records(self.read(size))
                self.skip(_padding(size))
                (pax if kind == b"x" else self.global_pax).update(records)
                continue
            if kind in (b"L", b"K"):
                value = self.read(size).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                self.skip(_padding(size))
                if kind == b"L":
                    long_name = value
                else:
                    long_link = value
                continue
            fields = {**self.global_pax, **pax}
            name = _string(block[0:100])
            if block[257:263] == b"ustar\x00" and block[345] != 0:
                name = _string(block[345:500]) + "/" + name
            m = _Member()
            m.name = fields.get("path", long_name if long_name is not None else name)
            m.linkname = fields.get("linkpath", long_link if long_link is not None else _string(block[157:257]))
            m.type = kind if kind != b"\0" else b"0"
            m.mode = _number(block[100:108], "mode") & 0o7777
            m.uid = int(fields["uid"]) if "uid" in fields else _number(block[108:116], "uid")
            m.gid = int(fields["gid"]) if "gid" in fields else _number(block[116:124], "gid")
            m.size = int(fields["size"]) if "size" in fields else size
            m.mtime = int(float(fields["mtime"])) if "mtime" in fields else _number(block[136:148], "mtime")
            if m.type in (b"3", b"4"):
                m.devmajor = _number(block[329:337], "devmajor")
                m.devminor = _number(block[337:345], "devminor")
            m.xattrs = {k[13:]: v for k, v in fields.items() if k.startswith("SCHILY.xattr.")}
            if m.size < 0 or m.uid < 0 or m.gid < 0:
                raise ImageError(f"entry {m.name!r} has a negative size or owner")
            return m


BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_OUT_CHUNK = 4 << 20


class _Member:
    __slots__ = ("devmajor", "devminor", "gid", "linkname", "mode", "mtime", "name", "size", "type", "uid", "xattrs")

    def __init__(self) -> None:
        self.devmajor = self.devminor = 0
        self.xattrs: dict[str, str] = {}
        self.name = self.linkname = ""
        self.type = b"0"
        self.mode = self.uid = self.gid = self.size = self.mtime = 0


def _padding(size: int) -> int:
    return -size % BLOCK


def _string(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(field: bytes, what: str) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256
        value = int.from_bytes(field[1:], "big")
        return -value if field[0] & 0x40 else value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise ImageError(f"bad tar header: {what} field {field!r} is not a number") from None


def _check_sum(block: bytes) -> None:
    want = _number(block[148:156], "checksum")
    got = sum(block) - sum(block[148:156]) + 8 * 0x20
    if want != got:
        raise ImageError("bad tar header checksum (not a tar archive, or a corrupt one)")


def _pax_records(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        if space < 0:
            raise ImageError("bad pax header record")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise ImageError("bad pax header record length") from None
        if length <= space - pos + 1 or pos + length > len(data):
            raise ImageError("bad pax header record length")
        record = data[space + 1 : pos + length - 1]
        key, eq, value = record.partition(b"=")
        if not eq:
            raise ImageError("bad pax header record")
        k = key.decode("utf-8", "surrogateescape")
        # xattr values are raw bytes; everything else is UTF-8 text
        out[k] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


_NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Unpacker:
    def __init__(self, dest: Path, layer: str) -> None:
        self.dest = str(dest)
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
            full = f"{self.dest}/{walked}"
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                os.mkdir(full)
                os.chmod(full, 0o755)  # as docker makes a parent the layer does not list, whatever our umask
            else:
                if stat.S_ISLNK(st.st_mode):
                    raise ImageError(
                        f"layer {self.layer}: entry {entry!r} would be written through the symlink {walked!r}"
                    )
                if not stat.S_ISDIR(st.st_mode):
                    raise ImageError(f"layer {self.layer}: entry {entry!r} has a non-directory parent {walked!r}")
            self.safe_dirs.add(walked)

    def _forget(self, rel: str) -> None:
        """``rel`` is being replaced: it and everything below stop being known-safe directories."""
        if rel in self.safe_dirs:
            prefix = rel + "/"
            self.safe_dirs = {d for d in self.safe_dirs if d != rel and not d.startswith(prefix)}

    def _remove(self, full: str, rel: str, keep_dir: bool = False) -> bool:
        """Remove what is at ``full`` (an entry replacing an earlier one); True when a directory was kept."""
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            import shutil

            shutil.rmtree(full)
        else:
            os.unlink(full)
        self._forget(rel)
        return False

    def entry(self, tar: _TarReader, m: _Member) -> None:
        rel = _clean_name(m.name, self.layer)
        kind = m.type
        # Like tar(1) and Python's tarfile: links, directories, devices and fifos carry no data whatever their size.
        data_left = 0 if kind in _NO_DATA else m.size
        padding = 0 if kind in _NO_DATA else _padding(m.size)
        if not rel:
            tar.skip(data_left + padding)
            return  # the root itself
        self._ensure_parent(rel, m.name)
        parent_rel, _, base = rel.rpartition("/")
        parent = f"{self.dest}/{parent_rel}" if parent_rel else self.dest
        full = f"{self.dest}/{rel}"
        if base == OPAQUE:
            os.setxattr(parent, "trusted.overlay.opaque", b"y")
        elif base.startswith(WHITEOUT):
            if base[len(WHITEOUT) :] in ("", ".", ".."):
                raise ImageError(f"layer {self.layer}: whiteout {m.name!r} names no entry it could hide")
            target_rel = f"{parent_rel}/{base[len(WHITEOUT) :]}" if parent_rel else base[len(WHITEOUT) :]
            target = f"{self.dest}/{target_rel}"
            self._remove(target, target_rel)
            os.mknod(target, 0o600 | stat.S_IFCHR, os.makedev(0, 0))
        elif kind in (b"0", b"7"):
            try:
                fd = os.open(full, _FILE_FLAGS, 0o600)
            except FileExistsError:
                self._remove(full, rel)
                fd = os.open(full, _FILE_FLAGS, 0o600)
            try:
                tar.copy_to(fd, m.size)
                data_left = 0
                self._metadata(fd, m, follow=True)
            finally:
                os.close(fd)
        elif kind == b"5":
            try:
                os.mkdir(full, 0o700)
            except FileExistsError:
                if not self._remove(full, rel, keep_dir=True):
                    os.mkdir(full, 0o700)
            self.safe_dirs.add(rel)
            self.dir_times.append((full, m.mtime))
            self._metadata(full, m, follow=True, times=False)
        elif kind == b"2":
            link = m.linkname
            if not link.startswith("/"):
                level = rel.count("/")
                for p in link.split("/"):
                    if p in ("", "."):
                        continue
                    level = level - 1 if p == ".." else level + 1
                    if level < 0:
                        raise ImageError(f"layer {self.layer}: symlink {m.name!r} -> {link!r} points out of the layer")
            try:
                os.symlink(link, full)
            except FileExistsError:
                self._remove(full, rel)
                os.symlink(link, full)
            self._metadata(full, m, follow=False)
        elif kind == b"1":
            try:
                target_rel = _clean_name(m.linkname, self.layer)
            except ImageError:  # name the entry, not only where it points
                raise ImageError(
                    f"layer {self.layer}: hardlink {m.name!r} -> {m.linkname!r} points out of the layer"
                ) from None
            target = f"{self.dest}/{target_rel}"
            if not target_rel or not os.path.lexists(target):
                raise ImageError(
                    f"layer {self.layer}: hardlink {m.name!r} -> {m.linkname!r} has no target in the layer"
                )
            if not os.path.realpath(target).startswith(self.dest + os.sep):
                raise ImageError(f"layer {self.layer}: hardlink {m.name!r} -> {m.linkname!r} points out of the layer")
            try:
                os.link(target, full, follow_symlinks=False)
            except FileExistsError:
                self._remove(full, rel)
                os.link(target, full, follow_symlinks=False)
            # a hardlink shares the target's metadata
        elif kind in (b"3", b"4"):
            self._remove(full, rel)
            mode = m.mode | (stat.S_IFCHR if kind == b"3" else stat.S_IFBLK)
            os.mknod(full, mode, os.makedev(m.devmajor, m.devminor))
            self._metadata(full, m, follow=True)
        elif kind == b"6":
            self._remove(full, rel)
            os.mkfifo(full, m.mode)
            self._metadata(full, m, follow=True)
        elif kind == b"S":
            raise ImageError(f"layer {self.layer}: entry {m.name!r} is a GNU sparse file, which is not supported")
        # other entry types (e.g. vendor extensions) carry nothing to unpack
        tar.skip(data_left + padding)

    def _metadata(self, target: int | str, m: _Member, *, follow: bool, times: bool = True) -> None:
        for key, value in m.xattrs.items():
            try:
                os.setxattr(target, key, value.encode("utf-8", "surrogateescape"), follow_symlinks=follow)
            except OSError as e:
                raise ImageError(f"layer {self.layer}: cannot set xattr {key} on {m.name!r}: {e.strerror}") from e
        if isinstance(target, int):
            os.fchown(target, m.uid, m.gid)
            os.fchmod(target, m.mode)
            os.utime(target, (m.mtime, m.mtime))
            return
        os.chown(target, m.uid, m.gid, follow_symlinks=False)
        if follow:
            os.chmod(target, m.mode)
        if times:
            os.utime(target, (m.mtime, m.mtime), follow_symlinks=False)

    def finish(self) -> None:
        # Directory mtimes last: creating their children changed them.
        for full, mtime in reversed(self.dir_times):
            os.utime(full, (mtime, mtime), follow_symlinks=False)


def unpack_layer(fileobj: BinaryIO, dest: Path, *, layer: str, budget: UnpackBudget | None = None) -> str:
    """Unpack one (possibly compressed) layer into the existing empty directory ``dest``; returns its DiffID.

    With a ``budget``, unpacking stops with an ImageError as soon as the layer or the image exceeds its limit.
    """
    stream = _Decompressed(fileobj, layer, budget)
    tar = _TarReader(stream)
    unpacker = _Unpacker(dest, layer)
    with _layer_errors(layer):
        while (member := tar.next()) is not None:
            unpacker.entry(tar, member)
        tar.drain()
    unpacker.finish()
    return "sha256:" + stream.hash.hexdigest()


def layer_diff_id(fileobj: BinaryIO, *, layer: str, budget: UnpackBudget | None = None) -> str:
    """The DiffID of a (possibly compressed) layer: the digest of its tar stream, read within ``budget``."""
    stream = _Decompressed(fileobj, layer, budget)
    with _layer_errors(layer):
        while stream.chunk():
            pass
    return "sha256:" + stream.hash.hexdigest()


@contextlib.contextmanager
def _layer_errors(layer: str) -> Iterator[None]:
    """Whatever a broken stream raises becomes one ImageError naming the layer."""
    try:
        yield
    except ImageError as e:
        if str(e).startswith(f"layer {layer}:"):
            raise
        raise ImageError(f"layer {layer}: not a valid layer tarball: {e}") from e
    except _BAD_STREAM as e:
        raise ImageError(f"layer {layer}: not a valid layer tarball: {e}") from e
    except Exception as e:
        if type(e).__name__ == "ZstdError":
            raise ImageError(f"layer {layer}: not a valid layer tarball: {e}") from e
        raise


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The OCI ChainID of each layer position: ChainID(n) = sha256(ChainID(n-1) + ' ' + DiffID(n))."""
    out: list[str] = []
    for diff in diff_ids:
        out.append(diff if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {diff}".encode()).hexdigest())
    return out
