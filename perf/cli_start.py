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


def medians_ms(cmds: dict[str, list[str]], runs: int) -> dict[str, float]:
    """Median wall time per command; the commands are interleaved round by round so load spikes hit all alike."""
    for cmd in cmds.values():
        subprocess.run(cmd, capture_output=True, check=True)  # warm the page cache
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, cmd in cmds.items():
            t = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            times[name].append((time.perf_counter() - t) * 1000)
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=25)
    args = ap.parse_args()
    z = zlayer_cmd()
    m = medians_ms(
        {
            "python": [sys.executable, "-c", "pass"],
            "version": [*z, "--version"],
            "validate": [*z, "validate", str(EXAMPLE)],
        },
        args.runs,
    )
    py, ver, val = m["python"], m["version"], m["validate"]
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
