"""The overlay's settings are ZLayer's: its WireGuard port ``serve --wg-port`` (env ``ZLAYER_WG_PORT``), 51420 by
default, and a peer unhealthy after ``--overlay-peer-timeout`` seconds without a handshake (180 by default); a value
that is none is refused before the daemon starts, and a daemon a client command starts later uses the one chosen."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from zlayer.config import DaemonConfig
from zlayer.paths import Paths

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}


def zl(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zlayer", *args], env={**ENV, **env}, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_serve_says_the_wireguard_port_is_51420_unless_told_otherwise() -> None:
    r = zl("serve", "--help")
    assert r.returncode == 0
    assert "--wg-port" in r.stdout and "51420" in r.stdout and "51820" not in r.stdout


def test_a_wireguard_port_that_is_none_is_refused_clearly(tmp_path: Path) -> None:
    for args, env in ((("--wg-port", "0"), {}), (("--wg-port", "udp"), {}), ((), {"ZLAYER_WG_PORT": "70000"})):
        r = zl("--data-dir", str(tmp_path), "serve", "--bind", "none", *args, **env)
        assert r.returncode == 2 and "--wg-port" in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    assert not (tmp_path / "daemon.json").exists()


def test_the_chosen_port_is_what_a_daemon_started_later_is_given(tmp_path: Path) -> None:
    paths = Paths.resolve(tmp_path)
    assert DaemonConfig(paths=paths).wg_port == 51420 and "--wg-port" not in DaemonConfig(paths=paths).serve_argv()
    DaemonConfig(paths=paths, wg_port=51999).remember()
    argv = DaemonConfig.remembered(paths).serve_argv()
    assert argv[argv.index("--wg-port") + 1] == "51999"


def test_the_overlay_peer_timeout_is_zlayers_180_s_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    assert DaemonConfig(paths=Paths.resolve(tmp_path)).overlay_peer_timeout == 180.0
    for value in ("0", "soon"):
        r = zl("--data-dir", str(tmp_path), "serve", "--bind", "none", "--overlay-peer-timeout", value)
        assert r.returncode == 2 and "--overlay-peer-timeout" in r.stderr and "Traceback" not in r.stderr, r.stderr
    DaemonConfig(paths=Paths.resolve(tmp_path), overlay_peer_timeout=6).remember()
    argv = DaemonConfig.remembered(Paths.resolve(tmp_path)).serve_argv()
    assert argv[argv.index("--overlay-peer-timeout") + 1] == "6"
