"""ProxyManager driving the L4 data plane from service specs, with real echo servers as replicas."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from tests.fixtures.proxy_l4 import free_port
from zlayer.errors import ProxyError, SpecError
from zlayer.proxy import ProxyManager
from zlayer.proxy.api_models import backends_response, routes_response, streams_response, tls_response
from zlayer.spec.loader import parse_deployable
from zlayer.spec.models import ExternalSpec, ServiceSpec

pytestmark = pytest.mark.peer


def tcp_roundtrip(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := c.recv(65536):
            out += chunk
        return out


def spec(*endpoints: dict[str, Any]) -> ServiceSpec:
    return ServiceSpec.model_validate({"image": {"name": "busybox"}, "endpoints": list(endpoints)})


async def wait_for(pred: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if pred():
            return
        await asyncio.sleep(0.05)
    assert pred()


def test_tcp_endpoint_forwards_to_replicas_and_follows_backend_updates(proxy_l4_tcp_echo, tmp_path) -> None:
    a, b = proxy_l4_tcp_echo(), proxy_l4_tcp_echo()
    port = free_port()

    async def main() -> None:
        m = ProxyManager(data_dir=tmp_path, health_interval=0.2, health_timeout=0.5)
        await m.start()
        try:
            await m.add_service("demo", "db", spec({"name": "pg", "protocol": "tcp", "port": port}))
            await m.update_backends("db", [("127.0.0.1", a.port)])
            assert await asyncio.to_thread(tcp_roundtrip, port, b"one") == b"one"
            await m.update_backends("db", [("127.0.0.1", b.port)])
            assert await asyncio.to_thread(tcp_roundtrip, port, b"two") == b"two"
            assert (a.accepted, b.accepted) == (1, 1)
            assert m.requests_totals() == {"db": 2}  # each connection is one of the service's requests (autoscaler)
            streams = streams_response(m)
            assert streams.total == 1 and streams.tcp_count == 1
            assert streams.streams[0].backends[0].address == f"127.0.0.1:{b.port}"
            assert streams.streams[0].port == port
            await m.remove_service("db")

            def refused() -> bool:
                with socket.socket() as s:
                    return s.connect_ex(("127.0.0.1", port)) != 0

            await wait_for(refused)  # the listener drains: no new connection once its workers see the change
            assert m.services() == [] and streams_response(m).total == 0
        finally:
            await m.close()

    asyncio.run(main())


def test_dead_replica_is_marked_unhealthy_by_the_checker(proxy_l4_tcp_echo, tmp_path) -> None:
    live, dead = proxy_l4_tcp_echo(), proxy_l4_tcp_echo()
    dead.close()
    port = free_port()

    async def main() -> None:
        m = ProxyManager(data_dir=tmp_path, health_interval=0.1, health_timeout=0.5)
        await m.start()
        try:
            await m.add_service("demo", "db", spec({"name": "pg", "protocol": "tcp", "port": port}))
            await m.update_backends("db", [("127.0.0.1", live.port), ("127.0.0.1", dead.port)])

            def unhealthy() -> bool:
                groups = backends_response(m).groups
                return groups[0].healthy_count == 1

            await wait_for(unhealthy)
            group = backends_response(m).groups[0]
            bad = next(x for x in group.backends if x.address.endswith(f":{dead.port}"))
            assert not bad.healthy and bad.consecutive_failures >= 3
            for i in range(6):  # every connection goes to the live replica
                assert await asyncio.to_thread(tcp_roundtrip, port, b"%d" % i) == b"%d" % i
            assert live.accepted >= 6
        finally:
            await m.close()

    asyncio.run(main())


def test_udp_probe_health_check_uses_request_and_expect(proxy_l4_udp_echo, tmp_path) -> None:
    good = proxy_l4_udp_echo(b"pong")
    wrong = proxy_l4_udp_echo(b"nope")
    port = free_port(socket.SOCK_DGRAM)

    async def main() -> None:
        m = ProxyManager(data_dir=tmp_path, health_interval=0.1, health_timeout=0.5)
        await m.start()
        try:
            ep = {
                "name": "dns",
                "protocol": "udp",
                "port": port,
                "stream": {
                    "session_timeout": "2s",
                    "health_check": {"type": "udp_probe", "request": "ping", "expect": "^pong:"},
                },
            }
            await m.add_service("demo", "dns", spec(ep))
            await m.update_backends("dns", [("127.0.0.1", good.port), ("127.0.0.1", wrong.port)])
            await wait_for(lambda: backends_response(m).groups[0].healthy_count == 1)
            healthy = [x.address for x in backends_response(m).groups[0].backends if x.healthy]
            assert healthy == [f"127.0.0.1:{good.port}"]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.settimeout(5)
                for _ in range(3):
                    c.sendto(b"q", ("127.0.0.1", port))
                    assert (await asyncio.to_thread(c.recvfrom, 100))[0] == b"pong:q"
        finally:
            await m.close()

    asyncio.run(main())


def test_tls_stream_gets_a_self_signed_certificate_listed_by_the_api(proxy_l4_tcp_echo, tmp_path) -> None:
    import ssl

    echo = proxy_l4_tcp_echo()
    port = free_port()

    async def main() -> None:
        m = ProxyManager(data_dir=tmp_path)
        try:
            ep = {"name": "s", "protocol": "tcp", "port": port, "host": "db.zlayer.test", "stream": {"tls": True}}
            await m.add_service("demo", "db", spec(ep))
            await m.update_backends("db", [("127.0.0.1", echo.port)])
            tls = tls_response(m)
            assert [c.domain for c in tls.certificates] == ["db.zlayer.test"]
            assert tls.certificates[0].needs_renewal is False and tls.acme_available is False
            ctx = ssl.create_default_context(cafile=str(tmp_path / "certs" / "db.zlayer.test.crt"))

            def talk() -> bytes:
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                    ctx.wrap_socket(raw, server_hostname="db.zlayer.test") as s,
                ):
                    s.sendall(b"secret")
                    return s.recv(10)

            assert await asyncio.to_thread(talk) == b"secret"
        finally:
            await m.close()

    asyncio.run(main())


def test_port_taken_by_another_service_is_refused_and_nothing_changes(tmp_path) -> None:
    port = free_port()

    async def main() -> None:
        m = ProxyManager(data_dir=tmp_path)
        try:
            await m.add_service("demo", "a", spec({"name": "x", "protocol": "tcp", "port": port}))
            with pytest.raises(ProxyError, match=f"tcp port {port} on 127.0.0.1 is already used by service 'a'"):
                await m.add_service("demo", "b", spec({"name": "y", "protocol": "tcp", "port": port}))
            assert m.services() == ["a"]
            with pytest.raises(SpecError) as err:  # a bad endpoint never reaches the proxy: deploy refuses it
                parse_deployable(
                    "version: v1\ndeployment: demo\nservices:\n  c:\n    image: {name: x}\n"
                    "    endpoints: [{name: z, protocol: sctp, port: 1}]\n"
                )
            assert err.value.problems[0].path == "services.c.endpoints[0].protocol"
        finally:
            await m.close()

    asyncio.run(main())


def test_http_endpoints_become_routes_keyed_service_and_endpoint(tmp_path) -> None:
    async def main() -> None:
        m = ProxyManager(data_dir=tmp_path)
        try:
            await m.add_service(
                "demo",
                "web",
                spec(
                    {"name": "site", "protocol": "http", "port": free_port(), "path": "/app", "expose": "public"},
                    {
                        "name": "api",
                        "protocol": "https",
                        "port": free_port(),
                        "host": "api.zlayer.test",
                        "target_port": 9000,
                    },
                ),
            )
            await m.update_backends("web", ["10.200.0.7", "10.200.0.8"])
            routes = routes_response(m)
            assert routes.total == 2
            site, api = routes.routes
            assert (site.path_prefix, site.expose, site.host) == ("/app", "public", None)
            assert api.backends == ["10.200.0.7:9000", "10.200.0.8:9000"]
            groups = {g.service for g in backends_response(m).groups}
            assert groups == {"web#site", "web#api"}
            assert [c.domain for c in tls_response(m).certificates] == ["api.zlayer.test"]
        finally:
            await m.close()

    asyncio.run(main())


def test_changed_stream_options_replace_the_listener_without_cutting_open_connections(
    proxy_l4_tcp_echo, tmp_path
) -> None:
    echo = proxy_l4_tcp_echo()
    port = free_port()

    async def main() -> None:
        m = ProxyManager(data_dir=tmp_path)
        try:
            ep = {"name": "pg", "protocol": "tcp", "port": port}
            await m.add_service("demo", "db", spec(ep))
            await m.update_backends("db", [("127.0.0.1", echo.port)])
            old = socket.create_connection(("127.0.0.1", port), timeout=5)
            old.sendall(b"a")
            assert await asyncio.to_thread(old.recv, 10) == b"a"
            await m.add_service("demo", "db", spec({**ep, "stream": {"proxy_protocol": True}}))
            reply = await asyncio.to_thread(tcp_roundtrip, port, b"new")
            assert reply.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 ") and reply.endswith(b"\r\nnew")
            old.sendall(b"b")  # the connection opened before the change still works
            assert await asyncio.to_thread(old.recv, 10) == b"b"
            old.close()
        finally:
            await m.close()

    asyncio.run(main())


def test_imported_certificate_file_replaces_the_self_signed_one_live(proxy_l4_tcp_echo, tmp_path) -> None:
    import ssl

    from zlayer.proxy.certs import self_signed

    echo = proxy_l4_tcp_echo()
    port = free_port()
    cert, key = self_signed(["db.zlayer.test", "alt.zlayer.test"])
    (tmp_path / "mine.crt").write_bytes(cert)
    (tmp_path / "mine.key").write_bytes(key)

    def talk(cafile) -> bytes:
        ctx = ssl.create_default_context(cafile=str(cafile))
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="db.zlayer.test") as s,
        ):
            s.sendall(b"ok")
            return s.recv(10)

    async def main() -> None:
        m = ProxyManager(data_dir=tmp_path / "data")
        try:
            ep = {"name": "s", "protocol": "tcp", "port": port, "host": "db.zlayer.test", "stream": {"tls": True}}
            await m.add_service("demo", "db", spec(ep))
            await m.update_backends("db", [("127.0.0.1", echo.port)])
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.to_thread(talk, tmp_path / "mine.crt")  # still the generated certificate
            with pytest.raises(ProxyError, match="does not match"):
                await m.add_certificate(
                    "db.zlayer.test", tmp_path / "mine.crt", tmp_path / "data/certs/db.zlayer.test.key"
                )
            await m.add_certificate("db.zlayer.test", tmp_path / "mine.crt", tmp_path / "mine.key")
            assert await asyncio.to_thread(talk, tmp_path / "mine.crt") == b"ok"
        finally:
            await m.close()

    asyncio.run(main())


def test_udp_stream_without_a_health_check_keeps_its_backends_healthy(proxy_l4_udp_echo, tmp_path) -> None:
    echo = proxy_l4_udp_echo()
    port = free_port(socket.SOCK_DGRAM)

    async def main() -> None:
        m = ProxyManager(data_dir=tmp_path, health_interval=0.05, health_timeout=0.2)
        await m.start()
        try:
            await m.add_service("demo", "dns", spec({"name": "d", "protocol": "udp", "port": port}))
            await m.update_backends("dns", [("127.0.0.1", echo.port)])
            await asyncio.sleep(0.5)  # ten check rounds: a TCP probe of a UDP port would have ejected it
            assert backends_response(m).groups[0].healthy_count == 1
        finally:
            await m.close()

    asyncio.run(main())


def test_listener_replacement_under_load_drops_no_connection(proxy_l4_tcp_echo, tmp_path) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    echo = proxy_l4_tcp_echo()
    port = free_port()
    ep = {"name": "pg", "protocol": "tcp", "port": port}
    stop = threading.Event()

    def client(i: int) -> tuple[int, int]:
        ok = bad = 0
        while not stop.is_set():
            payload = b"%d-" % i * 50
            try:
                reply = tcp_roundtrip(port, payload)
            except OSError:
                reply = b""
            if reply.endswith(payload):
                ok += 1
            else:
                bad += 1
        return ok, bad

    async def main() -> None:
        m = ProxyManager(data_dir=tmp_path)
        try:
            await m.add_service("demo", "db", spec(ep))
            await m.update_backends("db", [("127.0.0.1", echo.port)])
            with ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(client, i) for i in range(8)]
                for n in range(10):  # each change of proxy_protocol replaces the listener
                    await asyncio.sleep(0.05)
                    await m.add_service("demo", "db", spec({**ep, "stream": {"proxy_protocol": n % 2 == 0}}))
                await asyncio.sleep(0.05)
                stop.set()
                results = [f.result() for f in futures]
            ok, bad = sum(r[0] for r in results), sum(r[1] for r in results)
            assert bad == 0, f"{bad} of {ok + bad} connections failed across 10 listener replacements"
            assert ok > 50
        finally:
            await m.close()

    asyncio.run(main())


def test_external_block_proxies_to_its_fixed_backends(proxy_l4_tcp_echo, tmp_path) -> None:
    a, b = proxy_l4_tcp_echo(), proxy_l4_tcp_echo()
    port = free_port()

    async def main() -> None:
        m = ProxyManager(data_dir=tmp_path)
        try:
            ext = {
                "backends": [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"],
                "endpoints": [
                    {"name": "db", "protocol": "tcp", "port": port},
                    {"name": "w", "protocol": "http", "port": free_port()},
                ],
            }
            await m.add_external("demo", "legacy-db", ExternalSpec.model_validate(ext))
            for i in range(4):
                assert await asyncio.to_thread(tcp_roundtrip, port, b"%d" % i) == b"%d" % i
            assert (a.accepted, b.accepted) == (2, 2)
            assert routes_response(m).routes[0].backends == [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
            with pytest.raises(SpecError) as err:
                await m.add_external("demo", "bad", ExternalSpec.model_validate({"backends": ["db.local:5432"]}))
            assert err.value.where == "externals.bad.backends[0]"
        finally:
            await m.close()

    asyncio.run(main())
