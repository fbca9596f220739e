"""``python -m perf``: the benchmark harness an operator runs on their own hardware — it runs real benchmarks, keeps
each run with its commit and machine, and reports every figure against its target with charts of the ratios."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def _perf(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perf", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_runs_a_benchmark_keeps_history_and_reports_against_targets(tmp_path: Path) -> None:
    out = tmp_path / "results"
    for _ in range(2):
        r = _perf("spec_load", "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.splitlines()[-1])["failed"] == []
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["bench"] for h in history] == ["spec_load", "spec_load"]
    for h in history:
        assert h["ok"] and h["commit"] not in ("", "unknown") and h["machine"]["cores"] >= 1
        assert h["figures"]["compose_vs_pyyaml"] > 0 and h["figures"]["specs"] >= 1
    text = (out / "report.md").read_text()
    latest = history[-1]["figures"]["compose_vs_pyyaml"]
    assert f"| spec_load | compose_vs_pyyaml | {latest} |" in text
    assert "Machine: " in text and "![spec_load](spec_load.png)" in text
    assert (out / "spec_load.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failing_benchmark_is_recorded_reported_and_fails_the_run(tmp_path: Path) -> None:
    perf = tmp_path / "perf"
    perf.mkdir()
    shutil.copy(REPO / "perf" / "__main__.py", perf / "__main__.py")
    (perf / "targets.toml").write_text('[good]\nratio_vs_peer = "<= 0.5"\nrps = ">= 10"\n')
    (perf / "good.py").write_text('import json\nprint("warming up")\nprint(json.dumps({"ratio_vs_peer": 0.7}))\n')
    (perf / "broken.py").write_text('import sys\nprint("no peer here", file=sys.stderr)\nsys.exit(3)\n')
    r = _perf("--out", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 1 and "broken: FAILED (exit code 3: no peer here)" in r.stderr, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["failed"] == ["broken"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| broken | (failed) | exit code 3: no peer here |" in text
    assert "| good | ratio_vs_peer | 0.7 | <= 0.5 | **no** |" in text  # a missed target shows as missed
    assert "| good | rps | (missing) | >= 10 | **no** |" in text  # and a figure the benchmark stopped printing


def test_unknown_benchmark_and_bad_target_are_clear_errors(tmp_path: Path) -> None:
    r = _perf("no_such_bench", "--out", str(tmp_path))
    assert r.returncode == 2 and "no such benchmark: no_such_bench" in r.stderr and "spec_load" in r.stderr
    perf = tmp_path / "perf"
    perf.mkdir()
    shutil.copy(REPO / "perf" / "__main__.py", perf / "__main__.py")
    (perf / "targets.toml").write_text('[x]\nfigure = "about 3"\n')
    r = _perf("--report-only", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode != 0 and "targets.toml: [x] figure = 'about 3': expected '<= N' or '>= N'" in r.stderr
    assert "Traceback" not in r.stderr
    (perf / "targets.toml").write_text('[x]\nfigure = "<= 1"\n[x]\nfigure = "<= 2"\n')
    r = _perf("--report-only", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode != 0 and "targets.toml: Cannot declare ('x',) twice" in r.stderr and "Traceback" not in r.stderr
    assert "spec_load" in _perf("--list").stdout.split()
