"""The ``.deb`` and ``.rpm`` an operator installs, installed for real: into a Debian root that debootstrap makes,
under chroot — the service enabled but not started, the CLI working, an upgrade keeping the data, removal keeping
it, purge deleting it; the ``.rpm`` read back by rpm and installed into a scratch root."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.packaging import ROOT

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.peer]


def _chroot(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
    return subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True, timeout=600, env=env)


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stdout + r.stderr
    return r.stdout


def test_deb_declares_what_it_holds(linux_packages: dict[str, str]) -> None:
    deb = linux_packages["deb"]
    info = _ok(subprocess.run(["dpkg-deb", "--info", deb], capture_output=True, text=True))
    assert "Package: zlayer" in info and "Version: 0.1.0-1" in info and "Depends: python3.11" in info
    listing = _ok(subprocess.run(["dpkg-deb", "--contents", deb], capture_output=True, text=True))
    for path in ("./usr/bin/zlayer", "./usr/lib/systemd/system/zlayer.service", "./etc/zlayer/zlayer.env",
                 "./usr/share/bash-completion/completions/zlayer", "./usr/share/zsh/vendor-completions/_zlayer",
                 "./usr/share/fish/vendor_completions.d/zlayer.fish", "./usr/share/man/man1/zlayer.1.gz",
                 "./usr/share/man/man1/zlayer-deploy.1.gz", "/zlayer/_bin/zlayer-shim"):  # fmt: skip
        assert path in listing, path
    conffiles = _ok(subprocess.run(["dpkg-deb", "--field", deb, "Conffiles"], capture_output=True, text=True))
    control = Path(_ok(subprocess.run(["mktemp", "-d"], capture_output=True, text=True)).strip())
    try:
        _ok(subprocess.run(["dpkg-deb", "--control", deb, str(control)], capture_output=True, text=True))
        assert (control / "conffiles").read_text().split() == ["/etc/zlayer/zlayer.env"], conffiles
        postinst = (control / "postinst").read_text()
        assert "systemctl enable zlayer.service" in postinst and "systemctl start" not in postinst
    finally:
        shutil.rmtree(control)
    shipped = (ROOT / "packaging" / "systemd" / "zlayer.service").read_text()
    extract = f"dpkg-deb --fsys-tarfile {deb} | tar -xO ./usr/lib/systemd/system/zlayer.service"
    unit = _ok(subprocess.run(["sh", "-c", extract], capture_output=True, text=True))
    assert unit == shipped  # the unit `zlayer daemon install` writes, the one packaging/ shows


def test_deb_installs_upgrades_removes_and_purges_in_a_debian_root(
    linux_packages: dict[str, str], debian_root: Path
) -> None:
    root = debian_root
    shutil.copy(linux_packages["deb"], root / "tmp" / "zlayer.deb")
    shutil.copy(linux_packages["deb_upgrade"], root / "tmp" / "zlayer-upgrade.deb")
    shutil.copy(ROOT / "examples" / "hello.zlayer.yml", root / "tmp" / "hello.zlayer.yml")
    _ok(_chroot(root, "dpkg", "-i", "/tmp/zlayer.deb"))
    assert _ok(_chroot(root, "zlayer", "--version")).strip() == "zlayer 0.1.0"
    assert "hello" in _ok(_chroot(root, "zlayer", "validate", "/tmp/hello.zlayer.yml"))
    bad = _chroot(root, "sh", "-c", "printf 'version: v1\\ndeployment: x\\nservices:\\n  w: {image: \"\"}\\n' >"
                  " /tmp/bad.yml && zlayer validate /tmp/bad.yml")  # fmt: skip
    assert bad.returncode != 0 and "/tmp/bad.yml:4" in bad.stderr and "Traceback" not in bad.stderr
    # enabled for the next boot, not started now; the data and log dirs exist, closed to other users
    wants = root / "etc/systemd/system/multi-user.target.wants/zlayer.service"
    assert wants.is_symlink() and str(wants.readlink()).endswith("/systemd/system/zlayer.service")
    assert (root / "var/lib/zlayer").stat().st_mode & 0o777 == 0o711
    assert (root / "var/log/zlayer").stat().st_mode & 0o777 == 0o700
    assert list((root / "usr/lib/zlayer").rglob("__pycache__")), "postinst compiles the bytecode once"
    # an upgrade keeps the data dir and the operator's edits of the conffile
    (root / "var/lib/zlayer/state-kept").write_text("data")
    env = root / "etc/zlayer/zlayer.env"
    env.write_text(env.read_text() + "ZLAYER_API_BIND=127.0.0.1:3669\n")
    _ok(_chroot(root, "dpkg", "--force-confold", "-i", "/tmp/zlayer-upgrade.deb"))
    assert "0.1.0-2" in _ok(_chroot(root, "dpkg-query", "-W", "zlayer"))
    assert (root / "var/lib/zlayer/state-kept").read_text() == "data"
    assert "ZLAYER_API_BIND=127.0.0.1:3669" in env.read_text()
    # remove keeps data and configuration; purge deletes them
    _ok(_chroot(root, "dpkg", "-r", "zlayer"))
    assert not (root / "usr/bin/zlayer").exists() and not wants.exists() and not (root / "usr/lib/zlayer").exists()
    assert (root / "var/lib/zlayer/state-kept").exists() and env.exists()
    _ok(_chroot(root, "dpkg", "-P", "zlayer"))
    assert not (root / "var/lib/zlayer").exists() and not (root / "etc/zlayer").exists()
    assert not (root / "var/log/zlayer").exists()


def test_rpm_reads_back_and_installs_into_a_scratch_root(linux_packages: dict[str, str], debian_root: Path) -> None:
    rpm = linux_packages["rpm"]
    files = _ok(subprocess.run(["rpm", "-qpl", rpm], capture_output=True, text=True)).split()
    for path in ("/usr/bin/zlayer", "/usr/lib/systemd/system/zlayer.service", "/etc/zlayer/zlayer.env",
                 "/usr/share/man/man1/zlayer.1.gz", "/usr/share/bash-completion/completions/zlayer"):  # fmt: skip
        assert path in files, path
    assert any(f.endswith("/zlayer/_bin/zlayer-shim") for f in files)
    scripts = _ok(subprocess.run(["rpm", "-qp", "--scripts", rpm], capture_output=True, text=True))
    assert "postinstall scriptlet" in scripts and "systemctl enable zlayer.service" in scripts
    assert "preuninstall scriptlet" in scripts and "systemctl stop zlayer.service" in scripts
    config = _ok(subprocess.run(["rpm", "-qpc", rpm], capture_output=True, text=True)).split()
    assert config == ["/etc/zlayer/zlayer.env"]
    # a scratch root of its own (a copy of the Debian root: rpm's scriptlets need a shell and python3.11 there)
    scratch = debian_root.parent / "rpmroot"
    shutil.rmtree(scratch, ignore_errors=True)
    # cp -a copies /dev's nodes as nodes: shutil.copytree would read /dev/full and /dev/zero as endless files
    subprocess.run(["cp", "-a", "--one-file-system", str(debian_root), str(scratch)], check=True, timeout=600)
    try:
        _ok(subprocess.run(["rpm", "-i", "--nodeps", "--root", str(scratch), rpm], capture_output=True, text=True,
                           timeout=600))  # fmt: skip
        assert _ok(_chroot(scratch, "zlayer", "--version")).strip() == "zlayer 0.1.0"
        assert (scratch / "etc/systemd/system/multi-user.target.wants/zlayer.service").is_symlink()
        _ok(subprocess.run(["rpm", "-e", "--nodeps", "--root", str(scratch), "zlayer"], capture_output=True, text=True,
                           timeout=600))  # fmt: skip
        assert not (scratch / "usr/bin/zlayer").exists() and (scratch / "var/lib/zlayer").exists()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
