"""Locating zlayer's compiled helper programs (built from csrc/*/native.toml into zlayer/_bin/)."""

from __future__ import annotations

from pathlib import Path

from zlayer.errors import ZLayerError

BIN_DIR = Path(__file__).resolve().parent / "_bin"


def executable(name: str) -> Path:
    """Path of a helper program such as ``zlayer-shim``; a clear error when the build did not produce it."""
    path = BIN_DIR / name
    if not path.is_file():
        raise ZLayerError(
            f"helper program {name} is missing from {BIN_DIR}",
            hint="reinstall zlayer (pip install .) so its native parts are built",
        )
    return path
