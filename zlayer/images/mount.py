"""Mounting an image's layer stack as a container root filesystem (overlayfs) and unmounting it."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from zlayer.errors import ImageError, StoreError

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
MS_RDONLY = 1
MNT_DETACH = 2
PAGE_LIMIT = 4095


def _mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()) != 0:
        err = ctypes.get_errno()
        raise StoreError(f"cannot mount {fstype} on {target}: {os.strerror(err)}", hint=f"mount options: {data[:200]}")


def mount_rootfs(
    layer_dirs: list[Path], upper: Path, work: Path, target: Path, *, readonly: bool = False, options: str = ""
) -> None:
    """Mount the layers (lowest first) under a fresh upper/work dir at ``target``.

    With ``readonly`` the stack is mounted without an upper dir, so nothing can be written. ``options`` are more
    overlayfs options (a build's snapshot asks for ``redirect_dir=off``: its upper dir becomes a layer as it is).
    """
    target.mkdir(parents=True, exist_ok=True)
    if len(layer_dirs) < (2 if readonly else 1):
        # overlayfs without an upper dir wants two lowers; an empty one below changes nothing.
        empty = upper.parent / "empty-lower"
        empty.mkdir(parents=True, exist_ok=True)
        layer_dirs = [empty, *layer_dirs]
    lower = ":".join(str(d) for d in reversed(layer_dirs))  # overlayfs lists the top-most lower first
    if readonly:
        data = f"lowerdir={lower}"
        flags = MS_RDONLY
    else:
        upper.mkdir(parents=True, exist_ok=True)
        os.chmod(upper, 0o755)  # the upper dir is the root directory the container sees, whatever our umask
        work.mkdir(parents=True, exist_ok=True)
        data = f"lowerdir={lower},upperdir={upper},workdir={work}"
        flags = 0
    if options:
        data = f"{data},{options}"
    if len(data) > PAGE_LIMIT:
        raise ImageError(
            f"cannot mount {len(layer_dirs)} layers at {target}: the overlayfs options exceed one page",
            hint="squash the image into fewer layers",
        )
    _mount("overlay", str(target), "overlay", flags, data)


def unmount_rootfs(target: Path) -> None:
    """Unmount a root filesystem mounted by :func:`mount_rootfs`; a target that is not mounted is fine."""
    if _libc.umount2(str(target).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not a mount point; ENOENT: gone already
            raise StoreError(f"cannot unmount {target}: {os.strerror(err)}")
