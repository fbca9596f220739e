"""Resolve a container's user and groups in the container's own ``/etc/passwd`` and ``/etc/group``.

Rules are Docker's: ``USER`` is ``name``, ``uid``, ``name:group``, ``uid:gid`` (any mix). A name must exist in the
image; a bare number need not (its primary group then comes from the passwd entry when there is one, else 0).
Supplementary groups are every group of ``/etc/group`` that lists the user as a member, plus ``extra_groups``.
The files are read inside ``rootfs`` without following symlinks out of it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from zlayer.errors import RuntimeFailure

MAX_ID = 2**32 - 2  # (uid_t)-1 means "no change" to the kernel


@dataclass(frozen=True)
class ResolvedUser:
    """The numeric identity the container's process runs with; ``home`` is empty when unknown."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    name: str = ""
    home: str = ""


def _read_in_rootfs(rootfs: Path, rel: str) -> list[list[str]]:
    # Open component by component with O_NOFOLLOW: /etc/passwd in an image may be a symlink to anywhere on the host.
    fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY)
    try:
        parts = rel.strip("/").split("/")
        for i, part in enumerate(parts):
            flags = os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_RDONLY if i == len(parts) - 1 else os.O_PATH | os.O_DIRECTORY)
            try:
                nfd = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                return []
            except OSError:  # ELOOP (a symlink), ENOTDIR: treat as absent, as Docker does for unreadable files
                return []
            os.close(fd)
            fd = nfd
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as f:
            fd = -1
            rows = []
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    rows.append(line.split(":"))
            return rows
    finally:
        if fd >= 0:
            os.close(fd)


def _num(text: str) -> int | None:
    if text.isdigit():
        n = int(text)
        return n if n <= MAX_ID else None
    return None


def resolve_user(rootfs: Path, user: str | None, *, image: str = "", extra_groups: Iterable[str] = ()) -> ResolvedUser:
    """Turn ``user`` (``None``/empty = root) into uid, gid and supplementary gids, as seen inside ``rootfs``.

    Raises :class:`RuntimeFailure` naming the user (or group) and the image when a name is not in the image.
    """
    spec = (user or "").strip()
    uname, _, gname = spec.partition(":")
    passwd = _read_in_rootfs(rootfs, "etc/passwd")
    groups = _read_in_rootfs(rootfs, "etc/group")
    where = f"image {image}" if image else f"rootfs {rootfs}"

    entry: list[str] | None = None
    uid = _num(uname) if uname else 0
    if uname and uid is None:
        entry = next((r for r in passwd if len(r) >= 4 and r[0] == uname), None)
        if entry is None:
            raise RuntimeFailure(
                f"unable to find user {uname}: no matching entries in /etc/passwd of {where}",
                hint="use a user that exists in the image, or a numeric uid[:gid]",
            )
        uid = _num(entry[2])
        if uid is None:
            raise RuntimeFailure(f"user {uname} in /etc/passwd of {where} has an invalid uid {entry[2]!r}")
    elif uid is not None:
        entry = next((r for r in passwd if len(r) >= 4 and _num(r[2]) == uid), None)
    assert uid is not None
    name = entry[0] if entry else ""
    home = entry[5] if entry and len(entry) > 5 else ""

    if gname:
        gid = _num(gname)
        if gid is None:
            grow = next((r for r in groups if len(r) >= 3 and r[0] == gname), None)
            if grow is None or _num(grow[2]) is None:
                raise RuntimeFailure(f"unable to find group {gname}: no matching entries in /etc/group of {where}")
            gid = _num(grow[2])
    else:
        gid = _num(entry[3]) if entry else 0
    assert gid is not None

    extra: list[int] = []
    if name and not gname:
        # Docker adds the user's memberships only when the group was not forced with user:group.
        for r in groups:
            if len(r) >= 4 and name in r[3].split(",") and (g := _num(r[2])) is not None:
                extra.append(g)
    for item in extra_groups:
        n = _num(item)
        if n is None:
            grow = next((r for r in groups if len(r) >= 3 and r[0] == item), None)
            n = _num(grow[2]) if grow is not None else None
            if n is None:
                raise RuntimeFailure(
                    f"unable to find group {item} (extra_groups): no matching entries in /etc/group of {where}"
                )
        extra.append(n)
    uniq = tuple(dict.fromkeys(g for g in extra if g != gid))
    return ResolvedUser(uid=uid, gid=gid, additional_gids=uniq, name=name, home=home)
