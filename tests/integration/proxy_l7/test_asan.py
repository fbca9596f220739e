"""The L7 data-plane tests again, against an AddressSanitizer build of csrc/proxy/ (clang)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.asan import build_asan_extension, run_tests_under_asan

pytestmark = [pytest.mark.peer, pytest.mark.slow]


def test_l7_tests_pass_under_address_sanitizer(tmp_path: Path) -> None:
    so = build_asan_extension("proxy", "_l7*.so", tmp_path)
    here = Path(__file__).parent
    tests = ["test_http.py", "test_manager_l7.py", "test_websocket.py", "test_tls.py", "test_http2.py"]
    tests += ["test_balance.py", "test_listener_teardown.py"]
    run_tests_under_asan("ZLAYER_L7_SO", so, [here / t for t in tests])
