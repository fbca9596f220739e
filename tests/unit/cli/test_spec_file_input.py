"""Every command that reads a spec file reads it through the one loader: a file that is not UTF-8, or nested 50,000
levels deep, is a clear error naming FILE:LINE:COL (exit 1) from each of them, never an internal error (exit 70)
or a crash. None of these reaches a daemon: the file is refused before one is contacted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

GOOD = "version: v1\ndeployment: my-app\nservices:\n  web:\n    image: {name: 'nginx:1'}\n"
FILES = {
    "latin-1": (GOOD.replace("my-app", "caf\xe9").encode("latin-1"), "spec file is not UTF-8 text", "2:16"),
    "50000-deep": (b"[" * 50_000, "recursion limit exceeded", "1:129"),
}
# each command with the arguments that make it read the spec in the current directory
COMMANDS = {
    "validate": ["validate"],
    "spec dump": ["spec", "dump", "."],
    "deploy": ["deploy"],
    "deploy --dry-run": ["deploy", "--dry-run"],
    "up": ["up"],
    "up --pull": ["up", "--pull"],
    "down": ["down"],
    "stop": ["stop"],
    "pull": ["pull"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("kind", sorted(FILES))
def test_a_bad_spec_file_is_a_clear_error_from_every_command(tmp_path: Path, command: str, kind: str) -> None:
    content, words, position = FILES[kind]
    (tmp_path / "app.zlayer.yml").write_bytes(content)
    env = {**os.environ, "ZLAYER_DATA_DIR": str(tmp_path / "data"), "ZLAYER_SOCKET": str(tmp_path / "no.sock")}
    r = subprocess.run([sys.executable, "-m", "zlayer", *COMMANDS[command]], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert words in out and f"app.zlayer.yml:{position}" in out, out
    assert "internal error" not in out and "Traceback" not in out, out
    assert not (tmp_path / "data" / "daemon.json").exists()  # no daemon was started for it
