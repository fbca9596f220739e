"""Networking of a real node (issue 5, item 5). The node lives in a network namespace; a second namespace the test
creates plays "the outside" (a client on the node's LAN, and a server containers reach out to), joined to the node
by a veth pair: node 198.51.100.1/24, outside 198.51.100.2/24.

Checked: service names of the same deployment resolve inside containers (and another deployment's do not); egress
is NATed (the outside server sees the node's address); ``port_mappings`` reach a replica from outside;
``host_network`` runs in the node's namespace; ``expose: public`` answers on every node address while ``internal``
answers only on the node's internal side; requests to ``NODE:PORT`` are balanced over healthy replicas only."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.daemon_live import HTTPD, LiveNode, web_spec
from tests.fixtures.daemon_node import unique

pytestmark = [pytest.mark.root, pytest.mark.slow]

NODE_IP, OUT_IP = "198.51.100.1", "198.51.100.2"
IMAGE = "{name: 'zlayer-svc/httpd:v1', pull_policy: never}"


class Outside:
    def __init__(self, node_ns: str) -> None:
        self.ns = f"zlout-{uuid.uuid4().hex[:8]}"
        tag = uuid.uuid4().hex[:6]
        a, b = f"zlo{tag}a", f"zlo{tag}b"
        run = ["ip", "netns", "exec"]
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        subprocess.run([*run, self.ns, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "link", "add", a, "netns", node_ns, "type", "veth", "peer", "name", b, "netns", self.ns],
                       check=True)  # fmt: skip
        subprocess.run([*run, node_ns, "ip", "addr", "add", f"{NODE_IP}/24", "dev", a], check=True)
        subprocess.run([*run, node_ns, "ip", "link", "set", a, "up"], check=True)
        subprocess.run([*run, self.ns, "ip", "addr", "add", f"{OUT_IP}/24", "dev", b], check=True)
        subprocess.run([*run, self.ns, "ip", "link", "set", b, "up"], check=True)

    def run(self, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", f"--net=/run/netns/{self.ns}", *argv], capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip

    def get(self, url: str) -> str:
        code = (
            "import sys,urllib.request\ntry:\n"
            f" sys.stdout.write(urllib.request.urlopen({url!r},timeout=3).read().decode())\n"
            "except Exception as e:\n print('ERR', type(e).__name__, e)"
        )
        return self.run(sys.executable, "-c", code).stdout

    @contextlib.contextmanager
    def peer_server(self) -> Iterator[tuple[int, Path]]:
        """A TCP server outside that writes each client's address to a file and answers 'outside'."""
        port = 47000 + int(uuid.uuid4().hex[:3], 16) % 2000
        log = Path(f"/tmp/zlout-{uuid.uuid4().hex[:8]}.log")
        code = (
            "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            f"s.bind(('{OUT_IP}',{port}));s.listen(8)\n"
            "while True:\n c,a=s.accept()\n"
            f" open({str(log)!r},'a').write(a[0]+'\\n')\n"
            " c.sendall(b'HTTP/1.0 200 OK\\r\\n\\r\\noutside');c.close()\n"
        )
        proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.ns}", sys.executable, "-c", code])
        try:
            time.sleep(0.5)
            yield port, log
        finally:
            proc.kill()
            proc.wait()
            log.unlink(missing_ok=True)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], check=False)


@pytest.fixture(scope="module")
def outside(daemon_live: LiveNode) -> Iterator[Outside]:
    o = Outside(daemon_live.ns)
    try:
        yield o
    finally:
        o.close()


def test_service_names_resolve_inside_containers_and_egress_is_natted(
    daemon_live: LiveNode, daemon_live_names: list[str], outside: Outside
) -> None:
    node, name, other = daemon_live, unique("dns"), unique("dns2")
    daemon_live_names += [name, other]
    node.deploy(web_spec(name, 2) + web_spec(name, 1).split("services:\n", 1)[1].replace("  web:\n", "  client:\n"))
    node.deploy(web_spec(other, 1).replace("  web:\n", "  api:\n"))
    node.expect(name)
    node.expect(other)
    web_ips = sorted(c["ipv4"] for c in node.containers(name, "web"))
    [api] = node.containers(other, "api")
    look = node.exec_in(name, "client", "/bin/busybox nslookup web")
    assert all(ip in str(look["stdout"]) for ip in web_ips), look
    one = node.exec_in(name, "client", "/bin/busybox nslookup 2.web.service.local")
    assert str(one["stdout"]).count("Address") >= 1 and node.containers(name, "web")[1]["ipv4"] in str(one["stdout"])
    # another deployment's service is not visible by name
    miss = node.exec_in(name, "client", "/bin/busybox nslookup api")
    assert api["ipv4"] not in str(miss["stdout"]) and miss["exit_code"] != 0, miss
    # by name, over the node network, container to container
    body = node.exec_in(name, "client", "/bin/busybox wget -q -O- http://web:8080/")
    assert body["stdout"] == "v1\n", body

    # egress: a container reaches a server outside the node; the server sees the node's address (masquerade)
    with outside.peer_server() as (port, log):
        got = node.exec_in(name, "client", f"/bin/busybox wget -q -O- http://{OUT_IP}:{port}/")
        assert got["stdout"] == "outside", got
        assert log.read_text().split() == [NODE_IP], log.read_text()
    rules = node.sh("nft", "list", "ruleset").stdout
    assert "masquerade" in rules


def test_port_mappings_and_host_network_from_outside(
    daemon_live: LiveNode, daemon_live_names: list[str], outside: Outside
) -> None:
    node, name = daemon_live, unique("pm")
    daemon_live_names.append(name)
    host_port, hn_port = node.free_port(), node.free_port()
    hn_httpd = f"exec /bin/busybox httpd -f -p {hn_port} -h /www"
    node.deploy(
        web_spec(name, 1, extra=f"    port_mappings: [{{container_port: 8080, host_port: {host_port}}}]\n")
        + f"  hostnet:\n    image: {IMAGE}\n    host_network: true\n"
        f"    command: {{entrypoint: ['/bin/sh', '-c'], args: [{hn_httpd!r}]}}\n    stop_grace_period: 1s\n"
        "    scale: {mode: fixed, replicas: 1}\n"
        f"    health: {{start_grace: 0s, interval: 1s, check: {{type: tcp, port: {hn_port}}}}}\n"
    )
    node.expect(name)
    # the mapped port on the node's LAN address reaches the replica, from another machine
    assert outside.get(f"http://{NODE_IP}:{host_port}/") == "v1\n"
    # host_network: no address of its own, the node's interfaces, its port open on the node itself
    [hn] = node.containers(name, "hostnet")
    assert not hn["ipv4"], hn
    ifs = node.exec_in(name, "hostnet", "cat /proc/net/dev")
    assert NODE_IP not in str(ifs["stdout"])  # (addresses are not in /proc/net/dev; names are)
    node_ifs = node.sh("cat", "/proc/net/dev").stdout
    assert sorted(ln.split(":")[0].strip() for ln in str(ifs["stdout"]).splitlines()[2:]) == sorted(
        ln.split(":")[0].strip() for ln in node_ifs.splitlines()[2:]
    )
    assert node.get(hn_port)[0] == 200  # 127.0.0.1:hn_port inside the node's namespace
    assert outside.get(f"http://{NODE_IP}:{hn_port}/") == "v1\n"


def test_public_and_internal_endpoints_and_balancing_over_healthy_replicas(
    daemon_live: LiveNode, daemon_live_names: list[str], outside: Outside
) -> None:
    node, name = daemon_live, unique("ep")
    daemon_live_names.append(name)
    pub, internal = node.free_port(), node.free_port()
    per_replica = "mkdir -p /tmp/w && /bin/busybox hostname > /tmp/w/index.html && echo ok > /tmp/w/ok && " + (
        "exec /bin/busybox httpd -f -p 8080 -h /tmp/w"
    )
    node.deploy(
        f"version: v1\ndeployment: {name}\nservices:\n"
        f"  web:\n    image: {IMAGE}\n    command: {{entrypoint: ['/bin/sh', '-c'], args: [{per_replica!r}]}}\n"
        "    stop_grace_period: 1s\n"
        f"    endpoints: [{{name: http, protocol: http, port: {pub}, target_port: 8080, expose: public}}]\n"
        "    scale: {mode: fixed, replicas: 3}\n"
        "    health: {start_grace: 0s, interval: 500ms, timeout: 1s, retries: 1,\n"
        "             check: {type: http, url: 'http://localhost:8080/ok'}}\n"
        f"  admin:\n    image: {IMAGE}\n    command: {{entrypoint: ['/bin/sh', '-c'], args: [{HTTPD!r}]}}\n"
        "    stop_grace_period: 1s\n"
        f"    endpoints: [{{name: adm, protocol: tcp, port: {internal}, target_port: 8080, expose: internal}}]\n"
        "    scale: {mode: fixed, replicas: 1}\n"
        "    health: {start_grace: 0s, interval: 1s, check: {type: tcp, port: 8080}}\n"
    )
    node.expect(name)
    # public: on every address of the node, from the node and from outside
    assert node.get(pub)[0] == 200
    assert outside.get(f"http://{NODE_IP}:{pub}/").startswith("web-rep-")
    # internal: on the node's internal side only
    assert node.get(internal) == (200, "v1\n")
    refused = outside.get(f"http://{NODE_IP}:{internal}/")
    assert refused.startswith("ERR"), refused

    # balanced over the healthy replicas
    seen = Counter(outside.get(f"http://{NODE_IP}:{pub}/").strip() for _ in range(30))
    assert set(seen) == {"web-rep-1", "web-rep-2", "web-rep-3"} and min(seen.values()) >= 5, seen
    # web-rep-2 fails its health check: it leaves the rotation, the others keep serving
    node.exec_in(name, "web", "rm /tmp/w/ok", replica=2)
    node.wait_for(
        lambda: [c for c in node.containers(name, "web") if c["id"] == "web-rep-2"
                 and c["health"]["status"] == "unhealthy"],
        20, "web-rep-2 unhealthy",
    )  # fmt: skip
    time.sleep(1.0)
    seen = Counter(outside.get(f"http://{NODE_IP}:{pub}/").strip() for _ in range(20))
    assert set(seen) == {"web-rep-1", "web-rep-3"}, seen
