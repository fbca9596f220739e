"""libFuzzer run (bounded) of the HTTP/2 front end with AddressSanitizer and UBSan (csrc/proxy/fuzz/fuzz_h2.c):
arbitrary frames after the client preface and arbitrary upstream responses through the proxy's nghttp2 callbacks."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.proxy_l4 import peer_env

ROOT = Path(__file__).resolve().parents[3]
SECONDS = int(os.environ.get("ZLAYER_FUZZ_SECONDS", "20"))

pytestmark = [pytest.mark.peer, pytest.mark.slow]


def _frame(ftype: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def _headers(stream: int, end: bool, **pseudo_and_more: str) -> bytes:
    block = b""
    for name, value in pseudo_and_more.items():
        n, v = name.replace("_", "-").replace("P-", ":").encode(), value.encode()
        block += b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v
    return _frame(1, 0x4 | (0x1 if end else 0), stream, block)


def _seed(upstream: bytes, client: bytes) -> bytes:
    return struct.pack(">H", len(upstream)) + upstream + client


def test_h2_front_end_survives_fuzzed_frames(tmp_path: Path) -> None:
    exe = tmp_path / "fuzz_h2"
    build = subprocess.run(
        [
            "clang", "-g", "-O1", "-D_GNU_SOURCE", "-fsanitize=fuzzer,address,undefined",
            f"-I{ROOT / 'csrc/proxy'}", f"-I{ROOT / 'include'}",
            *sorted(str(p) for p in (ROOT / "csrc/proxy").glob("*.c")), str(ROOT / "csrc/proxy/fuzz/fuzz_h2.c"),
            "-lssl", "-lcrypto", "-lnghttp2", "-lpthread", "-o", str(exe),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=peer_env(),
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    settings = _frame(4, 0, 0)
    get = _headers(1, True, P_method="GET", P_scheme="https", P_path="/x?y", P_authority="a.test:443", cookie="a=1")
    post = _headers(3, False, P_method="POST", P_scheme="https", P_path="/api/v", P_authority="b.w.test")
    post += _frame(0, 0, 3, b"hello") + _frame(0, 1, 3, b"world")
    seeds = {
        "get-length": _seed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello", settings + get),
        "post-chunked": _seed(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;e=1\r\nhello\r\n0\r\nT: x\r\n\r\n",
            settings + post,
        ),
        "close-delimited": _seed(
            b"HTTP/1.0 200 OK\r\n\r\nbody until close", settings + get + _frame(3, 0, 1, b"\0\0\0\x08")
        ),
        "down": _seed(b"", settings + _headers(5, True, P_method="GET", P_scheme="https", P_path="/down")),
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
