"""Ingress outlives the daemon: the proxy's data-plane process keeps serving while ``zlayer serve`` is killed and
restarted, or replaced by another build (the listening sockets handed over), and a killed data plane is restarted.

A bounded load (fresh and keep-alive connections to 127.0.0.1 inside the node's namespace, at most LIMIT requests and
DEADLINE seconds) runs through the proxy to a deployed busybox httpd while that happens."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.daemon_live import LiveNode, live_node, web_spec
from tests.fixtures.daemon_node import _enter_netns, unique

pytestmark = [pytest.mark.root, pytest.mark.slow]

LIMIT = 20000
DEADLINE = 120.0


class Load:
    """Requests through the proxy until stopped, in turn through each port (an L7 http endpoint, an L4 tcp one):
    every fourth round one keep-alive connection carries 10 requests, the others open a connection per request.
    Each result: (time, ok, detail)."""

    def __init__(self, ns: str, ports: tuple[int, ...]) -> None:
        self.ns, self.ports = ns, ports
        self.results: list[tuple[float, bool, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _one(self, conn: http.client.HTTPConnection) -> None:
        t = time.monotonic()
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
            self.results.append((t, resp.status == 200 and body == "v1\n", f"{resp.status} {body!r}"))
        except (OSError, http.client.HTTPException) as e:
            self.results.append((t, False, repr(e)))
            conn.close()

    def _run(self) -> None:
        _enter_netns(self.ns)
        end = time.monotonic() + DEADLINE
        rounds = 0
        while not self.stop.is_set() and len(self.results) < LIMIT and time.monotonic() < end:
            rounds += 1
            conn = http.client.HTTPConnection("127.0.0.1", self.ports[rounds % len(self.ports)], timeout=5)
            try:
                for _ in range(10 if rounds % 4 == 0 else 1):
                    self._one(conn)
            finally:
                conn.close()
            time.sleep(0.002)

    def failures(self, since: float = 0.0) -> list[tuple[float, bool, str]]:
        return [r for r in self.results if not r[1] and r[0] >= since]

    def count(self, since: float, until: float) -> int:
        return sum(1 for r in self.results if since <= r[0] < until)


@contextlib.contextmanager
def loading(node: LiveNode, ports: tuple[int, ...]) -> Iterator[Load]:
    load = Load(node.ns, ports)
    load.thread.start()
    try:
        node.wait_for(lambda: len(load.results) >= 50 or None, 30, "the load's first requests")
        yield load
    finally:
        load.stop.set()
        load.thread.join(DEADLINE)


def dataplane_pid(node: LiveNode) -> int:
    try:
        return int((node.data / "run" / "dataplane" / "pid").read_text())
    except (OSError, ValueError):
        return 0


def alive(pid: int) -> bool:
    try:
        return b"zlayer.proxy.dataplane" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def state_sent(node: LiveNode, before: int) -> bool:
    """The restarted daemon sent its whole state to the data plane (a line in its log after offset ``before``)."""
    return "data plane: the daemon's state sent" in node.log_tail(10**7)[before:]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveNode, tuple[int, int]]]:
    with live_node(tmp_path_factory.mktemp("dataplane")) as n:
        http_port, tcp_port = n.free_port(), n.free_port()
        name = unique("dp")
        endpoints = (
            f"    endpoints:\n"
            f"      - {{name: http, protocol: http, port: {http_port}, target_port: 8080, expose: public}}\n"
            f"      - {{name: raw, protocol: tcp, port: {tcp_port}, target_port: 8080, expose: public}}\n"
        )
        n.deploy(web_spec(name, replicas=2, extra=endpoints))
        n.expect(name)
        for port in (http_port, tcp_port):
            n.wait_for(lambda p=port: n.get(p)[0] == 200 or None, 30, f"the endpoint on {port} answering")
        yield n, (http_port, tcp_port)


def test_daemon_sigkill_and_restart_drops_no_request(node: tuple[LiveNode, tuple[int, int]]) -> None:
    n, ports = node
    pid = dataplane_pid(n)
    assert alive(pid)
    control = n.data / "run" / "dataplane"
    assert stat.S_IMODE(control.stat().st_mode) == 0o700, "the data plane's control dir is open to other users"
    assert stat.S_IMODE((control / "control.sock").stat().st_mode) == 0o600
    assert os.getsid(pid) == pid, "the data plane does not lead a session of its own"
    with loading(n, ports) as load:
        before = len(n.log_tail(10**7))
        killed = time.monotonic()
        n.signal_and_wait(signal.SIGKILL)
        time.sleep(1.0)  # the daemon stays away a while; the load goes on
        n.start()
        n.wait_for(lambda: state_sent(n, before) or None, 60, "the restarted daemon re-adopting the data plane")
        back = time.monotonic()
        n.wait_for(lambda: load.count(back, float("inf")) >= 200 or None, 60, "requests after the re-adoption")
    assert load.count(killed, back) > 50, "the load did not span the restart"
    assert load.failures() == [], load.failures()[:5]
    assert dataplane_pid(n) == pid, "the data plane was replaced instead of re-adopted"
    # The restarted daemon serves the proxy's series, read from the data plane (its counters span the restart).
    served = {k: v for k, v in n.metrics().items() if k.startswith("zlayer_proxy_requests_total{")}
    assert len(served) == 2 and all(v > 0 for v in served.values()), served


def test_upgrade_in_place_hands_listeners_over(node: tuple[LiveNode, tuple[int, int]]) -> None:
    n, ports = node
    old = dataplane_pid(n)
    with loading(n, ports) as load:
        before = len(n.log_tail(10**7))
        n.signal_and_wait(signal.SIGTERM)  # the operator stops the old version ...
        n.env["ZLAYER_BUILD_ID"] = "upgrade-test-1"  # ... and starts a new build
        try:
            n.start()
        finally:
            del n.env["ZLAYER_BUILD_ID"]
        n.wait_for(lambda: state_sent(n, before) or None, 60, "the new daemon handing over the listeners")
        new = dataplane_pid(n)
        n.wait_for(lambda: not alive(old) or None, 60, "the old data plane draining and exiting")
        back = time.monotonic()
        n.wait_for(lambda: load.count(back, float("inf")) >= 200 or None, 60, "requests after the handover")
    assert new != old and alive(new)
    assert load.failures() == [], load.failures()[:5]


def test_killed_dataplane_is_restarted_with_its_tables(node: tuple[LiveNode, tuple[int, int]]) -> None:
    n, ports = node
    old = dataplane_pid(n)
    with loading(n, ports) as load:
        os.kill(old, signal.SIGKILL)
        killed = time.monotonic()
        n.wait_for(lambda: (dataplane_pid(n) not in (0, old) and alive(dataplane_pid(n))) or None, 30, "a new one")
        for port in ports:
            n.wait_for(lambda p=port: n.get(p)[0] == 200 or None, 30, f"the endpoint on {port} answering again")
        back = time.monotonic()
        n.wait_for(lambda: load.count(back, float("inf")) >= 200 or None, 60, "requests after the recovery")
    assert load.failures(since=back) == [], load.failures(since=back)[:5]
    assert load.count(killed, float("inf")) > 200


def test_clean_stop_without_deployments_stops_the_dataplane(node: tuple[LiveNode, tuple[int, int]]) -> None:
    n, _ = node
    pid = dataplane_pid(n)
    assert alive(pid)
    for d in n.api("GET", "/api/v1/deployments"):
        n.delete(d["name"])
    assert n.signal_and_wait(signal.SIGTERM) == 0
    assert not alive(pid), "the data plane outlived a daemon stopped with nothing deployed"
