"""OCI images: references, the local content store, layer unpacking, archives, and rootfs mounting.

Public names other components rely on:

- :class:`ImageStore` (``ImageStore(root)`` under ``<data_dir>/images``): ``get(ref) -> LocalImage``, ``list()``,
  ``tag()``, ``remove()``, ``prune()``.
- :class:`LocalImage`: ``reference``, ``digest``, ``config`` (Entrypoint, Cmd, Env, ...), ``layer_dirs`` (lowest
  first, overlayfs form), ``is_wasm``, ``platform``.
- :func:`mount_rootfs` / :func:`unmount_rootfs`: an overlayfs of the layers plus an upper/work dir.
- :func:`import_archive` / :func:`export_archive`: OCI archives, ``docker save`` archives, rootfs tarballs.
- :func:`pull` / :func:`push` (async): registries, with pull policies always, newer, if_not_present, never.
- :func:`parse_reference`: Docker Hub defaults (``nginx`` is ``docker.io/library/nginx:latest``).
"""

from typing import TYPE_CHECKING, Any

from zlayer.images.archive import export_archive, import_archive
from zlayer.images.mount import mount_rootfs, unmount_rootfs
from zlayer.images.reference import Reference, parse_reference
from zlayer.images.store import ImageStore, LocalImage

if TYPE_CHECKING:
    from zlayer.images.distribution import POLICIES, pull, push
    from zlayer.images.registry import Credentials

# The registry client brings aiohttp (~10 MiB, and the CA bundle read at import): loaded on first use, so a daemon
# that only runs local images stays small.
_DIST = "zlayer.images.distribution"
_LAZY = {"POLICIES": _DIST, "pull": _DIST, "push": _DIST, "Credentials": "zlayer.images.registry"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'zlayer.images' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "POLICIES",
    "Credentials",
    "ImageStore",
    "LocalImage",
    "Reference",
    "export_archive",
    "import_archive",
    "mount_rootfs",
    "parse_reference",
    "pull",
    "push",
    "unmount_rootfs",
]
