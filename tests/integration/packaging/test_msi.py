"""The Windows installer, read back with msitools as Windows Installer would read it: the files it installs (the
zlayer package and a PE32+ zlayer.exe), the Python 3.11 launch condition, the system PATH entry, the upgrade code,
and the ``zlayer`` service registered field by field as :func:`zlayer.hostservice.windows_service` defines it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.packaging import ROOT
from zlayer.hostservice import ServiceOptions, windows_service

pytestmark = [pytest.mark.slow, pytest.mark.peer]
BUILD = ROOT / "packaging" / "msi" / "build.py"


def _build(out: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BUILD), "--out", str(out), *args], capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip


@pytest.fixture(scope="module")
def msi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("msi")
    r = _build(out)
    assert r.returncode == 0, r.stderr[-3000:]
    return Path(r.stdout.splitlines()[-1].split('"msi": "')[1].split('"')[0])


def _table(msi: Path, name: str) -> list[dict[str, str]]:
    text = subprocess.run(["msiinfo", "export", str(msi), name], capture_output=True, text=True, check=True).stdout
    lines = text.splitlines()
    cols = lines[0].split("\t")
    return [dict(zip(cols, line.split("\t"), strict=False)) for line in lines[3:]]


def test_msi_registers_the_service_as_windows_service_defines_it(msi: Path) -> None:
    tables = set(subprocess.run(["msiinfo", "tables", str(msi)], capture_output=True, text=True, check=True)
                 .stdout.split())  # fmt: skip
    for t in (
        "File",
        "Component",
        "Directory",
        "ServiceInstall",
        "ServiceControl",
        "LaunchCondition",
        "AppSearch",
        "RegLocator",
        "Environment",
        "MsiServiceConfigFailureActions",
        "Upgrade",
    ):
        assert t in tables, t
    svc = windows_service(ServiceOptions(command=("zlayer.exe",)))
    (row,) = _table(msi, "ServiceInstall")
    assert row["Name"] == svc["name"] and row["DisplayName"] == svc["display_name"]
    assert row["Description"] == svc["description"] and row["StartName"] == svc["account"]
    assert row["StartType"] == "2"  # SERVICE_AUTO_START
    assert row["ServiceType"] == "16"  # SERVICE_WIN32_OWN_PROCESS
    assert f"zlayer.exe {row['Arguments']}" == svc["binary_path"]
    (comp,) = [c for c in _table(msi, "Component") if c["Component"] == row["Component_"]]
    (exe,) = [f for f in _table(msi, "File") if f["File"] == comp["KeyPath"]]
    assert exe["FileName"].endswith("zlayer.exe")  # the service runs the launcher, its component's key file
    (ctl,) = _table(msi, "ServiceControl")
    assert ctl["Name"] == "zlayer" and ctl["Component_"] == row["Component_"]
    assert int(ctl["Event"]) & 0x80 and int(ctl["Event"]) & 0x02  # removed on uninstall, stopped on install/uninstall
    (fail,) = _table(msi, "MsiServiceConfigFailureActions")
    assert fail["Name"] == "zlayer" and fail["ResetPeriod"] == str(svc["failure_reset_s"])
    assert fail["Actions"] == "1[~]1[~]1" and fail["DelayActions"] == "5000[~]5000[~]5000"
    seq = {r["Action"] for r in _table(msi, "InstallExecuteSequence")}
    assert {"InstallServices", "MsiConfigureServices", "WriteEnvironmentStrings", "AppSearch"} <= seq
    (env,) = _table(msi, "Environment")
    assert env["Name"] == "=-*PATH" and env["Value"] == "[~];[INSTALLDIR]"
    (loc,) = _table(msi, "RegLocator")
    assert loc["Key"] == r"SOFTWARE\Python\PythonCore\3.11\InstallPath" and loc["Root"] == "2"
    assert {"Property": "PYTHON311", "Signature_": loc["Signature_"]} in _table(msi, "AppSearch")
    (cond,) = [c for c in _table(msi, "LaunchCondition") if "PYTHON311" in c["Condition"]]
    assert "PYTHON311" in cond["Condition"] and "Python 3.11" in cond["Description"]
    props = {p["Property"]: p["Value"] for p in _table(msi, "Property")}
    assert props["UpgradeCode"] == "{6B1F0C2E-5A4D-4C8E-9E1A-2F7C3D9B8A41}"
    from zlayer import __version__

    assert props["ProductVersion"] == __version__.split("+")[0]


def test_msi_holds_the_launcher_and_the_package(msi: Path, tmp_path: Path) -> None:
    subprocess.run(["msiextract", "-C", str(tmp_path), str(msi)], capture_output=True, check=True)
    (exe,) = tmp_path.rglob("zlayer.exe")
    assert exe.read_bytes()[:2] == b"MZ"
    # the service's command line (windows_service(): "... --service") makes the launcher the SCM's service host
    assert " --service".encode("utf-16-le") in exe.read_bytes() and b"StartServiceCtrlDispatcherW" in exe.read_bytes()
    assert "PE32+ executable" in subprocess.run(["file", str(exe)], capture_output=True, text=True).stdout
    assert "x86-64" in subprocess.run(["file", str(exe)], capture_output=True, text=True).stdout
    pkg = exe.parent / "lib" / "zlayer"
    ours = sorted(
        p.relative_to(ROOT / "zlayer") for p in (ROOT / "zlayer").rglob("*.py") if "__pycache__" not in p.parts
    )
    assert sorted(p.relative_to(pkg) for p in pkg.rglob("*.py")) == ours
    assert not list(pkg.rglob("*.so")) and (pkg / "__main__.py").is_file()


def test_msi_bad_input_says_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "src" / "zlayer").mkdir(parents=True)
    r = _build(tmp_path / "out", "--source", str(tmp_path / "src"))
    assert r.returncode == 1 and "not the zlayer package" in r.stderr and "Traceback" not in r.stderr
    bare = tmp_path / "bin"
    bare.mkdir()
    env = {**os.environ, "PATH": str(bare)}
    r = _build(tmp_path / "out", env=env)
    assert r.returncode == 1 and "wixl not found" in r.stderr and "Traceback" not in r.stderr
