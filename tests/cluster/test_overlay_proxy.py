"""Every node's proxy reaches the other nodes' replicas over the encrypted overlay, on three namespace hosts
(tests/fixtures/netns_cluster.py) whose links to each other pass only WireGuard's UDP port and the cluster's own
control ports (etcd's 2379 and 9000, the API's 3669): a replica's host port, open on its node, is dropped between
hosts, yet a request to any node's proxy reaches the replicas of all three, and what crosses between the hosts
carries none of it in plaintext."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.fixtures.netns_cluster import (
    Host,
    NetnsCluster,
    answers,
    ask,
    backend_addresses,
    capture,
    netns_hosts,
    placed,
    wait_for,
    who_spec,
)

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.peer]

PORT = 8096
WG_PORT = 51420  # `serve --wg-port`, ZLayer's default
CONTROL_PORTS = {2379, 9000, 3669}  # etcd's client and peer ports, the daemon's API
PEER_TIMEOUT = 6  # seconds without a handshake before a peer is unhealthy (`serve --overlay-peer-timeout`)
CLUSTER_CIDR = ipaddress.ip_network("10.200.0.0/16")


def _firewall(host: Host, subnet: str) -> None:
    """What reaches ``host`` from the other hosts: WireGuard and the cluster's control ports, nothing else. Filtered
    before DNAT, so a replica's published host port is dropped too."""
    rules = (
        "table inet zltestfw {\n chain pre {\n  type filter hook prerouting priority -150; policy accept;\n"
        f'  iifname "eth0" ip saddr {subnet} udp dport {WG_PORT} accept\n'
        f'  iifname "eth0" ip saddr {subnet} tcp dport {{ {", ".join(map(str, sorted(CONTROL_PORTS)))} }} accept\n'
        f'  iifname "eth0" ip saddr {subnet} ct state established,related accept\n'
        f'  iifname "eth0" ip saddr {subnet} drop\n }}\n}}\n'
    )
    subprocess.run(["ip", "netns", "exec", host.ns, "nft", "-f", "-"], input=rules, text=True, check=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    """Three hosts behind their firewalls, in one cluster, each with the image the deployment runs."""
    with netns_hosts(tmp_path_factory, serve_args=("--overlay-peer-timeout", str(PEER_TIMEOUT))) as c:
        for h in c.hosts:
            _firewall(h, f"{c.subnet}.0/24")
        c.form()
        yield c


def _curl(host: Host, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", host.ns, "curl", "-sS", "--max-time", "2", url],
                          capture_output=True, text=True)  # fmt: skip


def test_every_proxy_reaches_the_replicas_of_every_node_with_only_wireguard_open_between_hosts(
    cluster: NetnsCluster,
) -> None:
    hosts = cluster.hosts
    spec = hosts[0].root / "ovp.zlayer.yml"
    spec.write_text(who_spec("ovp", 6, PORT))
    hosts[0].ok("deploy", str(spec), timeout=240)
    got = placed(hosts[0], "ovp", 6, {"1", "2", "3"})
    assert got is not None and sorted(got.values()) == ["1", "1", "2", "2", "3", "3"], got
    slices = {str(h.index): ipaddress.ip_network(json.loads(h.ok("network", "inspect"))["slice_cidr"]) for h in hosts}

    # the block is real: a replica's host port answers on its own node and is dropped from another
    h1, h2 = hosts[0], hosts[1]
    theirs = next(c for c, n in got.items() if n == "2")
    (mapping,) = json.loads(h2.ok("container", "inspect", theirs))["ports"]
    url = f"http://{h2.addr}:{mapping['host_port']}/who"
    assert _curl(h2, url).stdout.strip() == theirs
    blocked = _curl(h1, url)
    assert blocked.returncode != 0 and theirs not in blocked.stdout

    for host in hosts:
        # the other nodes' replicas are held by their overlay addresses, in their nodes' slices
        def remote(host: Host = host) -> list[str] | None:
            overlay = [a for a in backend_addresses(host) if ipaddress.ip_address(a.rsplit(":", 1)[0]) in CLUSTER_CIDR]
            return overlay if len(overlay) == 4 else None

        held = wait_for(remote, 30, f"host {host.index}'s proxy holding the 4 replicas of the other nodes")
        nodes = sorted(n for a in held for n, s in slices.items() if ipaddress.ip_address(a.rsplit(":", 1)[0]) in s)
        assert nodes == sorted(str(h.index) for h in hosts if h is not host for _ in range(2)), (held, slices)
        assert all(a.endswith(":8080") for a in held), held

        def everyone(host: Host = host) -> bool:
            seen = answers(host, PORT, 12)
            assert not [k for k in seen if k.startswith("error")], (host.index, seen)
            return set(seen) == set(got)

        wait_for(everyone, 30, f"all 6 replicas answering through host {host.index}'s proxy")

    # what crosses between the hosts while node 1's proxy serves from the others: WireGuard and control traffic only
    with capture(h2) as wire:
        seen = answers(h1, PORT, 12)
    assert set(seen) == set(got), seen
    assert b"GET /who" not in wire.raw and not [c for c in got if c.encode() in wire.raw]
    between = [p for p in wire.frames() if {p[0], p[1]} <= {h.addr for h in hosts} and p[0] != p[1]]
    overlay = [p for p in between if p[2] == "udp" and WG_PORT in (p[3], p[4])]
    other = [p for p in between if p not in overlay and not (p[2] == "tcp" and {p[3], p[4]} & CONTROL_PORTS)]
    assert overlay and not other, (len(overlay), other[:10])


def _cut(host: Host) -> None:
    """``host``'s WireGuard traffic dropped both ways; etcd and the API pass as before."""
    rules = (
        "table inet zltestcut {\n"
        f" chain pre {{ type filter hook prerouting priority -160; udp dport {WG_PORT} drop; }}\n"
        f" chain out {{ type filter hook output priority 0; udp dport {WG_PORT} drop; }}\n}}\n"
    )
    subprocess.run(["ip", "netns", "exec", host.ns, "nft", "-f", "-"], input=rules, text=True, check=True)


def _mend(host: Host) -> None:
    subprocess.run(["ip", "netns", "exec", host.ns, "nft", "delete", "table", "inet", "zltestcut"], check=True)


def _health(host: Host) -> dict[str, tuple[bool, list[str]]]:
    """``zlayer network peers`` on ``host``: each peer node's health and allowed-ips."""
    return {p["node"]: (p["healthy"], p["allowed_ips"]) for p in host.json("network", "peers")["peers"]}


def test_a_node_cut_off_from_the_overlay_is_withdrawn_from_the_other_proxies_and_dns_and_returns_by_itself(
    cluster: NetnsCluster,
) -> None:
    h1, h2, h3 = cluster.hosts
    got = placed(h1, "ovp", 6, {"1", "2", "3"})
    assert got is not None
    slice3 = ipaddress.ip_network(json.loads(h3.ok("network", "inspect"))["slice_cidr"])
    mine = next(c for c, n in got.items() if n == "1")
    doc = json.loads(h1.ok("container", "inspect", mine))
    pid = int(doc.get("pid") or doc["state"]["pid"])
    gw = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "route", "show", "default"],
                        capture_output=True, text=True).stdout.split()[2]  # fmt: skip
    everywhere = wait_for(lambda: len(a := ask(pid, gw, 53, "web.service.local")) == 6 and a, 15, "6 replicas in DNS")
    assert _health(h1) == {"2": (True, [json.loads(h2.ok("network", "inspect"))["slice_cidr"]]),
                           "3": (True, [str(slice3)])}  # fmt: skip

    _cut(h3)
    try:
        wait_for(lambda: _health(h1)["3"] == (False, []), 4 * PEER_TIMEOUT, "node 3 unhealthy on node 1")
        assert _health(h1)["2"][0] is True
        row = next(r for r in h1.ok("network", "peers").splitlines() if r.split()[0] == "3")
        assert " no " in row, row
        wait_for(lambda: _health(h3) == {"1": (False, []), "2": (False, [])}, 4 * PEER_TIMEOUT,
                 "both peers unhealthy on node 3")  # fmt: skip
        # node 3 is still a live member of the cluster: only its overlay is gone
        assert {n["id"]: n["status"] for n in h1.json("node", "ls")}["3"] == "ready"
        ones_and_twos = {c for c, n in got.items() if n in ("1", "2")}
        for host in (h1, h2):

            def withdrawn(host: Host = host) -> bool:
                held = backend_addresses(host)
                return len(held) == 4 and not [a for a in held if ipaddress.ip_address(a.rsplit(":", 1)[0]) in slice3]

            wait_for(withdrawn, 15, f"node 3's replicas out of host {host.index}'s proxy")
            seen = answers(host, PORT, 12)
            assert set(seen) == ones_and_twos, (host.index, seen)  # no request failed, none went to node 3
        # node 3's own proxy has only its own replicas left, and answers with them
        wait_for(lambda: len(backend_addresses(h3)) == 2, 15, "host 3's proxy holding its own 2 replicas")
        assert set(answers(h3, PORT, 6)) == {c for c, n in got.items() if n == "3"}
        # service DNS on node 1 answers with the replicas it can reach
        dns = ask(pid, gw, 53, "web.service.local")
        assert len(dns) == 4 and not [a for a in dns if ipaddress.ip_address(a) in slice3], dns
    finally:
        _mend(h3)
    wait_for(lambda: {h: ok for h, (ok, _) in _health(h1).items()} == {"2": True, "3": True}, 4 * PEER_TIMEOUT,
             "node 3 healthy again on node 1")  # fmt: skip
    assert _health(h1)["3"] == (True, [str(slice3)])
    for host in cluster.hosts:
        wait_for(lambda host=host: len(backend_addresses(host)) == 6, 15, f"host {host.index}'s proxy holding all 6")
        wait_for(lambda host=host: set(answers(host, PORT, 12)) == set(got), 15, f"all 6 through host {host.index}")
    assert ask(pid, gw, 53, "web.service.local") == everywhere
