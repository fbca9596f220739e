"""The WireGuard interop tests again, against an AddressSanitizer build of csrc/wg/ (clang): real traffic with
wireguard-go and between two zlayer interfaces, replays, garbage and a handshake flood, with the workers running."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.asan import build_asan_extension, run_tests_under_asan

pytestmark = [pytest.mark.root, pytest.mark.peer, pytest.mark.slow]


def test_wireguard_tests_pass_under_address_sanitizer(tmp_path: Path) -> None:
    so = build_asan_extension("wg", "_wg*.so", tmp_path, package="overlay")
    run_tests_under_asan("ZLAYER_WG_SO", so, [Path(__file__).parent / "test_wireguard.py"])
