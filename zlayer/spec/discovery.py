"""Spec auto-discovery as ZLayer does it (spec-and-cli.md §11), used by validate, deploy, up, down, stop and pull.

1. An explicit path wins (a directory is searched like the current directory).
2. Exact names, in order: ``.zlayer.yml``, ``.zlayer.yaml``, ``zlayer.yml``, ``zlayer.yaml``.
3. Otherwise exactly one regular file named ``*.zlayer.yml``, ``*.zlayer.yaml``, ``zlayer.*.yml`` or
   ``zlayer.*.yaml`` (bare ``zlayer.yml``/``zlayer.yaml`` excluded); none or several is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

from zlayer.errors import NotFoundError, SpecError

EXACT_NAMES = (".zlayer.yml", ".zlayer.yaml", "zlayer.yml", "zlayer.yaml")


def _is_candidate(name: str) -> bool:
    if name in ("zlayer.yml", "zlayer.yaml"):
        return False
    if name.endswith((".zlayer.yml", ".zlayer.yaml")):
        return True
    return name.startswith("zlayer.") and name.endswith((".yml", ".yaml"))


def spec_candidates(directory: Path) -> list[Path]:
    """Files in ``directory`` that look like deployment specs (pattern rule 3), sorted."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as e:
        raise NotFoundError(f"{directory}: cannot list directory: {e.strerror or e}") from None
    return [Path(e.path) for e in entries if _is_candidate(e.name) and e.is_file()]


def discover_spec_path(
    explicit: str | os.PathLike[str] | None = None, cwd: str | os.PathLike[str] | None = None
) -> Path:
    """The spec file to use: ``explicit`` if given, else the one found in ``cwd`` (default: the current directory)."""
    if explicit is not None:
        p = Path(explicit)
        if p.is_dir():
            return discover_spec_path(None, cwd=p)
        if not p.exists():
            raise NotFoundError(f"{p}: spec file not found")
        return p
    here = Path(cwd) if cwd is not None else Path.cwd()
    for name in EXACT_NAMES:
        if (here / name).is_file():
            return here / name
    found = spec_candidates(here)
    shown = "the current directory" if cwd is None else str(here)
    if not found:
        raise NotFoundError(
            f"No deployment spec found in {shown}. Create a <name>.zlayer.yml (or zlayer.yml) there, "
            "or pass the spec file as an argument."
        )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise SpecError(
            f"Multiple deployment specs found in {shown}: {names}. Pass the one to use as an argument.",
            hint=f"e.g. zlayer validate {found[0]}",
        )
    return found[0]


discover_spec = discover_spec_path

__all__ = ["EXACT_NAMES", "discover_spec", "discover_spec_path", "spec_candidates"]
