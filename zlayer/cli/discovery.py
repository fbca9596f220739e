"""Find the deployment spec a command works on, with ZLayer's rule (spec-and-cli.md §11).

1. An explicit path wins and is used as given (a missing file is reported here, clearly).
2. Else the exact names ``.zlayer.yml``, ``.zlayer.yaml``, ``zlayer.yml``, ``zlayer.yaml`` in the directory, in order.
3. Else the regular files named ``*.zlayer.yml|yaml`` or ``zlayer.*.yml|yaml`` (the bare names excluded), sorted:
   exactly one is used; none or several is an error naming what to do.

Only the given directory is searched (the current one by default), never its subdirectories.
"""

from __future__ import annotations

import os
from pathlib import Path

from zlayer.errors import NotFoundError, UsageError

EXACT_NAMES = (".zlayer.yml", ".zlayer.yaml", "zlayer.yml", "zlayer.yaml")

__all__ = ["EXACT_NAMES", "discover_spec", "discover_spec_path", "find_zlayer_specs"]


def _is_spec_name(name: str) -> bool:
    dot_form = name.endswith((".zlayer.yml", ".zlayer.yaml"))
    prefix_form = name.startswith("zlayer.") and name.endswith((".yml", ".yaml")) and name not in EXACT_NAMES[2:]
    return dot_form or prefix_form


def find_zlayer_specs(directory: Path) -> list[Path]:
    """The candidate spec files of ``directory`` by name pattern, sorted (bare ``zlayer.yml|yaml`` excluded)."""
    try:
        entries = list(os.scandir(directory))
    except OSError as e:
        raise NotFoundError(f"cannot read directory {directory}: {e.strerror or e}") from e
    found = [Path(directory, e.name) for e in entries if _is_spec_name(e.name) and e.is_file()]
    return sorted(found)


def discover_spec_path(
    explicit: str | os.PathLike[str] | None = None, cwd: str | os.PathLike[str] | None = None
) -> Path:
    """The spec file to use; raises :class:`NotFoundError` / :class:`UsageError` with a message a person can act on."""
    if explicit is not None and str(explicit) != "":
        path = Path(explicit)
        if path.is_dir():
            return discover_spec_path(None, path)
        if not path.exists():
            raise NotFoundError(f"spec file {path} does not exist", hint="check the path, or omit it to auto-discover")
        return path
    directory = Path(cwd) if cwd is not None else Path(".")
    for name in EXACT_NAMES:
        candidate = directory / name
        if candidate.exists():
            return candidate
    matches = find_zlayer_specs(directory)
    if len(matches) == 1:
        return matches[0]
    where = "the current directory" if cwd is None else str(directory)
    if not matches:
        raise NotFoundError(
            f"no deployment spec found in {where}",
            hint="create a <name>.zlayer.yml file (e.g. myapp.zlayer.yml), or give the spec's path",
        )
    listing = "\n".join(f"  - {p}" for p in matches)
    raise UsageError(
        f"several deployment specs found in {where}; give the one to use:\n{listing}",
        hint="pass the spec file as an argument",
    )


discover_spec = discover_spec_path
