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
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zlayer.errors import SpecError
from zlayer.paths import private_dir

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    val = obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)
    return default if val is None else val


@dataclass
class PreparedVolumes:
    """OCI mounts for the storage entries and the anonymous volume dirs to delete with the container."""

    mounts: list[dict[str, Any]] = field(default_factory=list)
    anonymous: list[Path] = field(default_factory=list)


def _target(entry: Any, i: int) -> str:
    target = str(_get(entry, "target", ""))
    if not target.startswith("/"):
        raise SpecError(f"storage[{i}].target {target!r}: must be an absolute path in the container")
    if ".." in Path(target).parts:
        raise SpecError(f"storage[{i}].target {target!r}: must not contain '..'")
    return target


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


def tmpfs_size(text: str, where: str) -> str:
    """A tmpfs ``size`` as the kernel takes it (``64m``, ``1g``, ``100%``, bytes), checked."""
    s = str(text).strip()
    m = re.fullmatch(r"(\d+)\s*([kKmMgG]i?)?[bB]?|(\d+)%", s)
    if not m:
        raise SpecError(f"{where} {text!r}: expected a size like 64Mi, 1G or 50%")
    if m.group(3):
        return s
    return m.group(1) + (m.group(2)[0].lower() if m.group(2) else "")


def tmpfs_mode(mode: Any, where: str) -> str:
    """YAML reads ``mode: 1777`` as the decimal 1777; people mean octal, so digits 0-7 are read as octal."""
    digits = str(mode)
    if not digits.isdigit() or any(c in "89" for c in digits) or int(digits, 8) > 0o7777:
        raise SpecError(f"{where} {mode!r}: expected an octal file mode such as 1777 or 755")
    return digits.lstrip("0") or "0"


def prepare_volumes(
    storage: list[Any], *, data_dir: Path, container: str, rootfs: Path, read_only_root: bool = False
) -> PreparedVolumes:
    """Create what the storage entries need on the host; on error everything made here is removed again."""
    out = PreparedVolumes()
    created: list[Path] = []
    try:
        for i, entry in enumerate(storage or []):
            kind = _get(entry, "type", "")
            kind = getattr(kind, "value", kind)
            target = _target(entry, i)
            ro = bool(_get(entry, "readonly", False))
            if kind == "bind":
                src = Path(str(_get(entry, "source", "")))
                if not src.is_absolute():
                    raise SpecError(f"storage[{i}].source {str(src)!r}: a bind source must be an absolute host path")
                if not src.exists():
                    raise SpecError(f"storage[{i}].source {src}: no such file or directory on the host")
                opts = ["rbind", "rprivate", "ro" if ro else "rw"]
                out.mounts.append({"destination": target, "type": "bind", "source": str(src), "options": opts})
            elif kind in ("named", "anonymous"):
                if kind == "named":
                    name = str(_get(entry, "name", ""))
                    if not NAME_RE.match(name):
                        raise SpecError(f"storage[{i}].name {name!r}: use 1-63 of [a-z0-9-], starting and ending alnum")
                    host = data_dir / "volumes" / name
                else:
                    host = data_dir / "volumes" / "_anon" / f"{container}-{secrets.token_hex(6)}"
                fresh = not host.exists()
                for d in (data_dir / "volumes", host.parent):  # volumes/ and volumes/_anon/: no way in for others
                    private_dir(d)
                host.mkdir(exist_ok=True)
                if fresh:
                    os.chmod(host, 0o755)  # the volume's root as the container sees it (as docker's _data)
                if kind == "anonymous":
                    out.anonymous.append(host)
                    created.append(host)
                if fresh:
                    if kind == "named":
                        created.append(host)
                    _copy_up(rootfs, target, host)
                opts = ["rbind", "rprivate", "ro" if ro else "rw"]
                out.mounts.append({"destination": target, "type": "bind", "source": str(host), "options": opts})
            elif kind == "tmpfs":
                opts = ["nosuid", "nodev"]
                size = _get(entry, "size")
                if size:
                    opts.append("size=" + tmpfs_size(size, f"storage[{i}].size"))
                mode = _get(entry, "mode")
                if mode is not None:
                    opts.append("mode=" + tmpfs_mode(mode, f"storage[{i}].mode"))
                out.mounts.append({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": opts})
            elif kind == "s3":
                raise SpecError(f"storage[{i}]: s3 volumes need s3fs (FUSE), which this node does not provide")
            else:
                raise SpecError(f"storage[{i}].type {kind!r}: expected bind, named, anonymous or tmpfs")
    except BaseException:
        for p in created:
            shutil.rmtree(p, ignore_errors=True)
        raise
    return out
