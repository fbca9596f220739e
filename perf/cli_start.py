"""CLI start-up of a regular install: medians of `zlayer --version` and `zlayer validate <example>` against a bare
`python -c pass` of the same interpreter.

What is measured is the console script that `pip install .` writes (not an editable install, not `python -m`): the
tree's wheel is installed, non-editable, into a temporary venv that finds the dependencies in this Python's
site-packages (nothing is downloaded), and every command runs from there with PYTHONPATH cleared.
Runs standalone (`python perf/cli_start.py [--runs N]`). Last line: one JSON object with the medians (ms) and
`version_vs_python`, `validate_vs_python` (wall time; targets ≤ 2.5, ≤ 4), and the same ratios of CPU time
(`*_cpu_vs_python`), which a busy machine disturbs far less.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "hello.zlayer.yml"


def install(tmp: Path) -> Path:
    """``pip install`` of the wheel that ``pip wheel .`` builds (non-editable, nothing downloaded) into a fresh venv;
    returns the venv's bin directory. The dependencies come from this Python's site-packages through a plain path
    line in a .pth file: as in a user's venv, and without the .pth hooks this machine's site-packages runs at every
    start-up (an editable zlayer's finder, a CA injector) that would slow the baseline down and flatter the ratios."""
    import site

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp / "wheels"), str(ROOT)], check=True, env=clean_env())  # fmt: skip
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    Path(purelib, "zz-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    wheel = next((tmp / "wheels").glob("zlayer-*.whl"))
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   env=clean_env())  # fmt: skip
    return venv / "bin"


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME")}


def run_once(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall ms, CPU ms) of one whole process; CPU (user + system, from wait4) hardly moves when the machine is busy."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = (time.perf_counter() - t) * 1000
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return wall, (usage.ru_utime + usage.ru_stime) * 1000


def medians_ms(cmds: dict[str, list[str]], runs: int, cwd: Path) -> dict[str, tuple[float, float]]:
    """Median wall and CPU time per command; the commands are interleaved round by round so load spikes hit all
    alike."""
    env = clean_env()
    for cmd in cmds.values():
        run_once(cmd, env, cwd)  # warm the page cache
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, cmd in cmds.items():
            times[name].append(run_once(cmd, env, cwd))
    return {name: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for name, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=25)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="zlayer-cli-start-") as tmp:
        bin_dir = install(Path(tmp))
        z = str(bin_dir / "zlayer")
        m = medians_ms(
            {
                "python": [str(bin_dir / "python"), "-c", "pass"],
                "version": [z, "--version"],
                "validate": [z, "validate", str(EXAMPLE)],
            },
            args.runs,
            Path(tmp),
        )
    (py, py_cpu), (ver, ver_cpu), (val, val_cpu) = m["python"], m["version"], m["validate"]
    print(f"python -c pass       {py:8.1f} ms  (cpu {py_cpu:6.1f} ms)", file=sys.stderr)
    print(f"zlayer --version     {ver:8.1f} ms  (cpu {ver_cpu:6.1f} ms)", file=sys.stderr)
    print(f"zlayer validate      {val:8.1f} ms  (cpu {val_cpu:6.1f} ms)", file=sys.stderr)
    print(
        json.dumps(
            {
                "runs": args.runs,
                "python_ms": round(py, 1),
                "version_ms": round(ver, 1),
                "validate_ms": round(val, 1),
                "version_vs_python": round(ver / py, 2),
                "validate_vs_python": round(val / py, 2),
                "version_cpu_vs_python": round(ver_cpu / py_cpu, 2),
                "validate_cpu_vs_python": round(val_cpu / py_cpu, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
