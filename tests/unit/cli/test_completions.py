"""`zlayer completions powershell|elvish` (ZLayer's README names all five shells): the scripts ask zlayer for
candidates on click's completion protocol, as bash, zsh and fish do."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]


def candidates(shell: str, cwd: Path | None = None, **env: str) -> list[list[str]]:
    r = subprocess.run([sys.executable, "-m", "zlayer"], capture_output=True, text=True, timeout=60, cwd=cwd,
                       env={**os.environ, "_ZLAYER_COMPLETE": f"{shell}_complete", **env})  # fmt: skip
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    return [line.split("\t") for line in r.stdout.splitlines()]


def test_powershell_protocol_completes_commands_options_and_choices() -> None:
    got = candidates("powershell", COMP_WORDS="zlayer dep", COMP_CWORD="dep")
    assert [c[:2] for c in got] == [["plain", "deploy"]] and got[0][2].startswith("Deploy a spec")
    shells = candidates("powershell", COMP_WORDS="zlayer completions ", COMP_CWORD="")
    assert [c[1] for c in shells] == ["bash", "zsh", "fish", "powershell", "elvish"]
    assert ["plain", "--deployment"] in [c[:2] for c in candidates("powershell", COMP_WORDS="zlayer logs --dep",
                                                                      COMP_CWORD="--dep")]  # fmt: skip
    script = subprocess.run([sys.executable, "-m", "zlayer", "completions", "powershell"], capture_output=True,
                            text=True, timeout=60).stdout  # fmt: skip
    assert "Register-ArgumentCompleter -Native -CommandName zlayer" in script
    assert "$env:_ZLAYER_COMPLETE = 'powershell_complete'" in script


@pytest.fixture
def zlayer_on_path(tmp_path: Path) -> dict[str, str]:
    """A `zlayer` on PATH that runs this tree, as the console script would."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "zlayer").write_text(f'#!/bin/sh\nexec {sys.executable} -m zlayer "$@"\n')
    (bin_dir / "zlayer").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}


@pytest.mark.peer
def test_elvish_completes_commands_and_spec_files_in_a_real_shell(
    tmp_path: Path, zlayer_on_path: dict[str, str]
) -> None:
    if shutil.which("elvish") is None:
        pytest.fail("elvish is not installed (.ci/apt-packages.txt lists it)")
    script = tmp_path / "zlayer.elv"
    script.write_text(subprocess.run([sys.executable, "-m", "zlayer", "completions", "elvish"], capture_output=True,
                                     text=True, timeout=60, check=True).stdout)  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    (work / "web.zlayer.yml").write_text("version: v1\n")
    # the completer function, called as the line editor calls it
    body = "\n".join(ln for ln in script.read_text().splitlines() if "edit:" not in ln)
    calls = "\n".join(["_zlayer_completion zlayer dep", "_zlayer_completion zlayer deploy we",
                       "_zlayer_completion zlayer logs --dep"])  # fmt: skip
    r = subprocess.run(["elvish", "-norc", "-c", f"{body}\n{calls}"], capture_output=True, text=True, timeout=60,
                       cwd=work, env=zlayer_on_path)  # fmt: skip
    assert r.stdout.split() == ["▶", "deploy", "▶", "web.zlayer.yml", "▶", "--deployment"], r.stderr
    # and the whole script in an interactive elvish: Tab completes `zlayer comp` (else `zlayer comp elvish` fails)
    out = _interactive(f"eval (slurp < {script})", ["zlayer comp", "\t", " elvish\r"], work, zlayer_on_path)
    assert "No such command" not in out and "arg-completer[zlayer]" in out, out


def _interactive(setup: str, keys: list[str], cwd: Path, env: dict[str, str]) -> str:
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.chdir(cwd)
        os.execvpe("elvish", ["elvish", "-norc"], env)
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
        _read(fd, "# ", 20)
        os.write(fd, setup.encode() + b"\r")
        _read(fd, "# ", 20)
        for k in keys:
            os.write(fd, k.encode())
            time.sleep(1.0 if k == "\t" else 0.2)
        return _read(fd, "arg-completer[zlayer]", 20)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)


def _read(fd: int, want: str, timeout: float) -> str:
    out = b""
    deadline = time.monotonic() + timeout
    while want.encode() not in out and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                out += os.read(fd, 65536)
            except OSError:
                break
    return out.decode(errors="replace")
