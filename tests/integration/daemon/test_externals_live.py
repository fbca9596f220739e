"""`externals.<name>` blocks through a real daemon's proxy (ZLayer's spec §5.1): endpoints whose backends are fixed
`ip:port` addresses outside the node's containers. They were parsed and never routed."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.daemon_live import LiveNode
from tests.fixtures.daemon_node import unique

pytestmark = [pytest.mark.root, pytest.mark.slow]


class _Backend(http.server.ThreadingHTTPServer):
    """A plain HTTP server whose page is its own name: a service that is not a container."""

    daemon_threads = True

    def __init__(self, name: str, root: Path) -> None:
        (root / name).mkdir()
        (root / name / "index.html").write_text(name)
        handler = functools.partial(_Quiet, directory=str(root / name))
        super().__init__(("127.0.0.1", 0), handler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def backends(daemon_live: LiveNode, tmp_path: Path) -> Iterator[list[_Backend]]:
    servers = [daemon_live.in_ns(lambda i=i: _Backend(f"legacy-{i}", tmp_path)) for i in range(2)]
    yield servers
    for s in servers:
        s.shutdown()
        s.server_close()


def _spec(name: str, externals: str) -> str:
    return f"version: v1\ndeployment: {name}\nservices: {{}}\n{externals}"


def test_externals_are_routed_redeployed_away_and_removed_with_the_deployment(
    daemon_live: LiveNode, daemon_live_names: list[str], backends: list[_Backend]
) -> None:
    node, name = daemon_live, unique("ext")
    daemon_live_names.append(name)
    http_port, tcp_port = node.free_port(), node.free_port()
    externals = (
        "externals:\n  legacy:\n"
        f"    backends: ['127.0.0.1:{backends[0].port}', '127.0.0.1:{backends[1].port}']\n"
        f"    endpoints:\n      - {{name: web, protocol: http, port: {http_port}, expose: public}}\n"
        f"      - {{name: raw, protocol: tcp, port: {tcp_port}, expose: public}}\n"
    )
    node.deploy(_spec(name, externals))
    assert node.expect(name)["status"] == "running"

    # HTTP: balanced over both backends, each reached at its own port
    answers = [node.get(http_port) for _ in range(4)]
    assert sorted(answers) == [(200, "legacy-0"), (200, "legacy-0"), (200, "legacy-1"), (200, "legacy-1")]

    # TCP: the stream listener relays bytes to a backend as they are
    def raw() -> bytes:
        with socket.create_connection(("127.0.0.1", tcp_port), 5) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return b"".join(iter(lambda: s.recv(4096), b""))

    assert node.in_ns(raw).endswith((b"legacy-0", b"legacy-1"))

    # a bad backend fails the deploy and says where
    bad = externals.replace(f"127.0.0.1:{backends[1].port}", "db.local:5432")
    node.deploy(_spec(name, bad))
    details = node.expect(name, "failed")
    assert "externals.legacy" in details["status_message"] and "db.local:5432" in details["status_message"]

    assert node.get(http_port)[0] == 200  # the routes of the last good deploy keep serving

    # redeployed without the external: its listeners close
    node.deploy(_spec(name, externals))
    node.expect(name)
    assert node.get(http_port)[0] == 200
    node.deploy(_spec(name, ""))
    node.expect(name)
    assert not node.connect_ok("127.0.0.1", http_port) and not node.connect_ok("127.0.0.1", tcp_port)

    # and removed with the deployment
    node.deploy(_spec(name, externals))
    node.expect(name)
    assert node.get(http_port)[0] == 200
    node.delete(name)
    assert not node.connect_ok("127.0.0.1", http_port) and not node.connect_ok("127.0.0.1", tcp_port)
