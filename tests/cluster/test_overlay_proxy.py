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
    with netns_hosts(tmp_path_factory) as c:
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
