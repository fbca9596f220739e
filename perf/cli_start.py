"""CLI start-up: medians of `zlayer --version` and `zlayer validate <example>` against a bare `python3 -c pass`.

Runs standalone (`python perf/cli_start.py [--runs N]`); every command is a subprocess of this one process tree.
Last line: one JSON object with the medians (ms) and `version_vs_python`, `validate_vs_python` (targets ≤3, ≤5).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "hello.zlayer.yml"


def zlayer_cmd() -> list[str]:
    exe = shutil.which("zlayer")
    return [exe] if exe else [sys.executable, "-m", "zlayer"]


def median_ms(cmd: list[str], runs: int) -> float:
    subprocess.run(cmd, capture_output=True, check=True)  # warm the page cache
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=25)
    args = ap.parse_args()
    z = zlayer_cmd()
    py = median_ms([sys.executable, "-c", "pass"], args.runs)
    ver = median_ms([*z, "--version"], args.runs)
    val = median_ms([*z, "validate", str(EXAMPLE)], args.runs)
    print(f"python3 -c pass      {py:8.1f} ms", file=sys.stderr)
    print(f"zlayer --version     {ver:8.1f} ms", file=sys.stderr)
    print(f"zlayer validate      {val:8.1f} ms", file=sys.stderr)
    print(
        json.dumps(
            {
                "runs": args.runs,
                "python_ms": round(py, 1),
                "version_ms": round(ver, 1),
                "validate_ms": round(val, 1),
                "version_vs_python": round(ver / py, 2),
                "validate_vs_python": round(val / py, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
