"""libFuzzer run (bounded) of the L7 HTTP parser with AddressSanitizer (csrc/proxy/fuzz/fuzz_parse.c)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.proxy_l4 import peer_env

ROOT = Path(__file__).resolve().parents[3]
SECONDS = int(os.environ.get("ZLAYER_FUZZ_SECONDS", "20"))

pytestmark = [pytest.mark.peer, pytest.mark.slow]


def test_http_parser_survives_fuzzed_input(tmp_path: Path) -> None:
    exe = tmp_path / "fuzz_parse"
    subprocess.run(
        [
            "clang",
            "-g",
            "-O1",
            "-D_GNU_SOURCE",
            "-fsanitize=fuzzer,address,undefined",
            f"-I{ROOT / 'csrc/proxy'}",
            str(ROOT / "csrc/proxy/l7_parse.c"),
            str(ROOT / "csrc/proxy/fuzz/fuzz_parse.c"),
            "-o",
            str(exe),
        ],
        check=True,
        capture_output=True,
        timeout=300,
        env=peer_env(),
    )
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seeds = {
        "get": b"\x00\x07GET /a?b HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
        "post": b"\x00\x40POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nX-Forwarded-For: 1.2.3.4\r\n\r\nabc",
        "te": b"\x00\x01PUT / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "absolute": b"\x00\x05GET http://shop.example:8080/a/b?c HTTP/1.1\r\nHost: other\r\n\r\n",
        "absolute-bare": b"\x00\x09OPTIONS HTTPS://[::1]?q HTTP/1.1\r\nHost: x\r\n\r\n",
        "resp": b"\x01\x00HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        "resp-lf": b"\x01\x00HTTP/1.1 101 Switching\nUpgrade: ws\r\nX: y\n\n",
        "chunk": b"\x02\x03" + b"5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    }
    for name, data in seeds.items():
        (corpus / name).write_bytes(data)
    res = subprocess.run(
        [str(exe), f"-max_total_time={SECONDS}", "-timeout=10", "-max_len=20000", str(corpus)],
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
        env={**peer_env(), "ASAN_OPTIONS": "detect_leaks=1", "UBSAN_OPTIONS": "halt_on_error=1"},
    )
    assert res.returncode == 0, res.stderr[-5000:]
    assert "Done" in res.stderr and "ERROR: AddressSanitizer" not in res.stderr and "runtime error" not in res.stderr
