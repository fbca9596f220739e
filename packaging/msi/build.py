"""Build zlayer's Windows installer (``.msi``) on Linux with ``wixl`` (msitools).

    python packaging/msi/build.py [--out DIR]

What a Windows build of zlayer is: the CLI and SDK (the pure-Python files of the ``zlayer`` package; the daemon is
Linux-only and runs under WSL2 there) plus the ``zlayer`` service ZLayer registers. The installer holds:

- ``[ProgramFiles64Folder]zlayer\\lib\\zlayer\\…``: every ``.py`` file of the package (no C extensions, no shim);
- the ``zlayer`` service, registered from :func:`zlayer.hostservice.windows_service` (one definition: the
  ServiceInstall/ServiceControl rows are generated from it, never written by hand);
- a LaunchCondition on Python 3.11 (``HKLM\\SOFTWARE\\Python\\PythonCore\\3.11\\InstallPath``), the install
  folder on the system PATH, and an UpgradeCode so a newer version replaces an older one (major upgrade).

Prints one JSON object on its last line naming the package.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from xml.sax.saxutils import quoteattr

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from zlayer import __version__  # noqa: E402
from zlayer.hostservice import ServiceOptions, windows_service  # noqa: E402

UPGRADE_CODE = "6B1F0C2E-5A4D-4C8E-9E1A-2F7C3D9B8A41"  # never changes: every version upgrades the one before
NAMESPACE = uuid.UUID(UPGRADE_CODE)
LAUNCHER = "zlayer.exe"
PYTHON_KEY = r"SOFTWARE\Python\PythonCore\3.11\InstallPath"
CC = "x86_64-w64-mingw32-gcc"
START = {"auto": "auto", "demand": "demand", "disabled": "disabled"}


class BuildError(Exception):
    """What stops the build, said so that the user can act on it."""


def guid(name: str) -> str:
    """Component GUIDs stable across builds (a component's GUID must not change while its files stay)."""
    return str(uuid.uuid5(NAMESPACE, name)).upper()


def ident(kind: str, rel: str) -> str:
    return kind + "_" + hashlib.sha1(rel.encode()).hexdigest()[:16]


def package_files(source: Path) -> list[Path]:
    pkg = source / "zlayer"
    files = sorted(p for p in pkg.rglob("*.py") if "__pycache__" not in p.parts)
    if not (pkg / "__main__.py").is_file() or not (pkg / "cli").is_dir():
        raise BuildError(f"{pkg}: not the zlayer package (no __main__.py or cli/)")
    return files


def service_rows() -> dict[str, object]:
    """The service as windows_service() defines it, run by the launcher the MSI installs."""
    svc = windows_service(ServiceOptions(command=(LAUNCHER,)))
    line = str(svc["binary_path"])
    if not line.startswith(LAUNCHER + " "):
        raise BuildError(f"windows_service(): binary_path {line!r} does not start with {LAUNCHER}")
    return {**svc, "arguments": line[len(LAUNCHER) + 1 :]}


def build_launcher(out: Path) -> Path:
    if shutil.which(CC) is None:
        raise BuildError(f"{CC} not found: install Debian's gcc-mingw-w64-x86-64 to build zlayer.exe")
    exe = out / LAUNCHER
    cmd = [
        CC,
        "-municode",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-s",
        "-o",
        str(exe),
        str(ROOT / "packaging" / "msi" / "launcher.c"),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"building {LAUNCHER} failed:\n{r.stderr}")
    return exe


def wxs(source: Path, files: list[Path], launcher: Path) -> str:
    svc = service_rows()
    dirs: dict[str, list[str]] = {}
    comps: list[str] = []
    for f in files:
        rel = f.relative_to(source).as_posix()
        parent = rel.rsplit("/", 1)[0]
        cid = ident("c", rel)
        comps.append(cid)
        dirs.setdefault(parent, []).append(
            f'<Component Id="{cid}" Guid="{guid(rel)}" Win64="yes">'
            f'<File Id="{ident("f", rel)}" Name="{f.name}" Source={quoteattr(rel_to_root(f))} KeyPath="yes"/>'
            "</Component>"
        )

    def tree(prefix: str) -> str:
        out = []
        children = sorted({d[len(prefix) + 1 :].split("/")[0] for d in dirs if d.startswith(prefix + "/")})
        for name in children:
            sub = f"{prefix}/{name}"
            out.append(
                f'<Directory Id="{ident("d", sub)}" Name="{name}">{"".join(dirs.get(sub, []))}{tree(sub)}</Directory>'
            )
        return "".join(out)

    lib = f'<Directory Id="{ident("d", "zlayer")}" Name="zlayer">{"".join(dirs["zlayer"])}{tree("zlayer")}</Directory>'
    refs = "".join(f'<ComponentRef Id="{c}"/>' for c in comps)
    return f"""<?xml version="1.0" encoding="utf-8"?>
<Wix xmlns="http://schemas.microsoft.com/wix/2006/wi">
  <Product Id="*" Name="zlayer" Language="1033" Version="{msi_version(__version__)}" Manufacturer="zlayer"
           UpgradeCode="{UPGRADE_CODE}">
    <Package InstallerVersion="500" Compressed="yes" InstallScope="perMachine"
             Description="zlayer CLI and service" Comments="zlayer {__version__}"/>
    <Media Id="1" Cabinet="zlayer.cab" EmbedCab="yes"/>
    <MajorUpgrade DowngradeErrorMessage="A newer zlayer is already installed."/>
    <Property Id="PYTHON311">
      <RegistrySearch Id="Python311" Root="HKLM" Key="{PYTHON_KEY}" Type="raw" Win64="yes"/>
    </Property>
    <Condition Message="zlayer needs 64-bit Python 3.11 installed for all users (HKLM\\{PYTHON_KEY})."
      >Installed OR PYTHON311</Condition>
    <Property Id="ARPURLINFOABOUT" Value="https://github.com/BlackLeafDigital/ZLayer"/>
    <Directory Id="TARGETDIR" Name="SourceDir">
      <Directory Id="ProgramFiles64Folder">
        <Directory Id="INSTALLDIR" Name="zlayer">
          <Component Id="Launcher" Guid="{guid(LAUNCHER)}" Win64="yes">
            <File Id="zlayer.exe" Name="{LAUNCHER}" Source={quoteattr(rel_to_root(launcher))} KeyPath="yes"/>
            <ServiceInstall Id="Service" Name={quoteattr(str(svc["name"]))}
                            DisplayName={quoteattr(str(svc["display_name"]))}
                            Description={quoteattr(str(svc["description"]))} Type="ownProcess"
                            Start="{START[str(svc["start_type"])]}" ErrorControl="normal"
                            Account={quoteattr(str(svc["account"]))}
                            Arguments={quoteattr(str(svc["arguments"]))} Vital="yes"/>
            <ServiceControl Id="ServiceControl" Name={quoteattr(str(svc["name"]))} Stop="both" Remove="uninstall"
                            Wait="yes"/>
          </Component>
          <Directory Id="LIBDIR" Name="lib">{lib}</Directory>
        </Directory>
      </Directory>
    </Directory>
    <Feature Id="Main" Title="zlayer" Level="1">
      <ComponentRef Id="Launcher"/>{refs}
    </Feature>
  </Product>
</Wix>
"""


def idt(name: str, columns: list[tuple[str, str]], keys: list[str], rows: list[list[str]]) -> str:
    """A table in msitools' import format (msibuild -i): names, types, then the table and its key columns."""
    lines = ["\t".join(c for c, _ in columns), "\t".join(t for _, t in columns), "\t".join([name, *keys])]
    return "\r\n".join([*lines, *("\t".join(r) for r in rows)]) + "\r\n"


def add_tables(msi: Path, tmp: Path, svc: dict[str, object]) -> None:
    """What wixl 0.101 has no element for, added as tables: the Python 3.11 registry locator, the install folder
    on the system PATH (Environment),
    the service's restart-on-failure actions (MsiServiceConfigFailureActions), and the actions that apply them."""
    failures = svc["failure_actions"]
    assert isinstance(failures, list)
    codes = {"none": "0", "restart": "1", "reboot": "2", "run": "3"}
    tables = {
        # wixl 0.101 writes the AppSearch row of a RegistrySearch but not its locator: HKLM (2), raw value of the
        # key's default (2) in the 64-bit view (16)
        "RegLocator": idt("RegLocator", [("Signature_", "s72"), ("Root", "i2"), ("Key", "s255"), ("Name", "S255"),
                                         ("Type", "I2")], ["Signature_"], [["Python311", "2", PYTHON_KEY, "", "18"]]),
        "Environment": idt("Environment", [("Environment", "s72"), ("Name", "l255"), ("Value", "L255"),
                                           ("Component_", "s72")], ["Environment"],
                           [["PATH", "=-*PATH", "[~];[INSTALLDIR]", "Launcher"]]),
        "MsiServiceConfigFailureActions": idt(
            "MsiServiceConfigFailureActions",
            [("MsiServiceConfigFailureActions", "s72"), ("Name", "s255"), ("Event", "i2"), ("ResetPeriod", "I4"),
             ("RebootMessage", "L255"), ("Command", "L255"), ("Actions", "S255"), ("DelayActions", "S255"),
             ("Component_", "s72")], ["MsiServiceConfigFailureActions"],
            [["ServiceFailure", str(svc["name"]), "1", str(svc["failure_reset_s"]), "", "",
              "[~]".join(codes[a["action"]] for a in failures), "[~]".join(str(a["delay_ms"]) for a in failures),
              "Launcher"]]),
    }  # fmt: skip
    seq = subprocess.run(["msiinfo", "export", str(msi), "InstallExecuteSequence"], capture_output=True, text=True,
                         check=True).stdout.rstrip("\r\n")  # fmt: skip
    tables["InstallExecuteSequence"] = seq.replace("\n", "\r\n") + "\r\n" + "\r\n".join(
        ["RemoveEnvironmentStrings\t\t3300", "WriteEnvironmentStrings\t\t5200",
         "MsiConfigureServices\tVersionNT >= 600\t5850"]) + "\r\n"  # fmt: skip
    for name, text in tables.items():
        path = tmp / f"{name}.idt"
        path.write_bytes(text.encode())
        r = subprocess.run(["msibuild", str(msi), "-i", str(path)], capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError(f"msibuild could not add the {name} table: {r.stderr.strip()}")


def rel_to_root(path: Path) -> str:
    """wixl reads Source paths relative to its working folder (it is run from /)."""
    return str(path.resolve().relative_to("/"))


def msi_version(v: str) -> str:
    """MSI ProductVersion: up to three dotted numbers (255.255.65535)."""
    nums = [int(n) for n in re.findall(r"\d+", v.split("+")[0])[:3]]
    return ".".join(str(n) for n in [*nums, 0, 0, 0][:3])


def build(out: Path, source: Path) -> Path:
    if shutil.which("wixl") is None:
        raise BuildError("wixl not found: install Debian's wixl (and msitools) to build the .msi")
    files = package_files(source)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zlayer-msi-") as tmp:
        launcher = build_launcher(Path(tmp))
        src = Path(tmp) / "zlayer.wxs"
        src.write_text(wxs(source, files, launcher))
        msi = out / f"zlayer-{__version__}-x64.msi"
        r = subprocess.run(
            ["wixl", "-a", "x64", "-o", str(msi.resolve()), str(src)], capture_output=True, text=True, cwd="/"
        )
        if r.returncode != 0:
            raise BuildError(f"wixl failed on {src.name}:\n{r.stderr}")
        add_tables(msi, Path(tmp), service_rows())
    return msi


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "dist")
    ap.add_argument("--source", type=Path, default=ROOT, help="folder holding the zlayer package")
    args = ap.parse_args()
    try:
        msi = build(args.out, args.source)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"msi": str(msi), "version": __version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
