"""The L7 data-plane tests again, against an AddressSanitizer build of csrc/proxy/ (clang)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

pytestmark = [pytest.mark.peer, pytest.mark.slow]


def test_l7_tests_pass_under_address_sanitizer(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update(
        CC="clang",
        LDSHARED="clang -shared",
        CFLAGS="-fsanitize=address -fno-omit-frame-pointer -g",
        LDFLAGS="-fsanitize=address",
        ZLAYER_BUILD_ONLY="proxy",
    )
    build = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "-q",
            "build_ext",
            "--build-lib",
            str(tmp_path / "lib"),
            "--build-temp",
            str(tmp_path / "tmp"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    so = next((tmp_path / "lib" / "zlayer" / "proxy").glob("_l7*.so"))
    runtime = subprocess.run(
        ["clang", "-print-file-name=libclang_rt.asan-x86_64.so"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert Path(runtime).exists(), f"clang's ASan runtime is missing: {runtime} (install libclang-rt-14-dev)"
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    run_env.update(
        LD_PRELOAD=runtime,
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
        ZLAYER_L7_SO=str(so),
    )
    here = Path(__file__).parent
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(here / "test_http.py"),
            str(here / "test_manager_l7.py"),
            str(here / "test_websocket.py"),
            str(here / "test_tls.py"),
        ],
        cwd=ROOT,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = res.stdout + res.stderr
    assert "AddressSanitizer" not in out, out[-6000:]
    assert res.returncode == 0, out[-6000:]
    assert " passed" in out and " failed" not in out
