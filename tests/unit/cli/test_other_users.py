"""The CLI and other host users (issue 11, exposure): a signing secret passed as an option stands in the command
line every host user can read (ps), so the command says so and names the variable that keeps it private; a user the
data dir is closed to is told so in two lines, not with a traceback."""

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


def test_another_user_is_told_the_data_dir_is_not_theirs_not_shown_a_traceback(tmp_path: Path) -> None:
    """The data dir is closed to other users; one who points the CLI at it gets a two-line answer (exit 77)."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("needs root (to become nobody)")
    data = tmp_path / "data"
    (data / "x").mkdir(parents=True)
    (data / "admin_bearer.token").write_text("t0k\n")
    os.chmod(data / "admin_bearer.token", 0o600)
    os.chmod(tmp_path, 0o755)
    os.chmod(data, 0o711)
    # python itself lives where nobody cannot read it: import everything first, then become nobody
    script = (
        "import os, sys, zlayer.cli.main as m, zlayer.cli.token, zlayer.tokens, zlayer.cli.common\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        f"sys.exit(m.main(['--data-dir', {str(data)!r}, 'token', 'show']))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 77, r.stdout + r.stderr
    assert r.stderr.splitlines()[0] == f"error: {data / 'admin_bearer.token'}: permission denied", r.stderr
    assert "Traceback" not in r.stderr and "t0k" not in r.stdout
