"""A signing secret passed as an option stands in the command line every host user can read (ps): the command
says so and names the variable that keeps it private; through the variable, nothing is said (issue 11, exposure)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}


def zl(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zlayer", *args], env={**ENV, **env}, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_a_secret_on_the_command_line_is_warned_about_and_one_from_the_environment_is_not() -> None:
    argv = zl("token", "create", "--secret", "s3cret", "--quiet")
    assert argv.returncode == 0 and argv.stdout.count(".") == 2
    assert "--secret on the command line is visible to every user of this host" in argv.stderr
    assert "ZLAYER_JWT_SECRET" in argv.stderr
    env = zl("token", "create", "--quiet", ZLAYER_JWT_SECRET="s3cret")
    assert env.returncode == 0 and env.stderr == ""


def test_serve_warns_about_jwt_secret_in_argv_before_anything_else(tmp_path: Path) -> None:
    r = zl("--data-dir", str(tmp_path), "serve", "--jwt-secret", "s3cret", "--bind", "not-an-address")
    assert r.returncode != 0
    assert "--jwt-secret on the command line is visible to every user of this host" in r.stderr
