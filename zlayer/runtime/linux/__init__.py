"""The Linux runtime: OCI bundles from specs, run by zlayer-shim; ``LinuxRuntime`` implements the Runtime protocol.

``LinuxRuntime`` is imported lazily so that ``zlayer.runtime.linux.shim`` stays importable on its own.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DirectoryImages", "LinuxRuntime"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from zlayer.runtime.linux import backend

        return getattr(backend, name)
    raise AttributeError(name)
