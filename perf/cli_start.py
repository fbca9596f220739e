"""CLI start-up cost: ``zlayer --version`` and ``zlayer validate <example>`` against a bare ``python3 -c pass``.

Every figure is the median wall time of N subprocess runs (default 25, ``--runs N``), interleaved so that load from
other work on the machine hits all three alike. ``zlayer`` is the console script next to this interpreter (not a
pyenv/shell shim, which would add its own start-up to every run). Targets: ``version_vs_python`` ≤ 3,
``validate_vs_python`` ≤ 5. Run: ``python perf/cli_start.py``; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "hello.zlayer.yml"


def zlayer_command() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m zlayer``."""
    script = Path(sys.executable).parent / "zlayer"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("zlayer")
    if found and "shims" not in found:
        return [found]
    return [sys.executable, "-m", "zlayer"]


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-600:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--example", type=Path, default=EXAMPLE)
    args = parser.parse_args()
    if args.runs < 20:
        parser.error("--runs must be at least 20")

    zl = zlayer_command()
    cases = {
        "python": [sys.executable, "-c", "pass"],
        "version": [*zl, "--version"],
        "validate": [*zl, "validate", str(args.example)],
    }
    for argv in cases.values():  # warm the page cache and any bytecode caches once
        timed(argv)
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.runs):
        for name, argv in cases.items():
            samples[name].append(timed(argv))

    med = {k: statistics.median(v) for k, v in samples.items()}
    for k, v in samples.items():
        print(f"{k:9s} median {med[k] * 1000:7.1f} ms  min {min(v) * 1000:7.1f} ms  max {max(v) * 1000:7.1f} ms")
    result = {
        "runs": args.runs,
        "command": " ".join(zl),
        "python_ms": round(med["python"] * 1000, 2),
        "version_ms": round(med["version"] * 1000, 2),
        "validate_ms": round(med["validate"] * 1000, 2),
        "version_vs_python": round(med["version"] / med["python"], 3),
        "validate_vs_python": round(med["validate"] / med["python"], 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
