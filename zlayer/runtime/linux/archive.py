"""A running container's files from the host: a path as a tar (``docker cp`` out, ``GET .../archive``), a tar
unpacked into a directory (``cp`` in, ``PUT .../archive``), a path's stat, and what the container changed (``diff``).

The tar is read and written by a helper process chrooted into the container's root (``/proc/PID/root``), so every
path and symlink resolves inside the container as it would for the container's own processes: nothing a container
holds can point a copy at the host's files. The changes come from the overlay's upper directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from zlayer.errors import ConflictError, NotFoundError, RuntimeFailure, UsageError
from zlayer.runtime.protocol import FileChange, PathStat

_HELPER = r"""
import json, os, stat, sys, tarfile, time
op, root, path = sys.argv[1], sys.argv[2], sys.argv[3]
os.chroot(root); os.chdir("/")
def fail(code, msg):
    sys.stderr.write(json.dumps({"code": code, "message": msg})); sys.exit(3)
if op in ("stat", "get"):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        fail(404, "Could not find the file " + path + " in container")
    link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
    mtime = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime))
    doc = {"name": os.path.basename(path.rstrip("/")) or "/", "size": st.st_size, "mode": st.st_mode,
           "mtime": mtime, "link": link}
    sys.stderr.write(json.dumps({"stat": doc})); sys.stderr.flush()
    if op == "get":
        with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as tar:
            tar.add(path, arcname=doc["name"])
else:
    if not os.path.isdir(path):
        fail(404 if not os.path.exists(path) else 400, "Could not find the directory " + path + " in container")
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|*") as tar:
        tar.extractall(path, filter="tar")
"""


async def _helper(cid: str, pid: int, op: str, path: str, data: bytes = b"") -> tuple[bytes, PathStat | None]:
    if pid <= 0:
        raise ConflictError(f"container {cid} is not running: its files are reached through its processes")
    if not path.startswith("/"):
        path = "/" + path
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-c", _HELPER, op, f"/proc/{pid}/root", path,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate(data)
    try:
        info = json.loads(err.decode() or "{}")
    except ValueError:
        info = {"code": 500, "message": err.decode(errors="replace")[-500:]}
    if proc.returncode != 0:
        code, msg = int(info.get("code") or 500), str(info.get("message") or f"copy of {path} failed")
        kind = {404: NotFoundError, 400: UsageError}.get(code, RuntimeFailure)
        raise kind(f"container {cid}: {msg}", where=path)
    st = info.get("stat")
    stat = PathStat(st["name"], st["size"], st["mode"], st["mtime"], st["link"]) if st else None
    return out, stat


async def path_stat(cid: str, pid: int, path: str) -> PathStat:
    _, st = await _helper(cid, pid, "stat", path)
    assert st is not None
    return st


async def get_archive(cid: str, pid: int, path: str) -> tuple[bytes, PathStat]:
    out, st = await _helper(cid, pid, "get", path)
    assert st is not None
    return out, st


async def put_archive(cid: str, pid: int, path: str, tar: bytes) -> None:
    await _helper(cid, pid, "put", path, tar)


def changes(upper: Path, lowers: Sequence[Path]) -> list[FileChange]:
    """The overlay's upper dir against the image's layers: a whiteout is a deletion, a path the image has a change,
    any other an addition (Docker's kinds 2, 0, 1)."""
    out: list[FileChange] = []
    if not upper.is_dir():
        return out
    for path in sorted(upper.rglob("*")):
        rel = str(path.relative_to(upper))
        st = path.lstat()
        if (st.st_mode & 0o170000) == 0o020000 and st.st_rdev == 0:  # an overlayfs whiteout
            out.append(FileChange("/" + rel, 2))
        else:
            out.append(FileChange("/" + rel, 0 if any(os.path.lexists(d / rel) for d in lowers) else 1))
    return out


__all__ = ["changes", "get_archive", "path_stat", "put_archive"]
