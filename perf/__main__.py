"""``python -m perf``: run the benchmarks, keep every run's figures, and report them against their peers and targets.

Each ``perf/NAME.py`` runs as a subprocess, standalone as ever; its last line (one JSON object) is appended to the
history file with the commit and a description of the machine. The report is a markdown table of the latest figure
of every benchmark against its target (``perf/targets.toml``) and PNG charts of the ``*_vs_*`` ratios over the
recorded runs, so an operator can compare zlayer with the peers on their own hardware, run after run.

    python -m perf                      # every benchmark
    python -m perf proxy_http pull      # a subset
    python -m perf --list
    python -m perf --report-only        # redraw the report from the history
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "_results"


def benchmarks(perf_dir: Path = HERE) -> list[str]:
    """Every ``perf/NAME.py`` (the harness and private helpers, whose names start with ``_``, are not benchmarks)."""
    return sorted(p.stem for p in perf_dir.glob("*.py") if not p.name.startswith("_"))


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU model and count, memory, kernel, Python."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        kb = next(int(ln.split()[1]) for ln in meminfo if ln.startswith("MemTotal"))
        mem_gib = round(kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "hostname": platform.node(),
    }


def commit(repo: Path = HERE.parent) -> str:
    """The checked-out commit, with ``-dirty`` when the tree has changes; ``unknown`` outside a git checkout."""
    try:
        rev = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return rev.stdout.strip() if rev.returncode == 0 and rev.stdout.strip() else "unknown"


def run_one(name: str, perf_dir: Path, timeout: float) -> dict[str, Any]:
    """Run ``perf/NAME.py``; its figures, or why there are none (exit code and the last lines it wrote)."""
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, str(perf_dir / f"{name}.py")], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, cwd=perf_dir.parent)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:g}s", "seconds": round(time.monotonic() - started, 1)}
    seconds = round(time.monotonic() - started, 1)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    figures: Any = None
    if lines:
        try:
            figures = json.loads(lines[-1])
        except ValueError:
            figures = None
    if proc.returncode != 0 or not isinstance(figures, dict):
        tail = (proc.stderr.strip().splitlines() or lines or [""])[-3:]
        why = f"exit code {proc.returncode}" if proc.returncode else "no JSON object on its last line"
        return {"ok": False, "error": f"{why}: " + " | ".join(tail), "seconds": seconds}
    return {"ok": True, "figures": figures, "seconds": seconds}


def append_history(path: Path, records: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for rec in records:
            f.write(json.dumps(rec, sort_keys=True) + "\n")


def read_history(path: Path) -> list[dict[str, Any]]:
    """The recorded runs; a line a crash left half-written is skipped, not fatal."""
    out = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("bench"), str):
            out.append(rec)
    return out


def load_targets(path: Path) -> dict[str, dict[str, tuple[str, float]]]:
    """``{bench: {figure: (op, bound)}}`` from targets.toml; a malformed entry is an error naming it."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SystemExit(f"{path}: {e}") from None
    out: dict[str, dict[str, tuple[str, float]]] = {}
    for bench, figures in raw.items():
        for figure, text in figures.items():
            op, _, bound = str(text).partition(" ")
            if op not in ("<=", ">=") or not bound:
                raise SystemExit(f"{path}: [{bench}] {figure} = {text!r}: expected '<= N' or '>= N'")
            out.setdefault(bench, {})[figure] = (op, float(bound))
    return out


def _met(value: Any, target: tuple[str, float] | None) -> str:
    if target is None or not isinstance(value, int | float) or isinstance(value, bool):
        return ""
    op, bound = target
    return "yes" if (value <= bound if op == "<=" else value >= bound) else "**no**"


def _numbers(figures: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in figures.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def report(history: list[dict[str, Any]], targets: dict[str, dict[str, tuple[str, float]]], out: Path) -> Path:
    """Write ``report.md`` (the latest run of each benchmark, every figure against its target) and one PNG chart of
    ratios per benchmark over its recorded runs; return the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    latest: dict[str, dict[str, Any]] = {}
    for rec in history:
        latest[rec["bench"]] = rec
    lines = ["# zlayer benchmarks", ""]
    if latest:
        last = max(latest.values(), key=lambda r: str(r.get("time", "")))
        m = last.get("machine", {})
        lines += [f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('memory_gib', '?')} GiB, "
                  f"Linux {m.get('kernel', '?')}, Python {m.get('python', '?')}.", ""]  # fmt: skip
    lines += ["| benchmark | figure | value | target | met | commit | when |", "|---|---|---|---|---|---|---|"]
    for bench in sorted(latest):
        rec = latest[bench]
        when, rev = str(rec.get("time", ""))[:16].replace("T", " "), rec.get("commit", "")
        if not rec.get("ok"):
            lines.append(f"| {bench} | (failed) | {str(rec.get('error', '')).replace('|', '/')[:200]} | | **no** "
                         f"| {rev} | {when} |")  # fmt: skip
            continue
        figures = rec.get("figures", {})
        want = targets.get(bench, {})
        names = [k for k in want if k in figures] + sorted(k for k in _numbers(figures) if k not in want)
        for k in [k for k in want if k not in figures]:
            lines.append(f"| {bench} | {k} | (missing) | {want[k][0]} {want[k][1]:g} | **no** | {rev} | {when} |")
        for k in names:
            t = want.get(k)
            lines.append(f"| {bench} | {k} | {figures[k]} | {f'{t[0]} {t[1]:g}' if t else ''} | {_met(figures[k], t)} "
                         f"| {rev} | {when} |")  # fmt: skip
    charts = _charts(history, targets, out)
    if charts:
        lines += ["", "## Ratios over the recorded runs", ""] + [f"![{c.stem}]({c.name})" for c in charts]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _charts(history: list[dict[str, Any]], targets: dict[str, dict[str, tuple[str, float]]], out: Path) -> list[Path]:
    """One PNG per benchmark: each ``*_vs_*`` ratio (and each targeted figure) over its runs, targets dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict[str, list[dict[str, Any]]] = {}
    for rec in history:
        if rec.get("ok"):
            runs.setdefault(rec["bench"], []).append(rec)
    made = []
    for bench, recs in sorted(runs.items()):
        want = targets.get(bench, {})
        keys = sorted({k for r in recs for k in _numbers(r["figures"]) if "_vs_" in k or k in want})
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(8, 4))
        for k in keys:
            xs = [i for i, r in enumerate(recs) if k in _numbers(r["figures"])]
            line = ax.plot(xs, [_numbers(recs[i]["figures"])[k] for i in xs], marker="o", label=k)[0]
            if k in want:
                ax.axhline(want[k][1], linestyle="--", color=line.get_color(), linewidth=1)
        ax.set_title(f"{bench} (dashed: targets)")
        ax.set_xlabel("run")
        ax.set_xticks(range(len(recs)), [str(r.get("commit", ""))[:7] for r in recs], rotation=45, fontsize=7)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{bench}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path)
    return made


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf", description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="benchmarks to run (perf/NAME.py) [default: all]")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"history and report folder [default: {DEFAULT_OUT}]")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one benchmark may take [default: 1800]")
    ap.add_argument("--report-only", action="store_true", help="redraw the report from the history; run nothing")
    ap.add_argument("--perf-dir", type=Path, default=HERE, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    known = benchmarks(args.perf_dir)
    if args.list:
        print("\n".join(known))
        return 0
    unknown = [n for n in args.names if n not in known]
    if unknown:
        print(f"python -m perf: no such benchmark: {', '.join(unknown)} (known: {', '.join(known)})", file=sys.stderr)
        return 2
    targets = load_targets(args.perf_dir / "targets.toml")
    history_file = args.out / "history.jsonl"
    failed = []
    if not args.report_only:
        where, rev = machine(), commit(args.perf_dir.parent)
        for name in args.names or known:
            print(f"running perf/{name}.py ...", file=sys.stderr, flush=True)
            result = run_one(name, args.perf_dir, args.timeout)
            rec = {"bench": name, "time": datetime.now(UTC).isoformat(timespec="seconds"), "commit": rev,
                   "machine": where, **result}  # fmt: skip
            append_history(history_file, [rec])
            state = "ok" if result["ok"] else f"FAILED ({result['error']})"
            print(f"  {name}: {state} in {result['seconds']}s", file=sys.stderr, flush=True)
            if not result["ok"]:
                failed.append(name)
    path = report(read_history(history_file), targets, args.out)
    print(f"report: {path}", file=sys.stderr)
    print(json.dumps({"report": str(path), "history": str(history_file), "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
