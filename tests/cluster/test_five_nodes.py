"""Five hosts (network namespaces on a bridge, tests/fixtures/netns_cluster.py) as one cluster, as a user drives it:
init and four joins make five ready voters (ZLayer's rule: 5 nodes, 5 voters); 10 replicas deployed through one
node spread 2 to a node and answer through every node's proxy; two hosts that lose power together, the leader one of
them, leave three that keep the quorum: another leads, the 10 replicas run healthy again on the three, and a scale
to 8 still applies. Timings: heartbeat 0.5 s, dead after 4 s."""

from __future__ import annotations

import collections
from collections.abc import Iterator

import pytest

from tests.fixtures.daemon_node import service_image
from tests.fixtures.netns_cluster import (
    Host,
    NetnsCluster,
    answers,
    backends,
    kill9,
    leader_of,
    netns_hosts,
    placed,
    wait_for,
    who_spec,
)

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.peer]

PORT = 8093


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    """Five hosts serving, not in a cluster yet, each with the image the deployment runs."""
    with netns_hosts(tmp_path_factory, size=5) as c:
        for h in c.hosts:
            h.ok("import", str(service_image(h.root / "svc.tar", "v1\n")), "-t", "zlayer-svc/httpd:v1")
        yield c


def _roles(host: Host) -> list[tuple[str, str, str]]:
    return [(n["id"], n["role"], n["status"]) for n in host.json("node", "ls")]


def test_init_and_four_joins_make_five_ready_voters(cluster: NetnsCluster) -> None:
    h1, *rest = cluster.hosts
    assert "leader" in h1.ok("node", "init", "--advertise-addr", h1.addr)
    for h in rest:
        token = h1.ok("node", "generate-join-token", "--ttl", "1h", "-q").strip()
        assert f"node {h.index}" in h.ok("node", "join", h1.api, "--token", token, "--advertise-addr", h.addr)
    for host in cluster.hosts:  # any node answers, and all five say the same: one leader, four voters, all ready

        def five_voters(host: Host = host) -> list[tuple[str, str, str]] | None:
            roles = _roles(host)
            assert [i for i, _, _ in roles] == ["1", "2", "3", "4", "5"], roles
            assert sorted(r for _, r, _ in roles) == ["leader", "voter", "voter", "voter", "voter"], roles
            assert {s for _, _, s in roles} == {"ready"}, roles
            return roles

        wait_for(five_voters, 60, f"5 ready voters seen from host {host.index}")


def test_ten_replicas_spread_over_five_nodes_and_answer_through_every_proxy(cluster: NetnsCluster) -> None:
    hosts = cluster.hosts
    through = next(h for h in hosts if str(h.index) != leader_of(h))  # deployed through a node that does not lead
    spec = through.root / "spread.zlayer.yml"
    spec.write_text(who_spec("spread", 10, PORT))
    out = through.ok("deploy", str(spec), timeout=240)
    assert "10/10" in out, out  # it says done once every node's share is healthy
    everyone = {str(h.index) for h in hosts}
    got = placed(hosts[0], "spread", 10, everyone)
    assert got is not None and sorted(collections.Counter(got.values()).values()) == [2] * 5, got
    for host in hosts:
        assert placed(host, "spread", 10, everyone) == got  # every node sees every node's replicas
        seen = answers(host, PORT, 15)
        assert not [k for k in seen if k.startswith("error")], (host.index, seen)
        assert set(seen) <= set(got), seen
        # the proxy balances over every node's replicas, not only its own
        assert {got[c] for c in seen} - {str(host.index)}, (host.index, seen, got)


def test_two_hosts_lost_with_the_leader_the_three_left_keep_quorum_and_the_replicas(cluster: NetnsCluster) -> None:
    hosts = cluster.hosts
    first = leader_of(hosts[0])
    leader = next(h for h in hosts if str(h.index) == first)
    lost = [leader, next(h for h in reversed(hosts) if h is not leader)]
    left = [h for h in hosts if h not in lost]
    live = {str(h.index) for h in left}
    kill9(*lost)  # both lose power at once: every process of both namespaces ends together
    chosen = wait_for(lambda: (n := leader_of(left[0])) in live and n, 60, "a new leader among the three left")
    gone = {str(h.index) for h in lost}

    def dead(host: Host) -> set[str]:
        return {n["id"] for n in host.json("node", "ls") if n["status"] == "dead"}

    for host in left:  # three of five voters: a quorum; all three agree who leads and who is gone
        wait_for(lambda host=host: leader_of(host) == chosen, 30, f"host {host.index} sees node {chosen} lead")
        wait_for(lambda host=host: dead(host) == gone, 30, f"the two lost nodes dead, as host {host.index} says")
    got = wait_for(lambda: placed(left[1], "spread", 10, live), 120, "10 healthy replicas on the three left")
    assert sorted(collections.Counter(got.values()).values()) == [3, 3, 4], got  # the lost 4 spread over the 3
    for host in left:
        wait_for(lambda host=host: backends(host) == 10, 30, f"host {host.index}'s proxy with the 10 live replicas")
        seen = answers(host, PORT, 12)
        assert set(seen) <= set(got), (host.index, seen)

    # a write still applies: a scale to 8 through a node that does not lead
    via = next(h for h in left if str(h.index) != chosen)
    out = via.ok("scale", "web", "8", "-d", "spread", timeout=120)
    assert "Scaled spread/web" in out, out
    got = wait_for(lambda: placed(left[2], "spread", 8, live), 90, "the scale to 8 applied on the three left")
    assert set(got.values()) == live, got  # each of the three still runs some
    for host in left:
        assert wait_for(lambda host=host: placed(host, "spread", 8, live), 30, f"host {host.index} sees 8") == got
