"""Hostile YAML gets a clear spec error, never an internal error or a hang.

serde_yaml (ZLayer's parser, de.rs) follows aliases at most ``events × 100`` times in a document ("repetition limit
exceeded") and nests at most 128 levels ("recursion limit exceeded at line L column C"); a document that breaks a
limit is rejected even where the values are free-form (``init.steps[].with`` takes any JSON). zlayer must stop such
documents the same way: a :class:`SpecError` with a position, exit code 1 from ``zlayer validate``. Each case runs
in a subprocess with a hang guard (not a speed target: a correct parser answers at once)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAD = "version: v1\ndeployment: abc\nservices:\n  web:\n    image: {name: 'nginx:1'}\n"
WITH = HEAD + "    init:\n      steps:\n        - id: a\n          uses: init.run\n          with:\n"


def _bomb(levels: int) -> str:
    lines = ["            a: &a [x, x, x, x, x, x, x, x, x]"]
    prev = "a"
    for name in "bcdefghijk"[: levels - 1]:
        lines.append(f"            {name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
        prev = name
    return WITH + "\n".join(lines) + "\n"


# case -> (document, must it be rejected?)
CASES = {
    "recursive-alias": (HEAD + "    labels: &l {a: *l}\n", True),
    "self-referencing-service": (
        "version: v1\ndeployment: abc\nservices:\n  web: &w\n    image: {name: x}\n    labels: *w\n",
        True,
    ),
    "alias-bomb-in-free-json": (_bomb(6), True),  # 9**6 expansions, far over serde_yaml's repetition limit
    "nesting-over-128-in-free-json": (WITH + "            deep: " + "[" * 200 + "]" * 200 + "\n", True),
    "very-deep-nesting": (HEAD + "    labels: {a: " + "[" * 5000 + "]" * 5000 + "}\n", True),
    "very-deep-nesting-in-api": ("version: v1\ndeployment: abc\napi: {x: " + "[" * 5000 + "]" * 5000 + "}\n", False),
    # 50,000 levels exhausted the C stack of PyYAML's composer: the process died with SIGSEGV
    "50000-flow-sequences": ("[" * 50_000, True),
    "50000-flow-mappings": ("{a: " * 50_000, True),
    "50000-block-sequences": ("- " * 50_000 + "x\n", True),
    "50000-complex-keys": ("? " * 50_000 + "x\n", True),
    "50000-under-a-service": (HEAD + "    labels: {a: " + "[" * 50_000 + "}\n", True),
    "over-the-size-limit": (HEAD + "# " + "x" * (4 << 20) + "\n", True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_document_is_a_clean_spec_error(case: str, tmp_path: Path) -> None:
    text, must_reject = CASES[case]
    spec = tmp_path / f"{case}.zlayer.yml"
    spec.write_text(text)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "zlayer", "validate", str(spec)], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"zlayer validate did not finish on {case} (alias/nesting limits missing)")
    output = out.stdout + out.stderr
    assert "Traceback" not in output
    assert "internal error" not in output, output[-600:]
    assert out.returncode in ((1,) if must_reject else (0, 1)), output[-600:]
    if out.returncode == 1:
        assert f"{spec}:" in output, output[-600:]  # the problem carries FILE:LINE:COL
