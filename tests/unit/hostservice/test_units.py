"""The service definitions ``zlayer daemon install`` writes and the packages ship: systemd accepts the unit, the
secret stays off the command line, launchd and the Windows SCM get the same command."""

from __future__ import annotations

import configparser
import plistlib
import subprocess
import sys
from pathlib import Path

from zlayer.hostservice import (
    ServiceOptions,
    launchd_plist,
    systemd_environment_dropin,
    systemd_unit,
    windows_service,
)

REPO = Path(__file__).resolve().parents[3]
SECRET = 'p"a$s%w\\rd'


def _opts(**kw: object) -> ServiceOptions:
    base: dict[str, object] = {
        "command": (sys.executable, "-m", "zlayer"),
        "data_dir": "/var/lib/zlayer data",
        "serve_args": ("--bind", "0.0.0.0:3669"),
        "environment": {"ZLAYER_JWT_SECRET": SECRET},
    }
    base.update(kw)
    return ServiceOptions(**base)  # type: ignore[arg-type]


def _unit(text: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(text)
    return cp


def test_unit_is_notify_restarts_and_leaves_containers_running() -> None:
    svc = _unit(systemd_unit(_opts()))["Service"]
    assert svc["Type"] == "notify" and svc["KillMode"] == "process" and svc["Delegate"] == "yes"
    assert svc["Restart"] == "on-failure" and svc["LimitNOFILE"] == "1048576" and svc["WatchdogSec"]
    # global options before `serve`, the data dir with a space quoted, and no secret anywhere in the unit
    assert svc["ExecStart"] == f"{sys.executable} -m zlayer --data-dir '/var/lib/zlayer data' serve --bind 0.0.0.0:3669"
    assert SECRET not in systemd_unit(_opts()) and 'p"a' not in systemd_unit(_opts())


def test_systemd_analyze_verify_accepts_the_unit_and_its_dropin(tmp_path: Path) -> None:
    (tmp_path / "zlayer.service").write_text(systemd_unit(_opts()))
    dropin = systemd_environment_dropin(_opts())
    assert dropin is not None
    (tmp_path / "zlayer.service.d").mkdir()
    (tmp_path / "zlayer.service.d" / "env.conf").write_text(dropin)
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "zlayer.service")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr  # no warning either


def test_packaged_unit_is_the_one_daemon_install_writes() -> None:
    shipped = (REPO / "packaging" / "systemd" / "zlayer.service").read_text()
    assert shipped == systemd_unit(ServiceOptions(command=("/usr/bin/zlayer",)))


def test_no_dropin_without_secrets() -> None:
    assert systemd_environment_dropin(_opts(environment={})) is None


def test_launchd_plist_runs_the_same_command_with_the_secret_in_its_environment() -> None:
    job = plistlib.loads(launchd_plist(_opts()))
    assert job["Label"] == "com.zlayer.daemon" and job["RunAtLoad"] is True
    assert job["ProgramArguments"] == [sys.executable, "-m", "zlayer", "--data-dir", "/var/lib/zlayer data", "serve",
                                       "--bind", "0.0.0.0:3669"]  # fmt: skip
    assert job["EnvironmentVariables"] == {"ZLAYER_JWT_SECRET": SECRET}
    assert job["StandardErrorPath"] == "/var/log/zlayer/daemon.log"


def test_windows_service_quotes_paths_as_the_scm_parses_them() -> None:
    svc = windows_service(
        _opts(command=(r"C:\Program Files\zlayer\zlayer.exe",), data_dir="C:\\Program Data\\zlayer\\")
    )
    assert svc["name"] == "zlayer" and svc["start_type"] == "auto" and svc["account"] == "LocalSystem"
    # a space means quotes; a trailing backslash before the closing quote is doubled (CommandLineToArgvW rules)
    assert svc["binary_path"] == (r'"C:\Program Files\zlayer\zlayer.exe" --data-dir "C:\Program Data\zlayer\\" '
                                  r"serve --bind 0.0.0.0:3669 --service")  # fmt: skip
    assert svc["environment"] == {"ZLAYER_JWT_SECRET": SECRET}
