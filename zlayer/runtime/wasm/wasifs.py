"""``wasi:filesystem/{types,preopens}@0.2`` for ``wasi:http/incoming-handler`` components, beside the host's own
``wasi:io`` streams (:mod:`zlayer.runtime.wasm.wasihttp`): wasmtime's filesystem cannot be mixed in there, its
streams being resources of another table.

A ``descriptor`` is a host file descriptor. The preopens are the spec's storage (``wasm.preopens`` and the service's
volumes, as a WASIp1 run gets them), each opened as a directory; every path a guest names is resolved by the kernel
with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`` from the directory descriptor it was given, so neither
``..``, an absolute path nor a symlink (whatever it points at) leads outside it: such a path is ``not-permitted``.
Operations on a path's last component (mkdir, unlink, rmdir, rename, link, readlink, symlink, times without
following) resolve its parent that way and act on the name in it (``*at`` calls), never following the last
component. A read-only preopen (and what is opened under it) refuses writes and changes with ``read-only``.
Errors are ``error-code`` by the failing call's ``errno``; read and write streams are our ``wasi:io`` streams over a
duplicate of the descriptor, so they work after the descriptor is dropped, as WASI allows.

``link-at`` makes a hard link to the last component itself (a symlink is linked, not followed); anything not
listed in :func:`define_types` does not exist in this host."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import stat as st
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wasmtime.component import Record, ResourceAny, ResourceHost, Variant

from zlayer.runtime.wasm import wasihttp as wh

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
SYS_OPENAT2 = 437  # the same number on x86_64 and aarch64

_ERRNO = {
    errno.EACCES: "access", errno.EAGAIN: "would-block", errno.EALREADY: "already", errno.EBADF: "bad-descriptor",
    errno.EBUSY: "busy", errno.EDEADLK: "deadlock", errno.EDQUOT: "quota", errno.EEXIST: "exist",
    errno.EFBIG: "file-too-large", errno.EILSEQ: "illegal-byte-sequence", errno.EINPROGRESS: "in-progress",
    errno.EINTR: "interrupted", errno.EINVAL: "invalid", errno.EIO: "io", errno.EISDIR: "is-directory",
    errno.ELOOP: "loop", errno.EMLINK: "too-many-links", errno.EMSGSIZE: "message-size",
    errno.ENAMETOOLONG: "name-too-long", errno.ENODEV: "no-device", errno.ENOENT: "no-entry", errno.ENOLCK: "no-lock",
    errno.ENOMEM: "insufficient-memory", errno.ENOSPC: "insufficient-space", errno.ENOTDIR: "not-directory",
    errno.ENOTEMPTY: "not-empty", errno.ENOTRECOVERABLE: "not-recoverable", errno.EOPNOTSUPP: "unsupported",
    errno.ENOTTY: "no-tty", errno.ENXIO: "no-such-device", errno.EOVERFLOW: "overflow", errno.EPERM: "not-permitted",
    errno.EPIPE: "pipe", errno.EROFS: "read-only", errno.ESPIPE: "invalid-seek", errno.ETXTBSY: "text-file-busy",
    errno.EXDEV: "not-permitted",  # openat2's answer to a path leaving the directory (.., absolute, a symlink)
}  # fmt: skip


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def openat2(dirfd: int, path: str, flags: int, mode: int = 0) -> int:
    """``path`` opened beneath ``dirfd`` (see the module doc); an ``OSError`` with the kernel's errno otherwise."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(
        ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)),
    )  # fmt: skip
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return int(fd)


class Refused(Exception):
    """A call refused with an ``error-code`` (its ``args[0]``)."""


@dataclass
class Descriptor:
    fd: int
    is_dir: bool
    read: bool
    write: bool
    mutate: bool  # may create, remove, rename under it (a directory)
    readonly: bool  # under a read-only preopen

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def refuse(self) -> Refused:
        return Refused("read-only" if self.readonly else "not-permitted")


@dataclass
class DirStream:
    fd: int
    names: list[str] = field(default_factory=list)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _type(mode: int) -> str:
    for test, name in (
        (st.S_ISREG, "regular-file"), (st.S_ISDIR, "directory"), (st.S_ISLNK, "symbolic-link"),
        (st.S_ISBLK, "block-device"), (st.S_ISCHR, "character-device"), (st.S_ISFIFO, "fifo"), (st.S_ISSOCK, "socket"),
    ):  # fmt: skip
        if test(mode):
            return name
    return "unknown"


def _datetime(ns: int) -> Record:
    r = Record()
    setattr(r, "seconds", ns // 1_000_000_000)  # noqa: B010 - Record's fields are set by name
    setattr(r, "nanoseconds", ns % 1_000_000_000)  # noqa: B010
    return r


def _stat(s: os.stat_result) -> Record:
    r = Record()
    for name, value in (
        ("type", _type(s.st_mode)), ("link-count", s.st_nlink), ("size", s.st_size),
        ("data-access-timestamp", _datetime(s.st_atime_ns)),
        ("data-modification-timestamp", _datetime(s.st_mtime_ns)),
        ("status-change-timestamp", _datetime(s.st_ctime_ns)),
    ):  # fmt: skip
        setattr(r, name, value)
    return r


def _hash(s: os.stat_result) -> Record:
    h = hashlib.blake2b(f"{s.st_dev}:{s.st_ino}:{s.st_size}:{s.st_mtime_ns}".encode(), digest_size=16).digest()
    r = Record()
    setattr(r, "lower", int.from_bytes(h[:8], "little"))  # noqa: B010
    setattr(r, "upper", int.from_bytes(h[8:], "little"))  # noqa: B010
    return r


def _new_time(v: Any, current_ns: int) -> int:
    """A ``new-timestamp`` (no-change, now, timestamp(datetime)) as nanoseconds."""
    tag = v.tag if isinstance(v, Variant) else "no-change"
    if tag == "now":
        import time

        return time.time_ns()
    if tag == "timestamp":
        return int(v.payload.seconds) * 1_000_000_000 + int(v.payload.nanoseconds)
    return current_ns


def _checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` answering its failures as ``error-code`` (the error side of its result)."""

    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except Refused as e:
            return str(e.args[0])
        except OSError as e:
            return _ERRNO.get(e.errno or 0, "io")

    return call


def _relative(path: str) -> str:
    if path.startswith("/"):
        raise Refused("not-permitted")
    return path


class _Parent:
    """The directory holding ``path``'s last component, opened beneath ``d``, and that component's name."""

    def __init__(self, d: Descriptor, path: str) -> None:
        head, _, name = _relative(path).rstrip("/").rpartition("/")
        if name in ("", ".", ".."):
            raise Refused("not-permitted" if name == ".." else "invalid")
        self.name = name
        self.fd = openat2(d.fd, head or ".", os.O_PATH | os.O_DIRECTORY)

    def __enter__(self) -> _Parent:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def define_preopens(host: wh.HttpHost, li: Any, preopens: Sequence[tuple[str, str, bool]]) -> None:
    t = host.table

    def get_directories(s: Any) -> list[tuple[ResourceHost, str]]:
        out = []
        for path, guest, ro in preopens:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as e:
                if host.guest.output is not None:
                    host.guest.output("stderr", f"zlayer: preopen {guest}: {path}: {e.strerror}\n".encode())
                continue
            out.append((t.new(wh.DESCRIPTOR, Descriptor(fd, True, True, not ro, not ro, ro)), guest))
        return out

    li.add_func("get-directories", get_directories)


def define_types(host: wh.HttpHost, li: Any) -> None:
    t = host.table
    host._resource(li, "descriptor", wh.DESCRIPTOR)
    host._resource(li, "directory-entry-stream", wh.DIRECTORY_ENTRY_STREAM)

    def desc(s: Any, r: ResourceAny) -> Descriptor:
        d: Descriptor = t.get(s, r)
        if d.fd < 0:
            raise Refused("bad-descriptor")
        return d

    def directory(s: Any, r: ResourceAny, *, mutate: bool = False) -> Descriptor:
        d = desc(s, r)
        if not d.is_dir:
            raise Refused("not-directory")
        if mutate and not d.mutate:
            raise d.refuse()
        return d

    def file(s: Any, r: ResourceAny, *, write: bool) -> Descriptor:
        d = desc(s, r)
        if d.is_dir:
            raise Refused("is-directory")
        if not (d.write if write else d.read):
            raise d.refuse() if write else Refused("bad-descriptor")
        return d

    def read_via_stream(s: Any, r: ResourceAny, offset: int) -> Any:
        fd = os.dup(file(s, r, write=False).fd)
        pos = [offset]

        def source(n: int) -> bytes:
            data = os.pread(fd, n, pos[0])
            pos[0] += len(data)
            return data

        return t.new(wh.INPUT_STREAM, wh.InputStream(source=source, close=lambda: os.close(fd)))

    def write_via_stream(s: Any, r: ResourceAny, offset: int | None) -> Any:
        fd = os.dup(file(s, r, write=True).fd)
        pos = [offset]

        def sink(data: bytes) -> None:
            view = memoryview(data)
            while view:
                if pos[0] is None:  # append
                    n = os.pwrite(fd, view, os.fstat(fd).st_size)
                else:
                    n = os.pwrite(fd, view, pos[0])
                    pos[0] += n
                view = view[n:]

        return t.new(wh.OUTPUT_STREAM, wh.OutputStream(sink, close=lambda: os.close(fd)))

    def get_flags(s: Any, r: ResourceAny) -> set[str]:
        d = desc(s, r)
        return {n for n, on in (("read", d.read), ("write", d.write), ("mutate-directory", d.mutate)) if on}

    def set_size(s: Any, r: ResourceAny, size: int) -> None:
        os.ftruncate(file(s, r, write=True).fd, size)

    def set_times(s: Any, r: ResourceAny, atime: Any, mtime: Any) -> None:
        d = desc(s, r)
        if not (d.write or d.mutate):
            raise d.refuse()
        cur = os.fstat(d.fd)
        os.utime(d.fd, ns=(_new_time(atime, cur.st_atime_ns), _new_time(mtime, cur.st_mtime_ns)))

    def read(s: Any, r: ResourceAny, length: int, offset: int) -> tuple[bytes, bool]:
        want = min(length, wh.MAX_READ)
        data = os.pread(file(s, r, write=False).fd, want, offset)
        return data, len(data) < want or (not data and want > 0)

    def write(s: Any, r: ResourceAny, buf: bytes, offset: int) -> int:
        return os.pwrite(file(s, r, write=True).fd, bytes(buf), offset)

    def read_directory(s: Any, r: ResourceAny) -> Any:
        d = directory(s, r)
        fd = os.dup(d.fd)
        try:
            names = sorted(os.listdir(fd))
        except BaseException:
            os.close(fd)
            raise
        return t.new(wh.DIRECTORY_ENTRY_STREAM, DirStream(fd, names[::-1]))

    def read_entry(s: Any, r: ResourceAny) -> Any:
        ds: DirStream = t.get(s, r)
        # result<option<directory-entry>, error-code> lowers untagged, its option first: no error is answered
        while ds.names:
            name = ds.names.pop()
            try:
                mode = os.stat(name, dir_fd=ds.fd, follow_symlinks=False).st_mode
            except OSError:
                continue  # gone since the listing
            e = Record()
            setattr(e, "type", _type(mode))  # noqa: B010
            setattr(e, "name", name)  # noqa: B010
            return e
        return None

    def create_directory_at(s: Any, r: ResourceAny, path: str) -> None:
        with _Parent(directory(s, r, mutate=True), path) as p:
            os.mkdir(p.name, dir_fd=p.fd)

    def stat_at_fd(d: Descriptor, follow: set[str], path: str) -> int:
        flags = os.O_PATH | (0 if "symlink-follow" in follow else os.O_NOFOLLOW)
        return openat2(d.fd, _relative(path) or ".", flags)

    def stat_at(s: Any, r: ResourceAny, follow: set[str], path: str) -> Record:
        fd = stat_at_fd(directory(s, r), follow, path)
        try:
            return _stat(os.fstat(fd))
        finally:
            os.close(fd)

    def set_times_at(s: Any, r: ResourceAny, follow: set[str], path: str, atime: Any, mtime: Any) -> None:
        d = directory(s, r, mutate=True)
        if "symlink-follow" in follow:
            fd = stat_at_fd(d, follow, path)
            try:  # the file found beneath, through its descriptor (utime cannot take an O_PATH one)
                cur = os.fstat(fd)
                times = (_new_time(atime, cur.st_atime_ns), _new_time(mtime, cur.st_mtime_ns))
                os.utime(f"/proc/self/fd/{fd}", ns=times)
            finally:
                os.close(fd)
            return
        with _Parent(d, path) as p:
            cur = os.stat(p.name, dir_fd=p.fd, follow_symlinks=False)
            times = (_new_time(atime, cur.st_atime_ns), _new_time(mtime, cur.st_mtime_ns))
            os.utime(p.name, dir_fd=p.fd, ns=times, follow_symlinks=False)

    def open_at(s: Any, r: ResourceAny, follow: set[str], path: str, oflags: set[str], dflags: set[str]) -> Any:
        d = directory(s, r)
        want_write = "write" in dflags
        if (want_write or oflags & {"create", "truncate"} or "mutate-directory" in dflags) and not d.mutate:
            raise d.refuse()
        flags = os.O_RDWR if want_write and "read" in dflags else os.O_WRONLY if want_write else os.O_RDONLY
        for name, bit in (("create", os.O_CREAT), ("directory", os.O_DIRECTORY), ("exclusive", os.O_EXCL),
                          ("truncate", os.O_TRUNC)):  # fmt: skip
            if name in oflags:
                flags |= bit
        if "symlink-follow" not in follow:
            flags |= os.O_NOFOLLOW
        fd = openat2(d.fd, _relative(path) or ".", flags, 0o644)
        is_dir = st.S_ISDIR(os.fstat(fd).st_mode)
        child = Descriptor(fd, is_dir, "read" in dflags or is_dir, want_write, False, d.readonly)
        child.mutate = is_dir and d.mutate and "mutate-directory" in dflags
        return t.new(wh.DESCRIPTOR, child)

    def readlink_at(s: Any, r: ResourceAny, path: str) -> str:
        with _Parent(directory(s, r), path) as p:
            return os.readlink(p.name, dir_fd=p.fd)

    def remove_directory_at(s: Any, r: ResourceAny, path: str) -> None:
        with _Parent(directory(s, r, mutate=True), path) as p:
            os.rmdir(p.name, dir_fd=p.fd)

    def unlink_file_at(s: Any, r: ResourceAny, path: str) -> None:
        with _Parent(directory(s, r, mutate=True), path) as p:
            os.unlink(p.name, dir_fd=p.fd)

    def rename_at(s: Any, r: ResourceAny, old: str, new_r: ResourceAny, new: str) -> None:
        with _Parent(directory(s, r, mutate=True), old) as a, _Parent(directory(s, new_r, mutate=True), new) as b:
            os.rename(a.name, b.name, src_dir_fd=a.fd, dst_dir_fd=b.fd)

    def link_at(s: Any, r: ResourceAny, _follow: set[str], old: str, new_r: ResourceAny, new: str) -> None:
        with _Parent(directory(s, r), old) as a, _Parent(directory(s, new_r, mutate=True), new) as b:
            os.link(a.name, b.name, src_dir_fd=a.fd, dst_dir_fd=b.fd, follow_symlinks=False)

    def symlink_at(s: Any, r: ResourceAny, target: str, new: str) -> None:
        if target.startswith("/"):
            raise Refused("not-permitted")  # it could only ever point outside; a relative one is resolved beneath
        with _Parent(directory(s, r, mutate=True), new) as p:
            os.symlink(target, p.name, dir_fd=p.fd)

    def is_same(s: Any, r: ResourceAny, other: ResourceAny) -> bool:
        a, b = os.fstat(desc(s, r).fd), os.fstat(desc(s, other).fd)
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def metadata_hash_at(s: Any, r: ResourceAny, follow: set[str], path: str) -> Record:
        fd = stat_at_fd(directory(s, r), follow, path)
        try:
            return _hash(os.fstat(fd))
        finally:
            os.close(fd)

    def sync(s: Any, r: ResourceAny, *, data: bool) -> None:
        fd = desc(s, r).fd
        (os.fdatasync if data else os.fsync)(fd)

    for name, fn in (
        ("[method]descriptor.read-via-stream", read_via_stream),
        ("[method]descriptor.write-via-stream", write_via_stream),
        ("[method]descriptor.append-via-stream", lambda s, r: write_via_stream(s, r, None)),
        ("[method]descriptor.advise", lambda s, r, off, n, advice: (desc(s, r), None)[1]),
        ("[method]descriptor.sync-data", lambda s, r: sync(s, r, data=True)),
        ("[method]descriptor.sync", lambda s, r: sync(s, r, data=False)),
        ("[method]descriptor.get-flags", get_flags),
        ("[method]descriptor.get-type", lambda s, r: _type(os.fstat(desc(s, r).fd).st_mode)),
        ("[method]descriptor.set-size", set_size),
        ("[method]descriptor.set-times", set_times),
        ("[method]descriptor.read", read),
        ("[method]descriptor.write", write),
        ("[method]descriptor.read-directory", read_directory),
        ("[method]descriptor.create-directory-at", create_directory_at),
        ("[method]descriptor.stat", lambda s, r: _stat(os.fstat(desc(s, r).fd))),
        ("[method]descriptor.stat-at", stat_at),
        ("[method]descriptor.set-times-at", set_times_at),
        ("[method]descriptor.link-at", link_at),
        ("[method]descriptor.open-at", open_at),
        ("[method]descriptor.readlink-at", readlink_at),
        ("[method]descriptor.remove-directory-at", remove_directory_at),
        ("[method]descriptor.rename-at", rename_at),
        ("[method]descriptor.symlink-at", symlink_at),
        ("[method]descriptor.unlink-file-at", unlink_file_at),
        ("[method]descriptor.metadata-hash", lambda s, r: _hash(os.fstat(desc(s, r).fd))),
        ("[method]descriptor.metadata-hash-at", metadata_hash_at),
        ("[method]directory-entry-stream.read-directory-entry", read_entry),
    ):
        li.add_func(name, _checked(fn))
    li.add_func("[method]descriptor.is-same-object", lambda s, r, o: _checked(is_same)(s, r, o) is True)
    li.add_func("filesystem-error-code", lambda s, e: None)  # our stream errors carry no errno


__all__ = ["Descriptor", "define_preopens", "define_types", "openat2"]
