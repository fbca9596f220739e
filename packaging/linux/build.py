"""Build zlayer's ``.deb`` and ``.rpm`` from its manylinux wheel.

    python packaging/linux/build.py --wheel dist/wheelhouse/zlayer-…-manylinux_2_34_x86_64.whl [--out DIR]
                                    [--deb] [--rpm] [--release N]

Both packages hold the same tree, staged once:

- ``/usr/lib/zlayer``: a virtual environment over the distribution's ``/usr/bin/python3.11`` holding the wheel and
  every dependency (binary wheels only), so the node needs nothing from PyPI; ``/usr/bin/zlayer`` runs it.
- ``/usr/lib/systemd/system/zlayer.service``: the unit ``zlayer daemon install`` writes (zlayer/hostservice.py),
  ``/etc/zlayer/zlayer.env`` (a conffile: the daemon's environment), shell completions for bash, zsh and fish, and
  man pages made from the CLI (zlayer/cli/manpages.py).
- maintainer scripts: install enables the service but does not start it; an upgrade restarts a running daemon (its
  containers keep running: ``KillMode=process``); removal stops and disables it and keeps ``/var/lib/zlayer``;
  purge (deb) deletes the data, logs and configuration.

The daemon runs as root (it makes namespaces, cgroups and mounts), so no system user is made. Prints one JSON object
on its last line naming the packages.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = "python3.11"  # the wheel's ABI (cp311) and the interpreter the package depends on
DESCRIPTION = "container orchestration from one *.zlayer.yml"
LONG = ("zlayer runs containers from any OCI registry with real isolation behind a built-in L4/L7 proxy, on one "
        "node or a cluster, from the same spec, CLI and REST API as ZLayer.")  # fmt: skip

ENV_FILE = """\
# Environment of the zlayer daemon (zlayer.service reads this file; restart the service after a change).
# ZLAYER_API_BIND=0.0.0.0:3669
# ZLAYER_METRICS_BIND=127.0.0.1:9090
# ZLAYER_DEFAULT_REGISTRY=
# ZLAYER_MAX_LAYER_SIZE=64Gi
"""

LAUNCHER = """#!/usr/lib/zlayer/bin/python
# zlayer, installed by the distribution package: the virtual environment in /usr/lib/zlayer holds it.
import sys

from zlayer.cli import main

sys.exit(main())
"""

# The same steps for both package formats; $1 is each format's own first argument, mapped by the wrappers below.
ENABLE = """\
install -d -m 0711 /var/lib/zlayer
install -d -m 0700 /var/log/zlayer
/usr/lib/zlayer/bin/python -m compileall -q -j 0 /usr/lib/zlayer/lib >/dev/null 2>&1 || true
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
"""
FIRST_INSTALL = """\
if command -v systemctl >/dev/null 2>&1; then
    systemctl enable zlayer.service >/dev/null 2>&1 || true
fi
if [ ! -e /etc/systemd/system/multi-user.target.wants/zlayer.service ]; then
    install -d /etc/systemd/system/multi-user.target.wants
    ln -sf /usr/lib/systemd/system/zlayer.service /etc/systemd/system/multi-user.target.wants/zlayer.service
fi
"""
UPGRADE = """\
if [ -d /run/systemd/system ]; then systemctl try-restart zlayer.service || true; fi
"""
STOP = """\
if [ -d /run/systemd/system ]; then systemctl stop zlayer.service || true; fi
rm -f /etc/systemd/system/multi-user.target.wants/zlayer.service
"""
DROP_BYTECODE = """\
find /usr/lib/zlayer -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
"""
PURGE = """\
if [ -d /var/lib/zlayer ]; then
    grep -o " /var/lib/zlayer[^ ]*" /proc/self/mounts 2>/dev/null | sort -r |
        while read -r m; do umount -l "$m" || true; done
fi
rm -rf /var/lib/zlayer /var/log/zlayer /etc/zlayer /var/run/zlayer
"""


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, text=True, **kw)  # type: ignore[call-overload, no-any-return]


def _staged(site: Path, code: str, *args: str) -> str:
    """Run ``code`` with the staged packages first on the path (the package's own zlayer, not this tree's)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    argv = [sys.executable, "-c", f"import sys; sys.path.insert(0, sys.argv.pop(1)); {code}", str(site), *args]
    return _run(argv, capture_output=True, env=env).stdout


def version_of(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def stage(wheel: Path, root: Path) -> None:
    """Lay out the installed tree under ``root``."""
    venv = root / "usr/lib/zlayer"
    site = venv / f"lib/{PYTHON}/site-packages"
    site.mkdir(parents=True)
    (venv / "bin").mkdir()
    (venv / "bin/python").symlink_to(f"/usr/bin/{PYTHON}")
    (venv / "bin/python3").symlink_to("python")
    ver = subprocess.run([f"/usr/bin/{PYTHON}", "-c", "import platform; print(platform.python_version())"],
                         capture_output=True, text=True).stdout.strip() or "3.11"  # fmt: skip
    (venv / "pyvenv.cfg").write_text(f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {ver}\n")
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-compile", "--only-binary", ":all:",
          "--no-warn-script-location", "--python-version", "3.11", "--implementation", "cp", "--target", str(site),
          str(wheel)], env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})  # fmt: skip
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts with the build machine's paths in them
    for pyc in list(site.rglob("__pycache__")):
        shutil.rmtree(pyc, ignore_errors=True)
    launcher = root / "usr/bin/zlayer"
    launcher.parent.mkdir(parents=True)
    launcher.write_text(LAUNCHER)
    launcher.chmod(0o755)
    unit = root / "usr/lib/systemd/system/zlayer.service"
    unit.parent.mkdir(parents=True)
    make_unit = "sys.stdout.write(systemd_unit(ServiceOptions(command=('/usr/bin/zlayer',))))"
    unit.write_text(_staged(site, f"from zlayer.hostservice import ServiceOptions, systemd_unit; {make_unit}"))
    etc = root / "etc/zlayer"
    etc.mkdir(parents=True)
    (etc / "zlayer.env").write_text(ENV_FILE)
    for shell, rel in (("bash", "usr/share/bash-completion/completions/zlayer"),
                       ("zsh", "usr/share/zsh/vendor-completions/_zlayer"),
                       ("fish", "usr/share/fish/vendor_completions.d/zlayer.fish")):  # fmt: skip
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(_staged(site, "from zlayer.cli import main; sys.argv[0] = 'zlayer'; sys.exit(main())",
                                "completions", shell))  # fmt: skip
    man = root / "usr/share/man/man1"
    with tempfile.TemporaryDirectory() as tmp:
        _staged(site, "from zlayer.cli.manpages import main; sys.exit(main(sys.argv[1:]))", tmp)
        man.mkdir(parents=True)
        for page in sorted(Path(tmp).iterdir()):
            with gzip.GzipFile(man / f"{page.name}.gz", "wb", mtime=0) as gz:
                gz.write(page.read_bytes())
    doc = root / "usr/share/doc/zlayer"
    doc.mkdir(parents=True)
    shutil.copy(ROOT / "README.md", doc / "README.md")
    for d in (p for p in root.rglob("*") if p.is_dir()):
        d.chmod(0o755)


def _installed_kib(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink()) // 1024


def build_deb(root: Path, version: str, release: str, out: Path, arch: str) -> Path:
    deb_arch = {"x86_64": "amd64", "aarch64": "arm64"}[arch]
    control = root / "DEBIAN"
    control.mkdir()
    (control / "control").write_text(
        f"Package: zlayer\nVersion: {version}-{release}\nArchitecture: {deb_arch}\nMaintainer: zlayer developers "
        f"<zlayer@localhost>\nInstalled-Size: {_installed_kib(root)}\nDepends: {PYTHON}, iproute2, nftables\n"
        f"Recommends: busybox-static\nSection: admin\nPriority: optional\nHomepage: "
        f"https://github.com/BlackLeafDigital/ZLayer\nDescription: {DESCRIPTION}\n {LONG}\n"
    )
    (control / "conffiles").write_text("/etc/zlayer/zlayer.env\n")
    scripts = {
        "postinst": f'case "$1" in\nconfigure)\n{ENABLE}if [ -z "$2" ]; then\n{FIRST_INSTALL}else\n{UPGRADE}fi\n'
                    ';;\nesac\n',
        "prerm": f'case "$1" in\nremove|deconfigure)\n{STOP};;\nesac\n{DROP_BYTECODE}',
        "postrm": f'case "$1" in\nremove)\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n'
                  f';;\npurge)\n{PURGE};;\nesac\n',
    }  # fmt: skip
    for name, body in scripts.items():
        path = control / name
        path.write_text(f"#!/bin/sh\nset -e\n{body}exit 0\n")
        path.chmod(0o755)
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink() and control not in p.parents]
    sums = [f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(root)}" for p in files]  # dpkg's format
    (control / "md5sums").write_text("\n".join(sums) + "\n")
    deb = out / f"zlayer_{version}-{release}_{deb_arch}.deb"
    _run(["dpkg-deb", "--root-owner-group", "-Zzstd", "--build", str(root), str(deb)], capture_output=True)
    shutil.rmtree(control)
    return deb


def build_rpm(root: Path, version: str, release: str, out: Path, arch: str) -> Path:
    top = out / "rpmbuild"
    for d in ("BUILD", "RPMS", "SOURCES", "SPECS", "SRPMS"):
        (top / d).mkdir(parents=True, exist_ok=True)
    files = []
    for p in sorted(root.rglob("*")):
        rel = "/" + str(p.relative_to(root))
        if p.is_dir() and not p.is_symlink():
            if rel.startswith(("/usr/lib/zlayer", "/etc/zlayer", "/usr/share/doc/zlayer")):
                files.append(f"%dir {rel}")
            continue
        files.append(f"%config(noreplace) {rel}" if rel.startswith("/etc/") else rel)
    spec = f"""\
Name: zlayer
Version: {version}
Release: {release}
Summary: {DESCRIPTION}
License: Apache-2.0
URL: https://github.com/BlackLeafDigital/ZLayer
Requires: python(abi) = 3.11
Requires: iproute
Requires: nftables
AutoReqProv: no
%global __os_install_post %{{nil}}
%global debug_package %{{nil}}
%global _build_id_links none
%global _binary_payload w3.zstdio

%description
{LONG}

%install
cp -a {root}/. %{{buildroot}}/

%post
{ENABLE}if [ "$1" -eq 1 ]; then
{FIRST_INSTALL}else
{UPGRADE}fi

%preun
if [ "$1" -eq 0 ]; then
{STOP}fi
{DROP_BYTECODE}
%postun
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi

%files
{chr(10).join(files)}
"""
    spec_file = top / "SPECS" / "zlayer.spec"
    spec_file.write_text(spec)
    _run(["rpmbuild", "-bb", "--define", f"_topdir {top}", "--target", arch, str(spec_file)], capture_output=True)
    (rpm,) = (top / "RPMS" / arch).glob("zlayer-*.rpm")
    dest = out / rpm.name
    shutil.move(rpm, dest)
    shutil.rmtree(top)
    return dest


def wheel_arch(wheel: Path) -> str:
    tag = wheel.name.removesuffix(".whl").split("-")[-1]
    for arch in ("x86_64", "aarch64"):
        if tag.endswith(arch):
            return arch
    raise SystemExit(f"{wheel.name}: not a Linux x86_64 or aarch64 wheel")


def check_wheel(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        if "zlayer/_bin/zlayer-shim" not in zf.namelist():
            raise SystemExit(f"{wheel.name} has no zlayer-shim: refusing to package it (build it with "
                             "packaging/wheel/build.py)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", type=Path, required=True, help="the manylinux wheel (packaging/wheel/build.py)")
    ap.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder [default: dist/]")
    ap.add_argument("--release", default="1", help="package release number [default: 1]")
    ap.add_argument("--deb", action="store_true", help="build the .deb (default: both)")
    ap.add_argument("--rpm", action="store_true", help="build the .rpm (default: both)")
    args = ap.parse_args(argv)
    wheel: Path = args.wheel.resolve()
    check_wheel(wheel)
    arch, version = wheel_arch(wheel), version_of(wheel)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    both = not (args.deb or args.rpm)
    made: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="zlayer-pkg-") as tmp:
        root = Path(tmp) / "root"
        stage(wheel, root)
        if args.deb or both:
            made["deb"] = str(build_deb(root, version, args.release, out, arch))
        if args.rpm or both:
            made["rpm"] = str(build_rpm(root, version, args.release, out, arch))
    sums = [f"{hashlib.sha256(Path(p).read_bytes()).hexdigest()}  {Path(p).name}" for p in made.values()]
    (out / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    print(json.dumps(made))
    return 0


if __name__ == "__main__":
    sys.exit(main())
