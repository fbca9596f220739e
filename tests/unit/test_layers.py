"""Imports go down the stack only (issue 12; docs/architecture.md names the layers): the import-linter contracts in
pyproject.toml hold for the tree, and a module that imports upward breaks them."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import zlayer

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(zlayer.__file__).resolve().parent


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_every_import_of_zlayer_goes_down_the_stack() -> None:
    r = _lint(ROOT)
    assert r.returncode == 0 and "Contracts: 2 kept, 0 broken." in r.stdout, r.stdout + r.stderr


def test_an_upward_import_breaks_the_contract_and_is_named(tmp_path: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(PACKAGE, tmp_path / "zlayer", ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c", "_bin"))
    scalars = tmp_path / "zlayer" / "spec" / "scalars.py"
    scalars.write_text(scalars.read_text() + "\nfrom zlayer.cli.common import cli_ctx  # noqa\n")
    r = _lint(tmp_path)
    assert r.returncode != 0, r.stdout
    assert "zlayer.spec is not allowed to import zlayer.cli" in r.stdout
    assert "zlayer.spec.scalars -> zlayer.cli.common" in r.stdout


def test_the_cli_reaches_the_daemon_only_through_serve(tmp_path: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(PACKAGE, tmp_path / "zlayer", ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c", "_bin"))
    status = tmp_path / "zlayer" / "cli" / "status.py"
    status.write_text(status.read_text() + "\nfrom zlayer.daemon import Daemon  # noqa\n")
    r = _lint(tmp_path)
    assert r.returncode != 0 and "zlayer.cli.status -> zlayer.daemon" in r.stdout, r.stdout


def test_no_module_imports_another_package_of_zlayer_by_name_at_run_time() -> None:
    """``importlib.import_module("zlayer.x")`` would pass the contracts unseen: a package loads only its own modules
    that way (lazily, for start-up time)."""
    strays = []
    for path in PACKAGE.rglob("*.py"):
        package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:2])
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
                continue
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            target = node.args[0].value
            named = func in ("import_module", "__import__") and isinstance(target, str) and target.startswith("zlayer")
            if named and not (str(target) + ".").startswith(package + "."):
                strays.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {target}")
    assert strays == []
