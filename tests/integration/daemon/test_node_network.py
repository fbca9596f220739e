"""Node networking for real: a node built inside a network namespace this test creates, "containers" that are
processes in their own network namespaces, veth pairs, addresses, service DNS and a port mapping."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from zlayer.errors import ConflictError
from zlayer.net import DnsServer, NetworkError, NodeNetwork, PortMapping, service_records

pytestmark = [pytest.mark.root]
BUSYBOX = shutil.which("busybox") or "/bin/busybox"


@pytest.fixture
def node_netns() -> Iterator[str]:
    name = f"zlt-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def fetch(url: str) -> list[str]:
    """A one-shot HTTP GET printing the body (busybox wget crashes on this host, so Python does it)."""
    code = f"import sys,urllib.request;sys.stdout.write(urllib.request.urlopen({url!r},timeout=3).read().decode())"
    return [sys.executable, "-c", code]


class Box:
    """A process in a fresh network namespace, standing in for a container's init."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(["unshare", "-n", *argv], start_new_session=True)
        time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def run(self, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", "-t", str(self.pid), "-n", *argv], capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def test_containers_reach_each_other_by_service_name_and_through_a_port_mapping(
    node_netns: str, tmp_path: Path
) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello from web\n")
    web = Box([BUSYBOX, "httpd", "-f", "-p", "8080", "-h", str(www)])
    client = Box(["sleep", "60"])
    net = NodeNetwork(tmp_path / "data", "10.241.7.0/24", node_netns=node_netns)

    async def go() -> None:
        await net.setup()
        ip_web = await net.attach("shop", "web", "web-rep-1", web.pid)
        ip_cli = await net.attach("shop", "cli", "cli-rep-1", client.pid)
        assert (ip_web, ip_cli) == ("10.241.7.2", "10.241.7.3")
        dns = DnsServer(service_records(net.members, net.ipam.leases))
        await dns.start(net.gateway, 53, netns=node_netns)
        try:

            def wget(url: str) -> subprocess.CompletedProcess[str]:
                return client.run(*fetch(url))

            got = await asyncio.to_thread(wget, f"http://{ip_web}:8080/")
            assert got.stdout == "hello from web\n", got.stderr
            look = await asyncio.to_thread(client.run, BUSYBOX, "nslookup", "web.service.local", net.gateway)
            assert "10.241.7.2" in look.stdout, look.stdout + look.stderr
            look = await asyncio.to_thread(client.run, BUSYBOX, "nslookup", "web", net.gateway)
            assert "10.241.7.2" in look.stdout
            miss = await asyncio.to_thread(client.run, BUSYBOX, "nslookup", "nosuch", net.gateway)
            assert miss.returncode != 0 and "10.241.7" not in miss.stdout.split("nosuch")[-1]
            # A mapped port on the node's gateway address reaches the web replica.
            await net.publish("web-rep-1", [PortMapping(18080, 8080)])
            r = subprocess.run(
                ["ip", "netns", "exec", node_netns, *fetch(f"http://{net.gateway}:18080/")],
                capture_output=True, text=True, timeout=10,
            )  # fmt: skip
            assert r.stdout == "hello from web\n", r.stderr
            rules = subprocess.run(["ip", "netns", "exec", node_netns, "nft", "list", "table", "ip", net.table],
                                   capture_output=True, text=True).stdout  # fmt: skip
            assert "masquerade" in rules and "dnat to 10.241.7.2:8080" in rules
            # Detach removes the host side and frees the address for the next replica.
            await net.detach("shop", "web", "web-rep-1")
            assert "web-rep-1" not in net.ipam.leases
            gone = await asyncio.to_thread(wget, f"http://{ip_web}:8080/")
            assert gone.returncode != 0
            assert (
                "dnat"
                not in subprocess.run(
                    ["ip", "netns", "exec", node_netns, "nft", "list", "table", "ip", net.table],
                    capture_output=True,
                    text=True,
                ).stdout
            )
        finally:
            dns.close()
            await net.teardown()

    try:
        asyncio.run(go())
    finally:
        web.kill()
        client.kill()


def test_addresses_survive_a_restart_of_the_network_manager(node_netns: str, tmp_path: Path) -> None:
    one, two = Box(["sleep", "60"]), Box(["sleep", "60"])
    try:

        async def go() -> None:
            net = NodeNetwork(tmp_path / "data", "10.241.8.0/24", node_netns=node_netns)
            ip1 = await net.attach("d", "s", "s-rep-1", one.pid)
            await net.publish("s-rep-1", [PortMapping(18081, 8080), PortMapping(0, 9090, "udp")])
            picked = net.published("s-rep-1")[1].host_port
            assert picked > 0
            # a restarted daemon: same address, same service membership (DNS), same mappings and DNAT rules
            again = NodeNetwork(tmp_path / "data", "10.241.8.0/24", node_netns=node_netns)
            assert again.address_of("s-rep-1") == ip1
            assert again.members == {"s-rep-1": ("d", "s")}
            assert [m.host_port for m in again.published("s-rep-1")] == [18081, picked]
            ip2 = await again.attach("d", "s", "s-rep-2", two.pid)
            assert (ip1, ip2) == ("10.241.8.2", "10.241.8.3")
            rules = subprocess.run(["ip", "netns", "exec", node_netns, "nft", "list", "table", "ip", again.table],
                                   capture_output=True, text=True).stdout  # fmt: skip
            assert "tcp dport 18081 dnat to 10.241.8.2:8080" in rules, rules
            assert f"udp dport {picked} dnat to 10.241.8.2:9090" in rules, rules
            await again.detach("d", "s", "s-rep-1")
            assert NodeNetwork(tmp_path / "data", "10.241.8.0/24", node_netns=node_netns).members == {
                "s-rep-2": ("d", "s")
            }
            await again.teardown()

        asyncio.run(go())
    finally:
        one.kill()
        two.kill()


def nft_tables(netns: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "tables"], capture_output=True, text=True)
    return sorted(out.stdout.split("\n")[:-1])


def test_deployments_and_daemons_reach_each_other_only_through_published_ports(node_netns: str, tmp_path: Path) -> None:
    """Two nodes side by side (two daemons' bridges in one namespace), two deployments on the first: a container
    reaches its own deployment's replicas directly, and everything else only through a published port."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello\n")
    httpd = [BUSYBOX, "httpd", "-f", "-p", "8080", "-h", str(www)]
    sibling, own, stranger, neighbour = Box(httpd), Box(httpd), Box(httpd), Box(httpd)
    one = NodeNetwork(tmp_path / "one", "10.241.9.0/24", node_netns=node_netns)
    two = NodeNetwork(tmp_path / "two", "10.241.10.0/24", node_netns=node_netns)

    def get(box: Box, url: str) -> str:
        r = box.run(*fetch(url))
        return r.stdout if r.returncode == 0 else "unreachable"

    async def go() -> None:
        ip_sibling = await one.attach("shop", "web", "web-rep-1", sibling.pid)
        await one.attach("shop", "client", "client-rep-1", own.pid)
        ip_stranger = await one.attach("blog", "web", "web-rep-2", stranger.pid)
        ip_neighbour = await two.attach("shop", "web", "web-rep-1", neighbour.pid)
        await one.publish("web-rep-2", [PortMapping(18090, 8080)])
        await two.publish("web-rep-1", [PortMapping(18091, 8080)])
        reach = await asyncio.gather(*(asyncio.to_thread(get, own, u) for u in (
            f"http://{ip_sibling}:8080/",  # same deployment, same node
            f"http://{ip_stranger}:8080/",  # another deployment of the node
            f"http://{ip_neighbour}:8080/",  # the same deployment name on another daemon
            f"http://{one.gateway}:18090/",  # the other deployment's published port
            f"http://{one.gateway}:18091/",  # the other daemon's published port
        )))  # fmt: skip
        assert reach == ["hello\n", "unreachable", "unreachable", "hello\n", "hello\n"]
        # Nor the other way: the other daemon's container and the other deployment's
        assert get(neighbour, f"http://{ip_sibling}:8080/") == "unreachable"
        assert get(stranger, f"http://{ip_sibling}:8080/") == "unreachable"
        # A container that routes to another deployment's address through the gateway does not get there either.
        stranger.run("ip", "route", "add", f"{ip_sibling}/32", "via", one.gateway)
        assert get(stranger, f"http://{ip_sibling}:8080/") == "unreachable"
        # Each node's rules are in tables of its own, and a node's teardown removes exactly its own.
        mine = [f"table bridge {one.table}", f"table ip {one.table}"]
        theirs = [f"table bridge {two.table}", f"table ip {two.table}"]
        assert nft_tables(node_netns) == sorted(mine + theirs)
        await one.teardown()
        assert nft_tables(node_netns) == sorted(theirs)
        mapped = subprocess.run(["ip", "netns", "exec", node_netns, *fetch(f"http://{two.gateway}:18091/")],
                                capture_output=True, text=True, timeout=10)  # fmt: skip
        assert mapped.stdout == "hello\n", mapped.stderr

    try:
        asyncio.run(go())
    finally:
        asyncio.run(one.teardown())
        asyncio.run(two.teardown())
        for box in (sibling, own, stranger, neighbour):
            box.kill()


def test_a_host_port_another_service_published_is_refused(node_netns: str, tmp_path: Path) -> None:
    boxes = [Box(["sleep", "60"]) for _ in range(3)]
    net = NodeNetwork(tmp_path / "data", "10.241.11.0/24", node_netns=node_netns)

    async def go() -> None:
        for box, (dep, svc, c) in zip(boxes, [("shop", "web", "web-rep-1"), ("shop", "web", "web-rep-2"),
                                              ("blog", "web", "web-rep-3")], strict=True):  # fmt: skip
            await net.attach(dep, svc, c, box.pid)
        await net.publish("web-rep-1", [PortMapping(18095, 8080)])
        await net.publish("web-rep-2", [PortMapping(18095, 8080)])  # a replica of the same service (rolling in)
        with pytest.raises(NetworkError, match="tcp port 18095 of the node is already published by web-rep-1"):
            await net.publish("web-rep-3", [PortMapping(18095, 8080)])
        await net.publish("web-rep-3", [PortMapping(18095, 8080, "udp")])  # another transport is another port
        assert [m.host_port for m in net.published("web-rep-3")] == [18095]

    try:
        asyncio.run(go())
    finally:
        asyncio.run(net.teardown())
        for box in boxes:
            box.kill()


def test_a_mapped_host_port_is_held_against_other_programs(node_netns: str, tmp_path: Path) -> None:
    box = Box(["sleep", "60"])
    net = NodeNetwork(tmp_path / "data", "10.241.12.0/24", node_netns=node_netns)
    bind = [sys.executable, "-c", "import socket; socket.socket().bind(('0.0.0.0', 18096))"]

    def other_program() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", node_netns, *bind], capture_output=True, text=True, timeout=10)

    async def go() -> None:
        await net.attach("shop", "web", "web-rep-1", box.pid)
        await net.publish("web-rep-1", [PortMapping(18096, 8080)])
        assert "Address already in use" in other_program().stderr  # the DNAT rule's port is the node's
        await net.detach("shop", "web", "web-rep-1")
        assert other_program().returncode == 0
        # and a port another program holds is not mapped over it
        code = "import socket,sys; s=socket.socket(); s.bind(('0.0.0.0', 18096)); s.listen(); print(1, flush=True)\n"
        code += "sys.stdin.read()"
        holder = subprocess.Popen(["ip", "netns", "exec", node_netns, sys.executable, "-c", code],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "1\n"
            await net.attach("shop", "web", "web-rep-1", box.pid)
            taken = (
                r"tcp port 18096 on every address is already taken by another program on this host \(pid \d+, python"
            )
            with pytest.raises(ConflictError, match=taken):
                await net.publish("web-rep-1", [PortMapping(18096, 8080)])
            assert net.published("web-rep-1") == []
        finally:
            holder.kill()
            holder.wait()

    try:
        asyncio.run(go())
    finally:
        asyncio.run(net.teardown())
        box.kill()


def test_a_replica_about_to_stop_refuses_new_connections_to_its_mapping(node_netns: str, tmp_path: Path) -> None:
    """Withdrawn before its container stops, a port mapping answers a new connection with a refusal (a proxy on
    another node tries its next backend) rather than sending it on to an address about to vanish, where it hangs."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("still here\n")
    web = Box([BUSYBOX, "httpd", "-f", "-p", "8080", "-h", str(www)])
    net = NodeNetwork(tmp_path / "data", "10.241.11.0/24", node_netns=node_netns)

    def connect(port: int) -> str:
        probe = (f"import socket;s=socket.socket();s.settimeout(2)\ntry:\n s.connect(({net.gateway!r},{port}));"
                 "print('connected')\nexcept OSError as e:\n print(type(e).__name__)")  # fmt: skip
        r = subprocess.run(["ip", "netns", "exec", node_netns, sys.executable, "-c", probe], capture_output=True,
                           text=True, timeout=10)  # fmt: skip
        return r.stdout.strip()

    async def go() -> None:
        ip = await net.attach("shop", "web", "web-rep-1", web.pid)
        await net.publish("web-rep-1", [PortMapping(18097, 8080), PortMapping(0, 8080)])
        ephemeral = next(m.host_port for m in net.published("web-rep-1") if m.host_port != 18097)
        assert await asyncio.to_thread(connect, 18097) == "connected"
        assert await asyncio.to_thread(connect, ephemeral) == "connected"
        await net.withdraw("web-rep-1")
        assert net.published("web-rep-1") == []
        assert await asyncio.to_thread(connect, 18097) == "ConnectionRefusedError"
        assert await asyncio.to_thread(connect, ephemeral) == "ConnectionRefusedError"
        # the replica itself still serves what reaches it directly (its in-flight requests finish)
        direct = subprocess.run(["ip", "netns", "exec", node_netns, *fetch(f"http://{ip}:8080/")],
                                capture_output=True, text=True, timeout=10)  # fmt: skip
        assert direct.stdout == "still here\n", direct.stderr
        await net.withdraw("web-rep-1")  # twice is harmless (a stop retried)

    try:
        asyncio.run(go())
    finally:
        asyncio.run(net.teardown())
        web.kill()
