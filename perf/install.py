"""The installed package: wheel size, install time into a fresh virtual environment from local files, and the start
of ``zlayer --version`` from that install against a bare ``python -c pass``.

The wheel is built by ``packaging/wheel/build.py`` (or taken from ``PERF_WHEEL``); its dependencies are downloaded
once into a local folder first, so the timed install reads local files only, as from a mirror or an offline bundle.
Prints one JSON object on its last line: ``wheel_mb``, ``install_s``, ``version_ms``, ``python_ms``,
``version_vs_python`` (target <= 2.5).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = 21


def build_wheel(out: Path) -> Path:
    given = os.environ.get("PERF_WHEEL")
    if given:
        return Path(given)
    r = subprocess.run([sys.executable, str(ROOT / "packaging" / "wheel" / "build.py"), "--out", str(out)],
                       capture_output=True, text=True, check=True)  # fmt: skip
    return Path(json.loads(r.stdout.splitlines()[-1])["manylinux_wheel"])


def timed(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="zlayer-perf-install-") as tmp:
        work = Path(tmp)
        wheel = build_wheel(work / "dist")
        wheel_mb = round(wheel.stat().st_size / 1e6, 2)
        deps = work / "deps"
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:", "-d", str(deps),
                        str(wheel)], check=True)  # fmt: skip
        venv = work / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        install_s = timed([str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--find-links", str(deps),
                           str(wheel)], env)  # fmt: skip
        zl, py = str(venv / "bin" / "zlayer"), str(venv / "bin" / "python")
        timed([zl, "--version"], env)  # warm the page cache and the bytecode
        version, bare = [], []
        for _ in range(RUNS):  # interleaved, so a busy moment of the machine hits both alike
            version.append(timed([zl, "--version"], env))
            bare.append(timed([py, "-c", "pass"], env))
    v, p = statistics.median(version) * 1000, statistics.median(bare) * 1000
    print(json.dumps({"wheel": wheel.name, "wheel_mb": wheel_mb,
                      "install_s": round(install_s, 2), "version_ms": round(v, 1), "python_ms": round(p, 1),
                      "version_vs_python": round(v / p, 2), "runs": RUNS}))  # fmt: skip


if __name__ == "__main__":
    main()
