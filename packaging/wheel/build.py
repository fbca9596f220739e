"""Build zlayer's sdist and platform wheel, check that the wheel holds every native part, and repair it into a
manylinux wheel with the lowest tag its C allows.

    python packaging/wheel/build.py [--out DIST]

Steps: ``python -m build`` (the wheel is built from the sdist, which proves the sdist is complete); every extension
module and helper executable that a ``csrc/*/native.toml`` declares must be in the wheel, or the build fails (a
package never ships without its shim); ``auditwheel repair`` copies the shared libraries the extensions link
(OpenSSL, nghttp2) into the wheel and gives it the manylinux tag ``auditwheel show`` computes — the lowest the glibc
symbols we use allow. The same recipe makes the arm64 wheel on an arm64 machine (see packaging/README.md).
Prints one JSON object on its last line: the sdist, the plain wheel, the manylinux wheel, its tag and size."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def expected_members() -> list[str]:
    """Paths inside the wheel that the native manifests promise (extension modules as prefixes of their .so)."""
    out = []
    for manifest in sorted(ROOT.glob("csrc/*/native.toml")):
        spec = tomllib.loads(manifest.read_text())
        out += [ext["module"].replace(".", "/") + "." for ext in spec.get("extension", [])]
        out += [f"zlayer/_bin/{exe['name']}" for exe in spec.get("executable", [])]
    return out


def check_wheel(wheel: Path) -> None:
    """Fail unless every native part is in ``wheel``, executables executable, and no build by-product came along."""
    with zipfile.ZipFile(wheel) as zf:
        infos = {i.filename: i for i in zf.infolist()}
    missing = []
    for want in expected_members():
        if want.endswith("."):
            if not any(n.startswith(want) and n.endswith(".so") for n in infos):
                missing.append(want + "*.so")
        elif want not in infos:
            missing.append(want)
        elif not (infos[want].external_attr >> 16) & 0o100:
            raise SystemExit(f"{wheel.name}: {want} is not executable in the wheel")
    if missing:
        raise SystemExit(f"{wheel.name} lacks native parts: {', '.join(missing)} — refusing to ship it")
    stray = [n for n in infos if n.startswith("zlayer/") and n.endswith((".c", ".o"))]
    if stray:
        raise SystemExit(f"{wheel.name} carries build by-products: {', '.join(stray[:5])}")


def lowest_tag(wheel: Path) -> str:
    show = subprocess.run(["auditwheel", "show", str(wheel)], capture_output=True, text=True, check=True).stdout
    tags = re.findall(r'"((?:manylinux|musllinux)_\d+_\d+_\w+)"', " ".join(show.split()))
    if not tags:
        raise SystemExit(f"auditwheel finds no manylinux tag for {wheel.name}:\n{show}")
    return tags[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder [default: dist/]")
    args = ap.parse_args(argv)
    out: Path = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env_note = "ZLAYER_BUILD_ONLY is set: a partial build must not become a package"
    if "ZLAYER_BUILD_ONLY" in __import__("os").environ:
        raise SystemExit(env_note)
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], check=True,
                   stdout=sys.stderr)  # fmt: skip
    (sdist,) = out.glob("zlayer-*.tar.gz")
    (wheel,) = out.glob("zlayer-*.whl")
    check_wheel(wheel)
    tag = lowest_tag(wheel)
    house = out / "wheelhouse"
    subprocess.run(["auditwheel", "repair", "--plat", tag, "--strip", "-w", str(house), str(wheel)], check=True,
                   stdout=sys.stderr)  # fmt: skip
    (repaired,) = house.glob("zlayer-*.whl")
    check_wheel(repaired)
    print(json.dumps({"sdist": str(sdist), "wheel": str(wheel), "manylinux_wheel": str(repaired), "platform_tag": tag,
                      "size_bytes": repaired.stat().st_size}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
