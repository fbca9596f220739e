"""The manylinux wheel an operator installs: it holds every native part (the static zlayer-shim, the proxies, the
libraries they link), and a fresh virtual environment on a machine with no compiler gets a zlayer that runs the
README's quickstart for real."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.fixtures.packaging import ROOT, make_venv, path_without_compilers

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.peer]


def test_wheel_is_manylinux_and_holds_every_native_part(built_wheel: dict[str, str]) -> None:
    wheel = Path(built_wheel["manylinux_wheel"])
    assert "-manylinux_2_" in wheel.name and wheel.name.endswith(("_x86_64.whl", "_aarch64.whl")), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        shim = zf.read("zlayer/_bin/zlayer-shim")
        mode = zf.getinfo("zlayer/_bin/zlayer-shim").external_attr >> 16
    assert shim[:4] == b"\x7fELF" and mode & 0o111
    assert b"/lib64/ld-linux" not in shim and b"/lib/ld-linux" not in shim  # static: no program interpreter
    assert any(n.startswith("zlayer/proxy/_l7.") and n.endswith(".so") for n in names)
    assert any(n.startswith("zlayer/proxy/_l4.") and n.endswith(".so") for n in names)
    assert any(n.startswith("zlayer.libs/libssl") for n in names)  # OpenSSL comes along; the host's may differ
    assert not [n for n in names if n.endswith((".c", ".o"))]
    sdist = subprocess.run(["tar", "tzf", built_wheel["sdist"]], capture_output=True, text=True, check=True).stdout
    assert "/csrc/runtime/" in sdist and "/include/zlayer/shim.h" in sdist and "zlayer/_bin/zlayer-shim" not in sdist


def test_fresh_venv_without_a_compiler_installs_it_and_runs_the_quickstart(
    built_wheel: dict[str, str], tmp_path: Path
) -> None:
    venv_bin = make_venv(tmp_path / "venv")
    path = f"{venv_bin}:{path_without_compilers(tmp_path / 'nocc')}"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "CC", "CXX")}
    env.update(PATH=path, CC="/bin/false", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_BUILD_ISOLATION="0")
    assert subprocess.run(["sh", "-c", "command -v gcc cc clang"], env=env, capture_output=True).returncode != 0
    # only binary wheels: anything that would have to be compiled fails here, as on a node without a toolchain
    r = subprocess.run([str(venv_bin / "pip"), "install", "--only-binary", ":all:", built_wheel["manylinux_wheel"]],
                       env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    version = subprocess.run(["zlayer", "--version"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert version.returncode == 0 and "zlayer" in version.stdout.lower(), version.stderr
    where = subprocess.run(["python3", "-c", "import zlayer; print(zlayer.__file__)"], env=env, capture_output=True,
                           text=True, cwd=tmp_path)  # fmt: skip
    assert where.stdout.startswith(str(tmp_path / "venv")), where.stdout + where.stderr  # the wheel's, not the tree's
    demo = subprocess.run([str(ROOT / "scripts" / "quickstart-demo")], env=env, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL, cwd=tmp_path)  # fmt: skip
    out = demo.stdout + demo.stderr
    assert demo.returncode == 0, out[-4000:]
    assert demo.stdout.count("<h1>Hello from zlayer</h1>") == 2 and demo.stdout.rstrip().endswith("quickstart OK")
    assert "Traceback" not in out
