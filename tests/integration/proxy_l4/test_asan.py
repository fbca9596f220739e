"""The L4 data-plane tests again, against an AddressSanitizer build of csrc/stream/ (clang)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.asan import build_asan_extension, run_tests_under_asan

pytestmark = [pytest.mark.peer, pytest.mark.slow]


def test_l4_tests_pass_under_address_sanitizer(tmp_path: Path) -> None:
    so = build_asan_extension("stream", "_l4*.so", tmp_path)
    here = Path(__file__).parent
    run_tests_under_asan("ZLAYER_L4_SO", so, [here / "test_tcp_udp.py", here / "test_tls_pp.py"])
