"""`zlayer validate`, `zlayer spec dump|schema`, `zlayer completions` as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]
HELLO = ROOT / "examples" / "hello.zlayer.yml"
EXAMPLES = ROOT / "tests" / "unit" / "spec" / "examples"


def zlayer(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zlayer", *args], capture_output=True, text=True, cwd=cwd, timeout=60, check=False
    )


def no_traceback(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout


def test_validate_ok() -> None:
    r = zlayer("validate", str(HELLO))
    assert r.returncode == 0, r.stderr
    # ZLayer's print_deployment_plan, line for line
    assert r.stdout.splitlines() == [
        "Spec validation: PASSED",
        "",
        "=== Deployment Plan ===",
        "Deployment: hello",
        "Version: v1",
        "Services: 1",
        "",
        "  Service: web",
        "    Image: zlayer-demo/httpd:latest",
        "    Type: Service",
        "    Scale: fixed (2 replicas)",
        "    Endpoints:",
        "      - http (Http:8080, Public)",
        "",
    ]


def test_validate_json() -> None:
    r = zlayer("validate", "--output", "json", str(HELLO))
    body = json.loads(r.stdout)
    assert r.returncode == 0 and body["valid"] is True and body["deployment"] == "hello"
    assert body["services"]["web"]["endpoints"][0]["port"] == 8080
    assert body["services"]["web"]["scale"] == {"mode": "fixed", "replicas": 2}


def test_validate_reports_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zlayer.yml"
    bad.write_text(
        "version: v1\ndeployment: demo\nservices:\n  web:\n    image: {name: nginx}\n"
        "    endpoint: []\n    scale: {mode: adaptive, min: 5, max: 3}\n"
    )
    r = zlayer("validate", str(bad))
    no_traceback(r)
    assert r.returncode == 1
    assert f"{bad}:6:5: services.web.endpoint: unknown field `endpoint`; did you mean 'endpoints'?" in r.stderr
    assert f"{bad}:7:34: services.web.scale.min: scale min (5) cannot be greater than max (3)" in r.stderr
    j = zlayer("validate", "-o", "json", str(bad))
    body = json.loads(j.stdout)
    assert j.returncode == 1 and body["valid"] is False and len(body["problems"]) == 2


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "empty"),
        ("version: v1\ndeployment: [x\n", "malformed YAML"),
        ("- a\n", "must be a YAML mapping"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_validate_bad_files(tmp_path: Path, content: str | bytes, fragment: str) -> None:
    f = tmp_path / "x.zlayer.yml"
    if isinstance(content, bytes):
        f.write_bytes(content)
    else:
        f.write_text(content)
    r = zlayer("validate", str(f))
    no_traceback(r)
    assert r.returncode != 0 and fragment in r.stderr


def test_validate_missing_file(tmp_path: Path) -> None:
    r = zlayer("validate", str(tmp_path / "nope.zlayer.yml"))
    no_traceback(r)
    assert r.returncode != 0 and "spec file not found" in r.stderr


def test_discovery(tmp_path: Path) -> None:
    r = zlayer("validate", cwd=tmp_path)
    no_traceback(r)
    assert r.returncode != 0 and "No deployment spec found" in r.stderr
    shutil.copy(HELLO, tmp_path / "hello.zlayer.yml")
    r = zlayer("validate", cwd=tmp_path)
    assert r.returncode == 0 and "Deployment: hello" in r.stdout
    shutil.copy(HELLO, tmp_path / "other.zlayer.yaml")
    r = zlayer("validate", cwd=tmp_path)
    no_traceback(r)
    assert r.returncode != 0 and "Multiple deployment specs" in r.stderr and "other.zlayer.yaml" in r.stderr
    r = zlayer("validate", str(tmp_path))  # a directory argument is searched the same way
    assert r.returncode != 0 and "Multiple deployment specs" in r.stderr
    shutil.copy(HELLO, tmp_path / "zlayer.yml")  # an exact name wins over the patterns
    r = zlayer("validate", cwd=tmp_path)
    assert r.returncode == 0 and "Deployment: hello" in r.stdout


@pytest.mark.parametrize("path", sorted((EXAMPLES / "valid").iterdir()), ids=lambda p: p.name)
def test_validate_zlayer_valid_examples(path: Path) -> None:
    assert zlayer("validate", str(path)).returncode == 0


@pytest.mark.parametrize("path", sorted((EXAMPLES / "invalid").iterdir()), ids=lambda p: p.name)
def test_validate_zlayer_invalid_examples(path: Path) -> None:
    r = zlayer("validate", str(path))
    no_traceback(r)
    assert r.returncode == 1 and "Spec validation: FAILED" in r.stdout and f"{path}:" in r.stderr


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_spec_dump_round_trip(tmp_path: Path, fmt: str) -> None:
    r = zlayer("spec", "dump", str(HELLO), "-f", fmt)
    assert r.returncode == 0, r.stderr
    out = tmp_path / f"dumped.{fmt}"
    out.write_text(r.stdout)
    again = zlayer("spec", "dump", str(out), "--format", fmt)
    assert again.returncode == 0 and again.stdout == r.stdout
    assert "if_not_present" not in r.stdout and "never" in r.stdout  # keeps the given pull_policy
    assert "isolated" in r.stdout  # defaults filled in


def test_spec_dump_bad_spec(tmp_path: Path) -> None:
    f = tmp_path / "a.zlayer.yml"
    f.write_text("version: v2\ndeployment: demo\n")
    r = zlayer("spec", "dump", str(f))
    no_traceback(r)
    assert r.returncode == 1 and "version must be 'v1', found 'v2'" in r.stderr


def test_spec_schema_validates_examples() -> None:
    import jsonschema
    import yaml

    r = zlayer("spec", "schema")
    schema = json.loads(r.stdout)
    v = jsonschema.Draft202012Validator(schema)
    for path in [HELLO, *sorted((EXAMPLES / "valid").iterdir())]:
        assert not list(v.iter_errors(yaml.safe_load(path.read_text()))), path


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish", "powershell", "elvish"])
def test_completions(shell: str) -> None:
    r = zlayer("completions", shell)
    assert r.returncode == 0 and "_ZLAYER_COMPLETE" in r.stdout


def test_completion_script_completes_commands() -> None:
    import os

    env = {**os.environ, "_ZLAYER_COMPLETE": "bash_complete", "COMP_WORDS": "zlayer val", "COMP_CWORD": "1"}
    r = subprocess.run([sys.executable, "-m", "zlayer"], capture_output=True, text=True, env=env, timeout=60)
    assert "validate" in r.stdout


def test_completions_unknown_shell() -> None:
    r = zlayer("completions", "tcsh")
    no_traceback(r)
    assert r.returncode == 2


def test_version_does_not_import_pydantic_or_yaml() -> None:
    code = (
        "import sys; from zlayer.cli.main import main\n"
        "try: main(['--version'])\nexcept SystemExit: pass\n"
        "print(sorted(m for m in ('pydantic', 'yaml', 'rich') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip().endswith("[]"), r.stdout


# What `zlayer --version` and `zlayer validate FILE` must not import: each of these is a sizeable share of their
# start-up (perf/cli_start.py measures it; the targets are 2.5x and 4x a bare `python -c pass`).
HEAVY = ("click", "pydantic", "rich", "typing", "dataclasses", "pathlib")


def test_plain_version_and_validate_skip_the_parser_and_print_what_it_prints(tmp_path: Path) -> None:
    # the console script's entry point answers these two without importing click (a third of a validate's start-up)
    import site

    bad = tmp_path / "bad.zlayer.yml"
    bad.write_text("version: v2\ndeployment: ab\nservices: {}\n")
    for args in (["--version"], ["validate", str(HELLO)], ["validate", str(bad)]):
        # -S: without this machine's .pth hooks, which import typing and pathlib before any zlayer code runs
        code = (
            f"import sys; sys.path[:0] = {[str(ROOT), *site.getsitepackages()]!r}\n"
            "from zlayer.cli import main\n"
            f"try: main({args!r})\nexcept SystemExit as e: sys.stdout.write(f'exit={{e.code}}\\n')\n"
            f"sys.stderr.write('loaded:' + repr(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
        )
        fast = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60)
        assert fast.stderr.endswith("loaded:[]"), (args, fast.stderr)
        # the same words and exit code as through the parser (an option sends the command there)
        parsed = zlayer(*args[:1], "-o", "text", *args[1:]) if args[0] == "validate" else zlayer("-V")
        out, _, code = fast.stdout.rpartition("exit=") if "exit=" in fast.stdout else (fast.stdout, "", "0")
        assert out == parsed.stdout, args
        assert fast.stderr.removesuffix("loaded:[]") == parsed.stderr, args
        assert int(code or 0) == parsed.returncode == (1 if args[-1] == str(bad) else 0)
