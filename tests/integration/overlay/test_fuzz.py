"""libFuzzer run (bounded) of the WireGuard data path with AddressSanitizer: raw datagrams from an attacker, valid
sessions carrying arbitrary plaintext, and arbitrary TUN reads with virtio-net headers (csrc/wg/fuzz/fuzz_packet.c)."""

from __future__ import annotations

import glob
import os
import struct
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SECONDS = int(os.environ.get("ZLAYER_FUZZ_SECONDS", "20"))

pytestmark = [pytest.mark.peer, pytest.mark.slow]


def tcp4(dst: bytes, payload: int, flags: int = 0x10) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + payload, 1, 0x4000, 64, 6, 0, bytes([10, 0, 0, 9]), dst)
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 1, 5 << 4, flags, 512, 0, 0)
    return ip + tcp + bytes(range(256)) * (payload // 256) + bytes(payload % 256)


def test_data_path_survives_fuzzed_packets(tmp_path: Path) -> None:
    exe = tmp_path / "fuzz_packet"
    sources = [*sorted(glob.glob(str(ROOT / "csrc/wg/*.c"))), str(ROOT / "csrc/wg/fuzz/fuzz_packet.c")]
    build = subprocess.run(
        ["clang", "-g", "-O1", "-D_GNU_SOURCE", "-fsanitize=fuzzer,address", f"-I{ROOT / 'include'}",
         f"-I{ROOT / 'csrc/wg'}", *sources, "-lcrypto", "-lpthread", "-o", str(exe)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    vnet_tso = struct.pack("<BBHHHH", 1, 1, 40, 1000, 20, 16)  # NEEDS_CSUM, TCPV4, hdr 40, mss 1000
    seeds = {
        "data": b"\x00\x04\x00\x00\x00\x01\x00\x00\x00" + bytes(7) + bytes(48),
        "initiation": b"\x00\x01\x00\x00\x00" + bytes(144),
        "plain-tcp": b"\x01\x05\x00" + tcp4(bytes([10, 0, 0, 1]), 1200),
        "tso": b"\x02" + vnet_tso + tcp4(bytes([10, 0, 0, 2]), 9000),
        "tso-no-session": b"\x02" + vnet_tso + tcp4(bytes([192, 168, 0, 2]), 3000),
        "csum-only": b"\x02" + struct.pack("<BBHHHH", 1, 0, 0, 0, 20, 16) + tcp4(bytes([10, 0, 0, 2]), 100),
    }
    for name, data in seeds.items():
        (corpus / name).write_bytes(data)
    res = subprocess.run(
        [str(exe), f"-max_total_time={SECONDS}", "-timeout=10", "-max_len=70000", str(corpus)],
        capture_output=True, text=True, timeout=SECONDS + 120, env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-5000:]
    assert "Done" in res.stderr and "ERROR: AddressSanitizer" not in res.stderr
