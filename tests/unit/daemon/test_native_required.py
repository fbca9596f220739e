"""A daemon needs its C parts (issue 12): there is no Python data plane or runtime to fall back on, so a build without
one of them does not start, and says in one line what is missing and how to build it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import zlayer


def _tree_without(tmp_path: Path, pattern: str) -> Path:
    """A copy of the zlayer package with the files matching ``pattern`` (relative to it) removed."""
    root = tmp_path / "tree"
    shutil.copytree(Path(zlayer.__file__).parent, root / "zlayer", ignore=shutil.ignore_patterns("__pycache__"))
    gone = list((root / "zlayer").glob(pattern))
    assert gone, f"nothing matched {pattern}: the test would not test"
    for path in gone:
        path.unlink()
    return root


def _serve(tree: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    argv = [sys.executable, "-m", "zlayer", "--data-dir", str(tmp_path / "data"), "serve", "--bind", "none"]
    return subprocess.run(argv, env=env, cwd=tree, capture_output=True, text=True, timeout=60)


def test_a_daemon_without_the_l7_plane_stops_at_start_naming_it_and_the_build(tmp_path: Path) -> None:
    r = _serve(_tree_without(tmp_path, "proxy/_l7.*.so"), tmp_path)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [
        "error: zlayer's C parts are not built (zlayer.proxy._l7): build them with `pip install .` "
        "(in a checkout: `python setup.py build_ext --inplace`)"
    ], r.stderr
    assert not (tmp_path / "data" / "state.db").exists()


def test_a_daemon_without_the_shim_and_the_l4_plane_names_both(tmp_path: Path) -> None:
    tree = _tree_without(tmp_path, "_bin/zlayer-shim")
    for path in (tree / "zlayer" / "proxy").glob("_l4.*.so"):
        path.unlink()
    r = _serve(tree, tmp_path)
    assert r.returncode != 0
    assert "not built (zlayer-shim, zlayer.proxy._l4)" in r.stderr and "Traceback" not in r.stderr, r.stderr
