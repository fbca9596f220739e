"""zlayer's compiled parts (built from csrc/*/native.toml): helper programs in zlayer/_bin/ and extension modules.

They are the only implementations of what they do (container creation, the proxy data planes): there is no Python
stand-in, so the daemon checks at start that all are built and stops with one line naming what is missing.
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from zlayer.errors import DaemonError, ZLayerError

PACKAGE_DIR = Path(__file__).resolve().parent
BIN_DIR = PACKAGE_DIR / "_bin"
EXTENSIONS = ("zlayer.proxy._l7", "zlayer.proxy._l4", "zlayer.overlay._wg")  # data planes: csrc/proxy, stream, wg
EXECUTABLES = ("zlayer-shim",)  # the per-container monitor (csrc/runtime/)
BUILD_HINT = "build them with `pip install .` (in a checkout: `python setup.py build_ext --inplace`)"


def executable(name: str) -> Path:
    """Path of a helper program such as ``zlayer-shim``; a clear error when the build did not produce it."""
    path = BIN_DIR / name
    if not path.is_file():
        raise ZLayerError(
            f"helper program {name} is missing from {BIN_DIR}",
            hint="reinstall zlayer (pip install .) so its native parts are built",
        )
    return path


def missing() -> list[str]:
    """The compiled parts that are not built, by module or program name (found without importing them)."""
    gone = [name for name in EXECUTABLES if not (BIN_DIR / name).is_file()]
    for module in EXTENSIONS:
        stem = PACKAGE_DIR.parent.joinpath(*module.split("."))
        if not any(stem.with_name(stem.name + suffix).is_file() for suffix in EXTENSION_SUFFIXES):
            gone.append(module)
    return gone


def require_built() -> None:
    """Raise one :class:`DaemonError` naming every compiled part that is missing and how to build it."""
    gone = missing()
    if gone:
        raise DaemonError(f"zlayer's C parts are not built ({', '.join(gone)}): {BUILD_HINT}")


__all__ = ["BIN_DIR", "EXECUTABLES", "EXTENSIONS", "executable", "missing", "require_built"]
