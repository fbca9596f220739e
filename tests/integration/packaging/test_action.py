"""The GitHub Action (``action.yml`` at the root): its steps run here as a GitHub runner runs a composite action —
``bash --noprofile --norc -eo pipefail`` per step, inputs and step outputs through ``${{ }}`` expressions,
``GITHUB_OUTPUT``/``GITHUB_PATH`` files, ``RUNNER_TEMP`` — installing the wheel and validating a spec with it."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.packaging import ROOT

pytestmark = [pytest.mark.slow]

EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def _value(expr: str, ctx: dict[str, Any]) -> str:
    """The part of GitHub's expression language the action uses: context lookups and ``a != ''``/``a == ''``."""
    cmp = re.fullmatch(r"(.+?)\s*(!=|==)\s*'(.*)'", expr)
    if cmp:
        left = _value(cmp.group(1), ctx)
        return str((left != cmp.group(3)) if cmp.group(2) == "!=" else (left == cmp.group(3))).lower()
    node: Any = ctx
    for part in expr.split("."):
        node = node.get(part, "") if isinstance(node, dict) else ""
    return str(node)


def _expand(text: str, ctx: dict[str, Any]) -> str:
    return EXPR.sub(lambda m: _value(m.group(1), ctx), text)


def run_action(inputs: dict[str, str], tmp: Path) -> tuple[int, dict[str, Any], str]:
    """Run every step of action.yml; return the exit code of the first failing step (or 0), the outputs, the log."""
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    given = {k: inputs.get(k, spec.get("default", "")) for k, spec in action["inputs"].items()}
    ctx: dict[str, Any] = {"inputs": given, "steps": {}, "github": {"action_path": str(ROOT)}}
    runner_temp, paths, log = tmp / "runner-temp", [], []
    runner_temp.mkdir(exist_ok=True)
    for i, step in enumerate(action["runs"]["steps"]):
        cond = step.get("if")
        if cond and _value(cond, ctx) != "true":
            continue
        out_file, path_file = tmp / f"output-{i}", tmp / f"path-{i}"
        out_file.touch()
        path_file.touch()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
        env.update({k: _expand(str(v), ctx) for k, v in step.get("env", {}).items()})
        env.update(GITHUB_OUTPUT=str(out_file), GITHUB_PATH=str(path_file), RUNNER_TEMP=str(runner_temp),
                   GITHUB_ACTION_PATH=str(ROOT), PATH=":".join([*paths, os.environ["PATH"]]))  # fmt: skip
        script = tmp / f"step-{i}.sh"
        script.write_text(_expand(step["run"], ctx))
        cwd = ROOT / _expand(step.get("working-directory", "."), ctx)
        r = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=900)  # fmt: skip
        log.append(r.stdout + r.stderr)
        if step.get("id"):
            pairs = (line.split("=", 1) for line in out_file.read_text().splitlines())
            ctx["steps"][step["id"]] = {"outputs": dict(pairs)}
        paths = [*path_file.read_text().split(), *paths]
        if r.returncode != 0:
            return r.returncode, ctx, "\n".join(log)
    outputs = {k: _expand(v["value"], ctx) for k, v in action["outputs"].items()}
    return 0, {"outputs": outputs, "path": paths}, "\n".join(log)


def test_installs_the_wheel_and_validates_a_spec(built_wheel: dict[str, str], tmp_path: Path) -> None:
    rc, result, log = run_action({"wheel": built_wheel["manylinux_wheel"], "command": "validate hello.zlayer.yml",
                                  "working-directory": "examples"}, tmp_path)  # fmt: skip
    assert rc == 0, log[-3000:]
    assert result["outputs"]["version"] == "0.1.0"
    bin_dir = result["outputs"]["bin-dir"]
    assert bin_dir in result["path"] and Path(bin_dir, "zlayer").is_file()
    assert "Installed zlayer 0.1.0" in log and "hello" in log and "Traceback" not in log


def test_a_failing_command_fails_the_step_and_inputs_never_reach_the_shell(
    built_wheel: dict[str, str], tmp_path: Path
) -> None:
    marker = tmp_path / "injected"
    rc, _, log = run_action({"wheel": built_wheel["manylinux_wheel"], "command": f"validate nope.yml; touch {marker}",
                             "working-directory": "examples"}, tmp_path)  # fmt: skip
    assert rc != 0 and not marker.exists(), log[-2000:]
    assert "Traceback" not in log
