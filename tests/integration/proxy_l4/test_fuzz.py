"""libFuzzer run (bounded) of the L4 relay with AddressSanitizer: arbitrary client bytes into plain TCP, TLS and UDP
listeners (csrc/stream/fuzz/fuzz_relay.c)."""

from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.proxy_l4 import peer_env

ROOT = Path(__file__).resolve().parents[3]
SECONDS = int(os.environ.get("ZLAYER_FUZZ_SECONDS", "20"))

pytestmark = [pytest.mark.peer, pytest.mark.slow]


def test_relay_survives_fuzzed_client_input(tmp_path: Path, proxy_l4_cert: tuple[Path, Path]) -> None:
    exe = tmp_path / "fuzz_relay"
    sources = [*sorted(glob.glob(str(ROOT / "csrc/stream/*.c"))), str(ROOT / "csrc/stream/fuzz/fuzz_relay.c")]
    subprocess.run(
        [
            "clang",
            "-g",
            "-O1",
            "-D_GNU_SOURCE",
            "-fsanitize=fuzzer,address",
            f"-I{ROOT / 'include'}",
            *sources,
            "-lssl",
            "-lcrypto",
            "-lpthread",
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
    (corpus / "plain").write_bytes(b"\x00GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    (corpus / "tls").write_bytes(b"\x01\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00")
    (corpus / "udp").write_bytes(b"\x02ping")
    env = {
        **peer_env(),
        "ZLAYER_FUZZ_CERT": str(proxy_l4_cert[0]),
        "ZLAYER_FUZZ_KEY": str(proxy_l4_cert[1]),
        "ASAN_OPTIONS": "detect_leaks=0",
    }
    res = subprocess.run(
        [str(exe), f"-max_total_time={SECONDS}", "-timeout=10", "-max_len=70000", str(corpus)],
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-5000:]
    assert "Done" in res.stderr and "ERROR: AddressSanitizer" not in res.stderr
