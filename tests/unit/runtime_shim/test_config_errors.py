"""zlayer-shim's reading of config.json: bad input is reported with its place (line:column, field path), and the
JSON parser survives a bounded libFuzzer run under ASan/UBSan. No privileges needed: the shim checks the whole
config before it touches the system."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from zlayer.runtime.linux.shim import shim_path

ROOT_DIR = Path(__file__).resolve().parents[3]


def create(tmp_path: Path, config: str | dict[str, object]) -> subprocess.CompletedProcess[str]:
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True, exist_ok=True)
    text = config if isinstance(config, str) else json.dumps(config)
    (bundle / "config.json").write_text(text)
    return subprocess.run(
        [str(shim_path()), "create", "--root", str(tmp_path / "state"), "--bundle", str(bundle), "c1"],
        capture_output=True,
        text=True,
        timeout=30,
    )


def minimal(**process: object) -> dict[str, object]:
    proc: dict[str, object] = {"args": ["/bin/true"], "cwd": "/"}
    proc.update(process)
    return {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": proc, "linux": {"namespaces": []}}


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    r = create(tmp_path, '{\n  "root": {"path": "rootfs"},\n  "process": {"args": ["x",]}\n}')
    assert r.returncode == 1
    assert "config.json: invalid JSON at line 3 column" in r.stderr
    assert not (tmp_path / "state" / "c1").exists()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"process": {"args": "sh"}}, "process.args: expected an array"),
        ({"process": {"args": ["sh"], "cwd": "relative"}}, "process.cwd: relative is not an absolute path"),
        ({"process": {"args": ["sh"], "user": {"uid": -1}}}, "process.user.uid: expected a non-negative integer"),
        ({"process": {"args": ["sh"], "capabilities": {"bounding": ["CAP_FLY"]}}}, "unknown capability CAP_FLY"),
        ({"process": {"args": []}}, "process.args: must name the program to run"),
        (
            {"process": {"args": ["sh"], "rlimits": [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]}},
            "process.rlimits[0].type: unknown rlimit RLIMIT_BOGUS",
        ),
        ({"linux": {"namespaces": [{"type": "pid"}, {"type": "pid"}]}}, "namespace pid listed twice"),
        ({"linux": {"namespaces": [{"type": "galaxy"}]}}, "unknown or unsupported namespace galaxy"),
        ({"linux": {"resources": {"memory": {"limit": "1G"}}}}, "linux.resources.memory.limit: expected an integer"),
        ({"linux": {"namespaces": [{"type": "user"}]}}, "a new user namespace needs uidMappings and gidMappings"),
        ({"mounts": [{"destination": "relative", "type": "tmpfs"}]}, "mounts[0].destination: must be an absolute"),
        ({"root": {"path": "missing-rootfs"}}, "root.path: rootfs"),
    ],
)
def test_bad_fields_are_named_by_path(tmp_path: Path, change: dict[str, object], expected: str) -> None:
    config = minimal()
    for key, value in change.items():
        config[key] = value
    r = create(tmp_path, config)
    assert r.returncode == 1
    assert "container c1:" in r.stderr and expected in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_json_parser_survives_fuzzing(tmp_path: Path) -> None:
    if not shutil.which("clang"):
        pytest.fail("clang (with libclang-rt for libFuzzer) is required: it is in .ci/apt-packages.txt")
    out = tmp_path / "build"
    subprocess.run(
        ["make", "-s", "-C", str(ROOT_DIR / "csrc" / "runtime"), "fuzz", f"O={out}"], check=True, capture_output=True
    )
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "config.json").write_text(json.dumps(minimal(env=["A=\\u00e9"], user={"uid": 1, "additionalGids": [2]})))
    (corpus / "escapes.json").write_text('{"a":"\\ud83d\\ude00\\n","b":[1e5,-0.5,18446744073709551615,true,null]}')
    r = subprocess.run(
        [str(out / "json-fuzz"), "-max_total_time=20", "-timeout=5", "-rss_limit_mb=1024", str(corpus)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Done" in r.stderr
