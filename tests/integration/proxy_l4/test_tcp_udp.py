"""The L4 data plane forwarding real TCP and UDP traffic on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from zlayer.errors import ProxyError

pytestmark = pytest.mark.peer


def roundtrip(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    """Sends payload, half-closes, reads until the proxy closes: what a client sees."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        sender = threading.Thread(target=lambda: (c.sendall(payload), c.shutdown(socket.SHUT_WR)))
        sender.start()
        got = bytearray()
        while chunk := c.recv(1 << 16):
            got += chunk
        sender.join()
        return bytes(got)


def wait_until(pred: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return bool(pred())


def test_the_data_plane_under_test_is_the_requested_build() -> None:
    import os

    import zlayer.proxy._l4 as l4

    assert l4.__file__ == os.environ.get("ZLAYER_L4_SO", l4.__file__)


def test_tcp_bulk_transfer_arrives_intact_and_switches_to_splice(proxy_l4_tcp_echo, proxy_l4_listener) -> None:
    echo = proxy_l4_tcp_echo()
    lst = proxy_l4_listener("tcp", [("127.0.0.1", echo.port)], workers=2)
    payload = bytes(range(256)) * 40_000  # 10 MB
    assert roundtrip(lst.port, payload) == payload
    assert wait_until(lambda: lst.stats()["connections_active"] == 0)
    stats = lst.stats()
    assert stats["bytes_in"] == len(payload) and stats["bytes_out"] == len(payload)
    assert stats["bytes_spliced"] > len(payload)  # most of both directions went through the pipe


def test_tcp_small_exchange_uses_plain_read_write(proxy_l4_tcp_echo, proxy_l4_listener) -> None:
    echo = proxy_l4_tcp_echo()
    lst = proxy_l4_listener("tcp", [("127.0.0.1", echo.port)])
    for i in range(20):
        assert roundtrip(lst.port, f"ping {i}".encode()) == f"ping {i}".encode()
    assert lst.stats()["bytes_spliced"] == 0
    assert lst.stats()["connections_total"] == 20


def test_splice_can_be_disabled(proxy_l4_tcp_echo, proxy_l4_listener) -> None:
    echo = proxy_l4_tcp_echo()
    lst = proxy_l4_listener("tcp", [("127.0.0.1", echo.port)], splice_threshold=-1)
    payload = b"x" * 3_000_000
    assert roundtrip(lst.port, payload) == payload
    assert lst.stats()["bytes_spliced"] == 0


def test_backend_swap_under_load_drops_no_connection(proxy_l4_tcp_echo, proxy_l4_listener) -> None:
    a, b = proxy_l4_tcp_echo(), proxy_l4_tcp_echo()
    lst = proxy_l4_listener("tcp", [("127.0.0.1", a.port)], workers=2)
    stop = threading.Event()

    def swapper() -> None:
        tables = [[("127.0.0.1", b.port)], [("127.0.0.1", a.port), ("127.0.0.1", b.port)], [("127.0.0.1", a.port)]]
        i = 0
        while not stop.is_set():
            lst.set_backends(tables[i % 3])
            i += 1
            time.sleep(0.001)

    t = threading.Thread(target=swapper)
    t.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            payloads = [f"request {i} ".encode() * 100 for i in range(600)]
            results = list(pool.map(lambda p: roundtrip(lst.port, p) == p, payloads))
    finally:
        stop.set()
        t.join()
    assert all(results), f"{results.count(False)} of {len(results)} connections broke during swaps"
    assert a.accepted > 0 and b.accepted > 0
    assert lst.stats()["connect_errors"] == 0


def test_dead_backend_is_ejected_and_traffic_moves(proxy_l4_tcp_echo, proxy_l4_listener) -> None:
    live = proxy_l4_tcp_echo()
    dead = proxy_l4_tcp_echo()
    dead_port = dead.port
    dead.close()  # nothing listens there any more: connections are refused
    lst = proxy_l4_listener("tcp", [("127.0.0.1", dead_port), ("127.0.0.1", live.port)])
    for i in range(12):
        assert roundtrip(lst.port, f"m{i}".encode()) == f"m{i}".encode()  # every client still served (retry)
    info = {b["port"]: b for b in lst.backends()}
    assert info[dead_port]["healthy"] is False
    assert info[dead_port]["failures"] == 3  # ejected after three refusals, never tried again
    assert info[live.port]["total"] == 12
    lst.set_health("127.0.0.1", dead_port, True)  # a health check brings it back
    assert {b["port"]: b for b in lst.backends()}[dead_port]["healthy"] is True


def test_least_connections_prefers_the_idle_backend(proxy_l4_tcp_echo, proxy_l4_listener) -> None:
    a, b = proxy_l4_tcp_echo(), proxy_l4_tcp_echo()
    lst = proxy_l4_listener("tcp", [("127.0.0.1", a.port), ("127.0.0.1", b.port)], strategy="least_connections")
    held = [socket.create_connection(("127.0.0.1", lst.port)) for _ in range(3)]
    try:
        for h in held:
            h.sendall(b"hold")
            assert h.recv(10) == b"hold"
        busy = {x["port"]: x["active"] for x in lst.backends()}
        assert sorted(busy.values()) == [1, 2]
        idle_port = min(busy, key=lambda p: busy[p])
        with socket.create_connection(("127.0.0.1", lst.port)) as c:
            c.sendall(b"x")
            assert c.recv(1) == b"x"
            now = {x["port"]: x["active"] for x in lst.backends()}
            assert now[idle_port] == 2
    finally:
        for h in held:
            h.close()


def test_no_backend_closes_the_client_at_once(proxy_l4_listener) -> None:
    lst = proxy_l4_listener("tcp", [])
    with socket.create_connection(("127.0.0.1", lst.port), timeout=5) as c:
        assert c.recv(10) == b""
    assert lst.stats()["no_backend"] == 1


def test_port_in_use_is_a_clear_error(proxy_l4_tcp_echo) -> None:
    from zlayer.proxy._l4 import Listener

    echo = proxy_l4_tcp_echo()  # holds the port without SO_REUSEPORT
    lst = Listener("tcp", "127.0.0.1", echo.port)
    with pytest.raises(ProxyError, match=rf"bind 127.0.0.1:{echo.port} \(tcp\)"):
        lst.start()


def test_bad_backend_address_is_a_clear_error(proxy_l4_listener) -> None:
    lst = proxy_l4_listener("tcp", [])
    with pytest.raises(ProxyError, match=r"backend 0: db\.internal:5432 is not a numeric IP"):
        lst.set_backends([("db.internal", 5432)])


def test_iperf3_runs_through_the_proxy(proxy_l4_listener) -> None:
    from tests.fixtures.proxy_l4 import free_port, peer_env, wait_tcp

    port = free_port()
    server = subprocess.Popen(
        ["iperf3", "-s", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=peer_env()
    )
    try:
        wait_tcp(port)
        time.sleep(0.2)
        lst = proxy_l4_listener("tcp", [("127.0.0.1", port)])
        out = subprocess.run(
            ["iperf3", "-c", "127.0.0.1", "-p", str(lst.port), "-n", "200M", "-J"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env=peer_env(),
        )
        report = json.loads(out.stdout)
        assert report["end"]["sum_sent"]["bytes"] >= 200 * 1024 * 1024
        # the server's count stops at its last whole interval, so it trails what the client sent
        assert report["end"]["sum_received"]["bytes"] >= 100 * 1024 * 1024
    finally:
        server.kill()
        server.wait()


def test_udp_one_upstream_socket_per_client(proxy_l4_udp_echo, proxy_l4_listener) -> None:
    echo = proxy_l4_udp_echo(b"b1")
    lst = proxy_l4_listener("udp", [("127.0.0.1", echo.port)])
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for round_ in range(3):
            for i, c in enumerate(clients):
                c.settimeout(5)
                c.sendto(f"c{i}r{round_}".encode(), ("127.0.0.1", lst.port))
                data, src = c.recvfrom(100)
                assert data == f"b1:c{i}r{round_}".encode()
                assert src == ("127.0.0.1", lst.port)
        assert len(set(echo.sources)) == 3  # three clients, three upstream sockets, each reused
        assert lst.stats()["udp_sessions_active"] == 3
    finally:
        for c in clients:
            c.close()


def test_udp_session_times_out_and_a_new_one_starts(proxy_l4_udp_echo, proxy_l4_listener) -> None:
    echo = proxy_l4_udp_echo()
    lst = proxy_l4_listener("udp", [("127.0.0.1", echo.port)], session_timeout=1.0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(5)
        c.sendto(b"one", ("127.0.0.1", lst.port))
        assert c.recvfrom(100)[0] == b"echo:one"
        c.sendto(b"two", ("127.0.0.1", lst.port))
        assert c.recvfrom(100)[0] == b"echo:two"
        assert echo.sources[0] == echo.sources[1]
        assert wait_until(lambda: lst.stats()["udp_sessions_active"] == 0, timeout=4)
        c.sendto(b"three", ("127.0.0.1", lst.port))
        assert c.recvfrom(100)[0] == b"echo:three"
        assert echo.sources[2] != echo.sources[0]  # a fresh upstream socket for the new session
    assert lst.stats()["udp_sessions_total"] == 2


def test_udp_backend_swap_moves_new_sessions(proxy_l4_udp_echo, proxy_l4_listener) -> None:
    a, b = proxy_l4_udp_echo(b"a"), proxy_l4_udp_echo(b"b")
    lst = proxy_l4_listener("udp", [("127.0.0.1", a.port)])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c1, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c2:
        c1.settimeout(5)
        c2.settimeout(5)
        c1.sendto(b"x", ("127.0.0.1", lst.port))
        assert c1.recvfrom(10)[0] == b"a:x"
        lst.set_backends([("127.0.0.1", b.port)])
        c2.sendto(b"y", ("127.0.0.1", lst.port))
        assert c2.recvfrom(10)[0] == b"b:y"
        c1.sendto(b"z", ("127.0.0.1", lst.port))  # an existing session keeps its backend
        assert c1.recvfrom(10)[0] == b"a:z"


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_drain_refuses_new_connections_and_lets_open_ones_finish(proxy_l4_tcp_echo, proxy_l4_listener) -> None:
    echo = proxy_l4_tcp_echo()
    lst = proxy_l4_listener("tcp", [("127.0.0.1", echo.port)])
    port = lst.port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"before")
        assert c.recv(10) == b"before"
        drainer = threading.Thread(target=lst.drain, args=(10.0,))
        started = time.monotonic()
        drainer.start()
        assert wait_until(lambda: refused(port))
        c.sendall(b"during")  # the open connection still works while the listener drains
        assert c.recv(10) == b"during"
    drainer.join(timeout=10)
    assert not drainer.is_alive() and time.monotonic() - started < 5  # returned once the last connection ended


def test_udp_burst_is_relayed_whole(proxy_l4_udp_echo, proxy_l4_listener) -> None:
    echo = proxy_l4_udp_echo()
    echo.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    lst = proxy_l4_listener("udp", [("127.0.0.1", echo.port)])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        c.settimeout(3)
        for i in range(2000):  # far more than one recvmmsg batch or a default socket buffer holds
            c.sendto(b"%d" % i, ("127.0.0.1", lst.port))
        got = set()
        while len(got) < 2000:
            got.add(c.recv(100))
    assert got == {b"echo:%d" % i for i in range(2000)}
