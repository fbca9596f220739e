"""Storage entries of a service (``storage:``) prepared on the host and turned into OCI mounts.

- ``bind``: the host path as given (it must exist).
- ``named``: ``<data_dir>/volumes/<name>``, kept across container removal.
- ``anonymous``: ``<data_dir>/volumes/_anon/<container>-<random>``, deleted with the container.
- ``tmpfs``: a fresh tmpfs (``size``, ``mode``).

A named or anonymous volume that is new and empty is first filled with what the image has at its target, as Docker
does, so ``/var/lib/app`` in the image is not hidden by an empty volume.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zlayer.errors import RuntimeFailure
from zlayer.paths import private_dir
from zlayer.spec.container import tmpfs_mode, tmpfs_size

if TYPE_CHECKING:
    from zlayer.spec.models import StorageSpec


@dataclass
class PreparedVolumes:
    """OCI mounts for the storage entries and the anonymous volume dirs to delete with the container."""

    mounts: list[dict[str, Any]] = field(default_factory=list)
    anonymous: list[Path] = field(default_factory=list)


def _copy_up(rootfs: Path, target: str, dest: Path) -> None:
    if any(dest.iterdir()):
        return
    src = rootfs / target.lstrip("/")
    # Only a real directory inside the rootfs: never follow a symlink out of it.
    if src.is_symlink() or not src.is_dir() or not src.resolve().is_relative_to(rootfs.resolve()):
        return
    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
    st = src.stat()
    os.chown(dest, st.st_uid, st.st_gid)
    os.chmod(dest, st.st_mode & 0o7777)


def prepare_volumes(
    storage: list[StorageSpec], *, data_dir: Path, container: str, rootfs: Path, read_only_root: bool = False
) -> PreparedVolumes:
    """Create what the storage entries need on the host; on error everything made here is removed again. The
    entries' form was checked with the spec; what can still fail is the node (a bind source that is not there)."""
    from zlayer.spec.models import AnonymousStorage, BindStorage, NamedStorage, TmpfsStorage

    out = PreparedVolumes()
    created: list[Path] = []
    try:
        for i, entry in enumerate(storage):
            target = entry.target
            if isinstance(entry, BindStorage):
                src = Path(entry.source)
                if not src.exists():
                    raise RuntimeFailure(f"storage[{i}].source {src}: no such file or directory on this node")
                opts = ["rbind", "rprivate", "ro" if entry.readonly else "rw"]
                out.mounts.append({"destination": target, "type": "bind", "source": str(src), "options": opts})
            elif isinstance(entry, NamedStorage | AnonymousStorage):
                if isinstance(entry, NamedStorage):
                    host = data_dir / "volumes" / entry.name
                else:
                    host = data_dir / "volumes" / "_anon" / f"{container}-{secrets.token_hex(6)}"
                fresh = not host.exists()
                for d in (data_dir / "volumes", host.parent):  # volumes/ and volumes/_anon/: no way in for others
                    private_dir(d)
                host.mkdir(exist_ok=True)
                if fresh:
                    os.chmod(host, 0o755)  # the volume's root as the container sees it (as docker's _data)
                if isinstance(entry, AnonymousStorage):
                    out.anonymous.append(host)
                    created.append(host)
                if fresh:
                    if isinstance(entry, NamedStorage):
                        created.append(host)
                    _copy_up(rootfs, target, host)
                ro = isinstance(entry, NamedStorage) and entry.readonly
                opts = ["rbind", "rprivate", "ro" if ro else "rw"]
                out.mounts.append({"destination": target, "type": "bind", "source": str(host), "options": opts})
            elif isinstance(entry, TmpfsStorage):
                opts = ["nosuid", "nodev"]
                if entry.size:
                    opts.append(f"size={tmpfs_size(entry.size)}")
                if entry.mode is not None:
                    opts.append("mode=" + tmpfs_mode(entry.mode))
                out.mounts.append({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": opts})
            else:  # s3: refused when the spec is validated
                raise RuntimeFailure(f"storage[{i}]: {entry.type} volumes are not supported on this node")
    except BaseException:
        for p in created:
            shutil.rmtree(p, ignore_errors=True)
        raise
    return out
