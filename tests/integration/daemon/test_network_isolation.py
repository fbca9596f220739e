"""Containers of different deployments and of different daemons on one host do not reach each other, except through
what is published (issue 11, item 5). Two real daemons share one network namespace (each with its own data dir,
bridge and /24), and everything is tried from inside busybox containers."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator

import pytest

from tests.fixtures.daemon_live import LiveNode, live_node, web_spec
from tests.fixtures.daemon_node import unique
from zlayer.net import NodeNetwork

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def two_daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveNode, LiveNode]]:
    """Two daemons in one namespace; deleting the namespace at the end takes any bridge or table left with it."""
    with live_node(tmp_path_factory.mktemp("isol-a")) as a, live_node(tmp_path_factory.mktemp("isol-b"), ns=a.ns) as b:
        yield a, b


def number(node: LiveNode, name: str, service: str) -> int:
    """The replica number of the service's first replica (numbers are unique on a node, across deployments)."""
    return min(int(c["id"].rsplit("-", 1)[1]) for c in node.containers(name, service))


def fetch(node: LiveNode, name: str, service: str, host: str, port: int, replica: int = 0) -> str:
    """What a replica gets for ``http://host:port/`` (busybox wget; its -T crashes here, hence timeout), or
    ``unreachable``."""
    get = f"/bin/busybox timeout 3 /bin/busybox wget -q -O- http://{host}:{port}/"
    got = node.exec_in(name, service, get, replica or number(node, name, service))
    return str(got["stdout"]) if got["exit_code"] == 0 else "unreachable"


def connects(node: LiveNode, name: str, service: str, host: str, port: int) -> bool:
    """Whether a replica opens a TCP connection to ``host:port`` (busybox nc)."""
    got = node.exec_in(name, service, f"echo | /bin/busybox nc -w 3 {host} {port}", number(node, name, service))
    return got["exit_code"] == 0


def tables(node: LiveNode) -> str:
    return node.sh("nft", "list", "tables").stdout


def own_tables(node: LiveNode) -> list[str]:
    """The nftables tables the daemon's node network keeps (named after its bridge)."""
    table = NodeNetwork(node.data).table
    return [f"table ip {table}", f"table bridge {table}"]


def test_replicas_reach_their_own_deployment_and_only_published_ports_of_others(
    two_daemons: tuple[LiveNode, LiveNode],
) -> None:
    a, b = two_daemons
    shop, blog, other = unique("shop"), unique("blog"), unique("other")
    blog_port, other_endpoint, other_mapped = a.free_port(), a.free_port(), a.free_port()
    mapping = f"    port_mappings: [{{container_port: 8080, host_port: {other_mapped}}}]\n"
    try:
        a.deploy(web_spec(shop, 2))
        a.deploy(web_spec(blog, 1, port=blog_port))
        b.deploy(web_spec(other, 1, port=other_endpoint, extra=mapping))
        for node, name in ((a, shop), (a, blog), (b, other)):
            node.expect(name)
        sibling = a.containers(shop, "web")[1]["ipv4"]
        [stranger] = [c["ipv4"] for c in a.containers(blog, "web")]
        [neighbour] = [c["ipv4"] for c in b.containers(other, "web")]
        gateway = sibling.rsplit(".", 1)[0] + ".1"

        # its own deployment's replica, directly
        assert fetch(a, shop, "web", sibling, 8080) == "v1\n"
        # another deployment of the same daemon, and a deployment of another daemon: not directly
        assert fetch(a, shop, "web", stranger, 8080) == "unreachable"
        assert fetch(a, shop, "web", neighbour, 8080) == "unreachable"
        assert not connects(a, shop, "web", neighbour, 8080)
        assert fetch(b, other, "web", sibling, 8080) == "unreachable"
        assert fetch(a, blog, "web", sibling, 8080) == "unreachable"
        # ... but through what they publish: endpoints (the proxy) and port mappings, on an address of the node
        assert fetch(a, shop, "web", gateway, blog_port) == "v1\n"
        assert fetch(a, shop, "web", gateway, other_endpoint) == "v1\n"
        assert fetch(a, shop, "web", gateway, other_mapped) == "v1\n"
        # and the replicas still reach their own siblings by service name
        assert fetch(a, shop, "web", "web", 8080, replica=2) == "v1\n"
    finally:
        a.delete(shop)
        a.delete(blog)
        b.delete(other)


def test_isolation_holds_across_a_daemon_restart_and_its_rules_are_its_own(
    two_daemons: tuple[LiveNode, LiveNode],
) -> None:
    a, b = two_daemons
    shop, other = unique("shop"), unique("other")
    mine, theirs = own_tables(a), own_tables(b)
    try:
        a.deploy(web_spec(shop, 2))
        b.deploy(web_spec(other, 1))
        a.expect(shop)
        b.expect(other)
        [neighbour] = [c["ipv4"] for c in b.containers(other, "web")]
        sibling = a.containers(shop, "web")[1]["ipv4"]
        assert all(t in tables(a) for t in mine + theirs), tables(a)

        # The daemon stops: its replicas keep running, isolated (the rules stay in the kernel).
        assert a.signal_and_wait(signal.SIGTERM) == 0
        assert all(t in tables(a) for t in mine), tables(a)
        assert fetch(b, other, "web", sibling, 8080) == "unreachable"
        # Its tables are lost while it is away; the daemon that starts again puts them back before it re-adopts.
        for t in mine:
            subprocess.run(["ip", "netns", "exec", a.ns, "nft", "delete", *t.split()], check=True)
        a.start()
        a.wait_for(lambda: a.request("GET", "/health/ready")[0] == 200, 30, "the restarted daemon to re-adopt")
        a.expect(shop)
        assert all(t in tables(a) for t in mine), tables(a)
        assert fetch(b, other, "web", sibling, 8080) == "unreachable"
        assert fetch(a, shop, "web", neighbour, 8080) == "unreachable"
        assert fetch(a, shop, "web", sibling, 8080) == "v1\n"
        assert fetch(a, shop, "web", "web", 8080, replica=2) == "v1\n"  # service DNS is back for re-adopted ones

        # A replica added after the restart joins its deployment (and the re-adopted ones keep theirs).
        a.api("POST", f"/api/v1/deployments/{shop}/services/web/scale", {"replicas": 3})
        third = a.wait_for(lambda: [c["ipv4"] for c in a.containers(shop, "web") if c["id"].endswith("-3")], 30,
                           "a third replica")[0]  # fmt: skip
        assert fetch(a, shop, "web", third, 8080) == "v1\n"
        assert fetch(a, shop, "web", sibling, 8080, replica=3) == "v1\n"
        assert fetch(b, other, "web", third, 8080) == "unreachable"
    finally:
        a.delete(shop)
        b.delete(other)
    # Tables of a node whose last replica went stay (the next replica needs them); the other node's are untouched.
    assert all(t in tables(a) for t in theirs)


def test_a_port_another_daemon_publishes_is_refused_naming_that_daemon(two_daemons: tuple[LiveNode, LiveNode]) -> None:
    a, b = two_daemons
    first, second = unique("first"), unique("second")
    endpoint, mapped = a.free_port(), a.free_port()
    mapping = f"    port_mappings: [{{container_port: 8080, host_port: {mapped}}}]\n"
    assert a.proc is not None
    # the endpoint's listener is held by a's proxy (its data-plane process), the mapped port by a's daemon itself
    holders = [f"the proxy of the zlayer daemon with run dir {a.data / 'run'} (its data-plane process, pid ",
               f"another program on this host (pid {a.proc.pid}, python"]  # fmt: skip
    try:
        a.deploy(web_spec(first, 1, port=endpoint, extra=mapping))
        a.expect(first)
        specs = (web_spec(second, 1, port=endpoint), web_spec(second, 1, extra=mapping))
        for spec, holder in zip(specs, holders, strict=True):
            status, body = b.request("POST", "/api/v1/deployments", {"spec": spec})
            assert status == 409 and holder in body["message"], (status, body)
    finally:
        a.delete(first)
        b.delete(second)
