"""The cluster's encrypted overlay on two namespace hosts (tests/fixtures/netns_cluster.py): each node claims a slice
of 10.200.0.0/16 in etcd and brings up its userspace WireGuard interface with the other as a peer; a container on
node 1 reaches a container on node 2 by its overlay address, and on the wire between the hosts that exchange is
WireGuard UDP only — its plaintext appears in no captured packet; service names resolve, on every node, to the
overlay addresses of the replicas on all nodes; ``zlayer network`` shows the peers with their handshake age."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import uuid
from typing import Any

import pytest

from tests.fixtures.daemon_node import service_image
from tests.fixtures.netns_cluster import Host, NetnsCluster, ask, capture, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.peer]

CONTROL_PORTS = {2379, 9000, 3669}  # etcd's client and peer ports, the daemon's API: the cluster's own traffic
WG_PORT = 51420  # `serve --wg-port`, ZLayer's default
MARKER = "overlay-" + uuid.uuid4().hex
IDS: dict[int, str] = {}


def _overlay(host: Host) -> dict[str, Any]:
    """``zlayer network inspect``: the node's overlay, its peers and its addresses."""
    doc: dict[str, Any] = json.loads(host.ok("network", "inspect"))
    return doc


def _wg_show(host: Host) -> str:
    """What the node's interface says through its UAPI socket (``wg show``'s source)."""
    out = []
    for sock in (host.data / "overlay" / "uapi").glob("*.sock"):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock))
            s.sendall(b"get=1\n\n")
            out.append(s.recv(65536).decode())
    return f"host {host.index}: " + "".join(out)


def _pid(host: Host, name: str) -> int:
    doc = json.loads(host.ok("container", "inspect", name))
    return int(doc.get("pid") or doc["state"]["pid"])


@pytest.fixture(scope="module")
def pair(netns_cluster: NetnsCluster) -> tuple[Host, Host]:
    h1, h2, _ = netns_cluster.hosts
    h1.ok("node", "init", "--advertise-addr", h1.addr)
    token = h1.ok("node", "generate-join-token", "--ttl", "1h", "-q").strip()
    h2.ok("node", "join", h1.api, "--token", token, "--advertise-addr", h2.addr)
    for i, h in enumerate((h1, h2), 1):
        h.ok("import", str(service_image(h.root / "svc.tar", f"{MARKER}-{i}\n")), "-t", "zlayer-svc/httpd:v1")
        out = h.ok("container", "create", "--name", f"ov{i}", "--pull", "never", "zlayer-svc/httpd:v1",
                   "/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www")  # fmt: skip
        IDS[i] = out.split()[-1]
    return h1, h2


def test_slices_are_distinct_and_each_node_peers_with_the_other(pair: tuple[Host, Host]) -> None:
    h1, h2 = pair
    s1, s2 = (ipaddress.ip_network(_overlay(h)["slice_cidr"]) for h in pair)
    assert s1 != s2 and s1.subnet_of(ipaddress.ip_network("10.200.0.0/16")) and s1.prefixlen == 28
    for h, mine, other, theirs in ((h1, s1, h2, s2), (h2, s2, h1, s1)):
        ov = _overlay(h)
        assert ov["node_ip"] == str(next(mine.hosts())) and ov["mtu"] == 1420
        (addr,) = ov["ip_alloc"]["containers"].values()
        assert ipaddress.ip_address(addr) in mine and addr in ov["ip_alloc"]["allocated_ips"]
        (peer,) = ov["peers"]
        assert peer["node"] == str(other.index) and peer["endpoint"] == f"{other.addr}:{WG_PORT}"
        assert peer["allowed_ips"] == [str(theirs)]
        link = subprocess.run(["ip", "-n", h.ns, "-o", "link", "show", "type", "tun"], capture_output=True, text=True)
        assert " mtu 1420 " in link.stdout, link.stdout


def test_a_container_reaches_one_on_another_node_by_overlay_address_and_the_wire_carries_only_wireguard(
    pair: tuple[Host, Host],
) -> None:
    h1, h2 = pair
    (target,) = _overlay(h2)["ip_alloc"]["containers"].values()
    with capture(h2) as wire:  # every frame on node 2's link to the other hosts
        pid = _pid(h1, IDS[1])

        def fetch() -> str:
            r = subprocess.run(["nsenter", "-t", str(pid), "-n", "curl", "-sS", "--max-time", "3",
                                f"http://{target}:8080/"], capture_output=True, text=True)  # fmt: skip
            assert r.returncode == 0, r.stderr
            return r.stdout.strip()

        try:
            got = wait_for(fetch, 30, "node 2's container over the overlay")
        except AssertionError as e:
            raise AssertionError(f"{e}\n" + "\n".join(_wg_show(h) for h in pair)) from None
        assert got == f"{MARKER}-2"
    assert MARKER.encode() not in wire.raw and b"GET / HTTP" not in wire.raw
    between = [p for p in wire.frames() if {p[0], p[1]} == {h1.addr, h2.addr}]
    overlay = [p for p in between if p[2] == "udp" and WG_PORT in (p[3], p[4])]
    other = [p for p in between if p not in overlay and not (p[2] == "tcp" and {p[3], p[4]} & CONTROL_PORTS)]
    assert overlay and not other, (len(overlay), other[:10])


def test_network_peers_shows_a_fresh_handshake_and_health_and_a_node_outside_a_cluster_says_it_has_no_overlay(
    pair: tuple[Host, Host], netns_cluster: NetnsCluster
) -> None:
    h1, h2 = pair
    (peer,) = h1.json("network", "peers")["peers"]  # after the exchange above, a handshake was made
    assert peer["healthy"] is True and 0 <= peer["last_handshake_secs"] < 120 and peer["rx_bytes"] > 0
    table = h1.ok("network", "peers").splitlines()
    assert table[0].split()[:4] == ["NODE", "ENDPOINT", "ALLOWED", "IPS"]
    assert table[1].split()[:2] == ["2", f"{h2.addr}:{WG_PORT}"] and " yes " in table[1]
    status = h2.ok("network", "status")
    assert "peers:       1/1 healthy" in status and "mtu:         1420" in status
    assert [n["name"] for n in h2.json("network", "ls")] == ["overlay"]
    outside = netns_cluster.hosts[2].zl("network", "status")
    assert outside.returncode != 0 and "overlay network is not initialized" in outside.stderr
    assert "Traceback" not in outside.stderr
    assert netns_cluster.hosts[2].json("network", "dns")["enabled"] is False


def test_service_names_resolve_to_overlay_addresses_of_replicas_on_every_node(pair: tuple[Host, Host]) -> None:
    h1, h2 = pair
    a1 = _overlay(h1)["ip_alloc"]["containers"][IDS[1]]
    a2 = _overlay(h2)["ip_alloc"]["containers"][IDS[2]]
    p1, p2 = _pid(h1, IDS[1]), _pid(h2, IDS[2])
    gw = subprocess.run(["nsenter", "-t", str(p1), "-n", "ip", "route", "show", "default"],
                        capture_output=True, text=True).stdout.split()[2]  # fmt: skip
    # node 1's DNS (the container's resolver, on its gateway) answers for a replica on node 2 by overlay address
    assert wait_for(lambda: ask(p1, gw, 53, "ov2.service.local") == [a2], 10, "ov2 in node 1's DNS")
    assert ask(p1, gw, 53, "ov2") == [a2] and ask(p1, gw, 53, "ov1") == [a1]
    # ZLayer's port 15353 on the node's overlay address, asked across the overlay from node 2's container
    node1 = _overlay(h1)["node_ip"]
    assert ask(p2, node1, 15353, "ov2.service.local") == [a2]
    assert ask(p2, node1, 15353, "ov1.service.local") == [a1]
    assert ask(p2, node1, 15353, "nothing-here.service.local") == ["rcode 3"]
    dns = h1.json("network", "dns")
    assert dns["enabled"] and dns["port"] == 15353 and dns["bind_addrs"] == ["127.0.0.1", node1]
    assert {"ov1.service.local", "ov2.service.local", "ov2"} <= set(dns["services"])
    assert "ov2.service.local" in h2.ok("network", "dns")


SPEC = (
    "version: v1\ndeployment: ovdep\nservices:\n  web:\n"
    "    image: {name: 'zlayer-svc/httpd:v1', pull_policy: never}\n"
    "    command: {entrypoint: ['/bin/sh', '-c'], args: ['/bin/busybox hostname > /www/who && "
    "exec /bin/busybox httpd -f -p 8080 -h /www']}\n"
    "    stop_grace_period: 1s\n"
    "    endpoints: [{name: http, protocol: http, port: 8095, target_port: 8080}]\n"
    "    scale: {mode: fixed, replicas: 2}\n"
    "    health: {start_grace: 0s, interval: 1s, timeout: 1s, retries: 2, check: {type: tcp, port: 8080}}\n"
)


def test_a_deployments_replicas_on_two_nodes_find_and_reach_each_other_by_name_over_the_overlay(
    pair: tuple[Host, Host],
) -> None:
    h1 = pair[0]
    spec = h1.root / "ovdep.zlayer.yml"
    spec.write_text(SPEC)
    h1.ok("deploy", str(spec), timeout=180)
    reps = {c["id"]: str(c.get("node")) for c in h1.json("ps", "--deployment", "ovdep")["containers"]}
    assert sorted(reps.values()) == ["1", "2"], reps  # one replica per node
    mine = next(c for c, n in reps.items() if n == "1")
    pid = _pid(h1, mine)
    gw = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "route", "show", "default"],
                        capture_output=True, text=True).stdout.split()[2]  # fmt: skip
    addrs = wait_for(lambda: len(a := ask(pid, gw, 53, "web.service.local")) == 2 and a, 15, "both replicas")
    slices = [ipaddress.ip_network(_overlay(h)["slice_cidr"]) for h in pair]
    assert sorted(any(ipaddress.ip_address(a) in s for a in addrs) for s in slices) == [True, True], addrs
    assert ask(pid, gw, 53, "web.service.local") == ask(pid, gw, 53, "web")
    assert ask(pid, gw, 53, "web.service.local") != ask(pid, gw, 53, "ov2.service.local")  # not the standalone's
    who = set()
    for a in addrs:
        r = subprocess.run(["nsenter", "-t", str(pid), "-n", "curl", "-sS", "--max-time", "3",
                            f"http://{a}:8080/who"], capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 0, (a, r.stderr)
        who.add(r.stdout.strip())
    assert len(who) == 2, who  # two different replicas answered, one of them on the other node
    # where the service's overlay ends on each of the two nodes: its WireGuard interface, slice and address
    code, doc = _api(h1, "/api/v1/overlay/services/web")
    assert code == 200 and doc["mode"] == "shared", doc
    ovs = {str(h.index): _overlay(h) for h in pair}
    want = {n: {"node_id": n, "name": o["interface"], "subnet": o["slice_cidr"], "gateway": o["node_ip"]}
            for n, o in ovs.items()}  # fmt: skip
    assert doc["bridges_by_node"] == want, doc
    assert _api(pair[1], "/api/v1/overlay/services/web/bridges/1") == (200, want["1"])
    code, doc = _api(h1, "/api/v1/overlay/services/nothing-here")
    assert code == 404 and "nothing-here" in json.dumps(doc), doc
    h1.ok("down", "ovdep", timeout=120)
    assert _api(h1, "/api/v1/overlay/services/web/bridges/2")[0] == 404  # no replica left: no bridge


def _api(host: Host, path: str) -> tuple[int, Any]:
    """``GET path`` on ``host``'s API through its local socket: the status code and the JSON body."""
    from zlayer.paths import Paths

    sock = str(Paths.resolve(host.data).socket)
    r = subprocess.run(["curl", "-sS", "--unix-socket", sock, "-w", "\\n%{http_code}", f"http://zlayer{path}"],
                       capture_output=True, text=True, check=True)  # fmt: skip
    body, _, code = r.stdout.rpartition("\n")
    return int(code), json.loads(body)


def test_a_restarted_daemon_brings_the_overlay_back_for_the_replicas_it_re_adopts(pair: tuple[Host, Host]) -> None:
    h1, h2 = pair
    target = _overlay(h2)["ip_alloc"]["containers"][IDS[2]]
    h2.stop()
    h2.start()
    assert _overlay(h2)["ip_alloc"]["containers"][IDS[2]] == target
    pid = _pid(h1, IDS[1])

    def fetch() -> str:
        r = subprocess.run(["nsenter", "-t", str(pid), "-n", "curl", "-sS", "--max-time", "3",
                            f"http://{target}:8080/"], capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    assert wait_for(fetch, 30, "node 2's re-adopted container over the overlay") == f"{MARKER}-2"
