"""``python -m zlayer.proxy.standalone``: serves a static JSON route table; bad tables get a one-line error."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.proxy_l4 import free_port, peer_env, wait_tcp

pytestmark = pytest.mark.peer


def test_standalone_serves_a_static_table(proxy_l7_nginx, tmp_path: Path) -> None:
    port = free_port()
    table = tmp_path / "routes.json"
    routes = [{"key": "w#h", "listen": f"127.0.0.1:{port}", "backends": [f"127.0.0.1:{proxy_l7_nginx.ports[1]}"]}]
    table.write_text(json.dumps({"workers": 2, "routes": routes}))
    proc = subprocess.Popen([sys.executable, "-m", "zlayer.proxy.standalone", str(table)])
    try:
        wait_tcp(port)
        out = subprocess.run(
            ["curl", "-s", "--max-time", "5", f"http://127.0.0.1:{port}/s"],
            capture_output=True,
            text=True,
            timeout=10,
            env=peer_env(),
        )
        assert out.stdout == "B /s\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),  # the words of zlayer.limits.load_json, which every JSON entry point uses
        ('{"routes": [{"key": "a"}]}', "routes[0]"),
        ('{"routes": [{"key": "a", "listen": "127.0.0.1:x"}]}', "routes[0].listen"),
        ('{"routes": [{"key": "a", "listen": "127.0.0.1:1", "backends": ["nohost"]}]}', "routes[0].backends[0]"),
    ],
)
def test_bad_tables_name_the_field(tmp_path: Path, content: str, message: str) -> None:
    table = tmp_path / "routes.json"
    table.write_text(content)
    res = subprocess.run(
        [sys.executable, "-m", "zlayer.proxy.standalone", str(table)], capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 1 and res.stderr.startswith("error: ") and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
