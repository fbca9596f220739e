"""The CLI's global behaviour: version, help, unknown commands, data-dir derived paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from zlayer.cli.main import cli
from zlayer.paths import Paths


def test_version_prints_package_version() -> None:
    out = subprocess.run([sys.executable, "-m", "zlayer", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("zlayer ")


def test_help_lists_commands_without_importing_them() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "validate" in result.output


def test_unknown_command_is_a_usage_error() -> None:
    out = subprocess.run([sys.executable, "-m", "zlayer", "no-such-command"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "No such command" in out.stderr
    assert "Traceback" not in out.stderr


def test_custom_data_dir_derives_run_log_and_socket(tmp_path: object) -> None:
    paths = Paths.resolve(str(tmp_path))
    assert paths.run_dir == paths.data_dir / "run"
    assert paths.log_dir == paths.data_dir / "logs"
    assert paths.socket == paths.data_dir / "run" / "zlayer.sock"


def test_long_data_dir_gets_short_socket_path() -> None:
    paths = Paths.resolve("/tmp/" + "x" * 120)
    assert str(paths.socket).startswith("/tmp/zlayer-daemon-")
    assert len(str(paths.socket)) <= 103


def test_a_runtime_that_does_not_exist_is_refused_not_ignored(tmp_path: Path) -> None:
    # `--runtime docker|youki` used to be accepted and the Linux runtime ran anyway (wasm is a runtime since issue 17,
    # docker since issue 19)
    spec = Path(__file__).parents[2] / "examples" / "hello.zlayer.yml"
    env = {**os.environ, "ZLAYER_DATA_DIR": str(tmp_path), "ZLAYER_NO_AUTOSTART": "1"}
    for runtime in ("youki",):
        for command in (["validate", str(spec)], ["deploy", str(spec)], ["up", str(spec)], ["serve"]):
            r = subprocess.run([sys.executable, "-m", "zlayer", "--runtime", runtime, *command], capture_output=True,
                               text=True, timeout=60, env=env)  # fmt: skip
            assert r.returncode == 2 and "Traceback" not in r.stderr, (runtime, command, r.stderr)
            assert r.stderr.splitlines() == [
                f"error: --runtime: no {runtime} runtime in this zlayer",
                "  hint: available runtimes: auto, linux, wasm, docker (auto: linux, wasm for a WASM image, "
                "docker where linux cannot run)",
            ]
    assert list(tmp_path.iterdir()) == []  # nothing was started or written
    for runtime in ("auto", "linux", "wasm", "docker"):
        r = subprocess.run([sys.executable, "-m", "zlayer", "--runtime", runtime, "validate", str(spec)],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0 and "Spec validation: PASSED" in r.stdout, r.stderr
