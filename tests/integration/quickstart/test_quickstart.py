"""The README's quickstart, as a newcomer runs it (minus the install step, which CI has just done): a demo image built
offline from busybox-static, a daemon, two replicas answering through the proxy on port 8080, then a clean teardown."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]


def test_quickstart_demo_serves_the_page_through_the_proxy_and_tears_down() -> None:
    demo = ROOT / "scripts" / "quickstart-demo"
    r = subprocess.run([str(demo)], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("<h1>Hello from zlayer</h1>") == 2, r.stdout
    assert "web: healthy (2/2 replicas)" in r.stdout
    assert r.stdout.rstrip().endswith("quickstart OK")
    assert "Traceback" not in r.stdout + r.stderr
