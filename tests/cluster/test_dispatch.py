"""A deployment on a cluster of three hosts (network namespaces on a bridge, tests/fixtures/netns_cluster.py), as a
user sees it: 6 replicas deployed through one node spread 2/2/2 and answer through every node's proxy; a worker
that loses power (every process of its namespace killed) has its replicas placed again and healthy on the others;
a deployment taken down through a node that runs none of it is gone from every node, and from every node's proxy,
once ``zlayer down`` returns; two deployments whose services share a name each run all their replicas, under ids
distinct in the cluster, and one taken down leaves the other's running; the leader killed, another node leads and a
scale change still applies. Timings: heartbeat 0.5 s, dead after 4 s."""

from __future__ import annotations

import collections
import subprocess

import pytest

from tests.fixtures.netns_cluster import (
    Host,
    NetnsCluster,
    answers,
    backends,
    healthy,
    leader_of,
    placed,
    wait_for,
    who_spec,
)

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.peer]

PORT = 8090


@pytest.fixture(scope="module")
def cluster(netns_cluster: NetnsCluster) -> NetnsCluster:
    netns_cluster.form()
    return netns_cluster


def test_six_replicas_spread_over_three_nodes_and_answer_through_every_proxy(cluster: NetnsCluster) -> None:
    h1, h2, h3 = cluster.hosts
    spec = h2.root / "spread.zlayer.yml"
    spec.write_text(who_spec("spread", 6, PORT))
    out = h2.ok("deploy", str(spec), timeout=180)  # deployed through a node that does not lead
    assert "6/6" in out, out  # it says done once every node's share is healthy
    got = placed(h3, "spread", 6, {"1", "2", "3"})
    assert sorted(collections.Counter(got.values()).values()) == [2, 2, 2], got
    assert healthy(h1, "spread") == got  # every node sees every node's replicas
    table = h1.ok("ps", "-c", "--deployment", "spread")
    assert "NODE" in table.splitlines()[0], table
    for host in cluster.hosts:
        seen = answers(host, PORT)
        assert not [k for k in seen if k.startswith("error")], (host.index, seen)
        assert set(seen) <= set(got), seen
        # the proxy balances over every node's replicas, not only its own
        assert {got[c] for c in seen} - {str(host.index)}, (host.index, seen, got)
    status = h3.ok("status", "spread")
    assert "unschedulable" not in status, status
    # a service no node may take stays pending, and says why, on every node; nothing of it starts anywhere
    nowhere = h1.root / "nowhere.zlayer.yml"
    text = who_spec("nowhere", 2, 8091)
    nowhere.write_text(text + "    node_selector: {labels: {zone: mars}}\n")
    h1.ok("deploy", str(nowhere), timeout=120)
    said = wait_for(lambda: "unschedulable" in (out := h2.ok("status", "nowhere")) and out, 60, "unschedulable")
    assert "zone=mars" in said, said
    assert not h3.json("ps", "--deployment", "nowhere")["containers"]
    h3.ok("down", "nowhere", timeout=120)


def _listening(host: Host, port: int) -> bool:
    """Whether anything in ``host``'s namespace listens on TCP ``port`` (its proxy's listener of an endpoint)."""
    r = subprocess.run(["ip", "netns", "exec", host.ns, "ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                       text=True, check=True)  # fmt: skip
    return bool(r.stdout.strip())


def test_down_through_a_node_without_replicas_returns_once_every_node_stopped_its_share(
    cluster: NetnsCluster,
) -> None:
    hosts = cluster.hosts
    port = 8092
    spec = hosts[0].root / "gone.zlayer.yml"
    # 2 replicas on 3 nodes: one node runs none; busybox httpd as PID 1 ignores SIGTERM, so each replica stops only
    # at the end of its 2 s grace period
    text = who_spec("gone", 2, port).replace("  web:\n", "  site:\n")
    spec.write_text(text.replace("stop_grace_period: 1s", "stop_grace_period: 2s"))
    hosts[0].ok("deploy", str(spec), timeout=180)
    nodes = {str(c["node"]) for c in hosts[0].json("ps", "--deployment", "gone")["containers"]}
    idle = next(h for h in hosts if str(h.index) not in nodes)
    for host in hosts:  # every node's proxy fronts the service, wherever its replicas run
        seen = answers(host, port, 4)
        assert not [k for k in seen if k.startswith("error")], (host.index, seen)

    out = idle.ok("down", "gone", timeout=120)  # its own share is nothing: it waits for the other nodes'
    assert "removed" in out, out
    for host in hosts:
        left = [c["id"] for c in host.json("ps")["containers"] if c.get("deployment") == "gone"]
        assert not left, (host.index, left)
        r = host.zl("status", "gone")
        assert r.returncode != 0 and "not found" in (r.stdout + r.stderr), r.stdout + r.stderr
        assert not _listening(host, port), f"host {host.index}'s proxy still listens on {port}"
        seen = answers(host, port, 2)
        assert all(k.startswith("error") for k in seen), (host.index, seen)
    # the other deployment runs on as it was
    assert len(healthy(hosts[0], "spread")) == 6


def test_two_deployments_with_a_service_of_the_same_name_each_run_all_their_replicas(cluster: NetnsCluster) -> None:
    # a replica's id is `{service}-rep-{n}` whatever its deployment; "spread" already runs a `web` of 6 replicas
    hosts = cluster.hosts
    ports = {"blue": 8093, "green": 8094}
    for i, (name, port) in enumerate(ports.items()):
        spec = hosts[i].root / f"{name}.zlayer.yml"
        spec.write_text(who_spec(name, 3, port))
        out = hosts[i].ok("deploy", str(spec), timeout=180)
        assert "3/3" in out, out
    every = {"1", "2", "3"}
    got = {name: placed(hosts[2], name, want, every) for name, want in (("blue", 3), ("green", 3), ("spread", 6))}
    ids = [c["id"] for c in hosts[2].json("ps")["containers"]]
    assert len(ids) == len(set(ids)) == 12, ids  # one id per replica in the whole cluster
    for name, port in ports.items():  # each answers on its own port, from its own replicas, through every proxy
        for host in hosts:
            seen = answers(host, port, 9)
            assert seen and set(seen) <= set(got[name]), (name, host.index, seen, got[name])
    hosts[1].ok("down", "blue", timeout=120)
    # the other two run on as they were: nothing of theirs stopped with it
    assert placed(hosts[0], "green", 3, every) == got["green"]
    assert placed(hosts[0], "spread", 6, every) == got["spread"]
    for host in hosts:
        seen = answers(host, ports["green"], 6)
        assert seen and set(seen) <= set(got["green"]), (host.index, seen)
    hosts[0].ok("down", "green", timeout=120)


def test_a_worker_that_loses_power_has_its_replicas_placed_again(cluster: NetnsCluster) -> None:
    h1, h2, h3 = cluster.hosts
    h3.kill9()
    got = wait_for(lambda: placed(h1, "spread", 6, {"1", "2"}), 90, "6 healthy replicas on nodes 1 and 2")
    assert sorted(collections.Counter(got.values()).values()) == [3, 3], got
    for host in (h1, h2):
        seen = wait_for(lambda host=host: (s := answers(host, PORT, 12)) and set(s) <= set(got) and s, 30,
                        f"host {host.index}'s proxy sends only to live replicas")  # fmt: skip
        assert seen
    h3.start()  # it comes back empty-handed: what it ran is elsewhere now, nothing runs twice
    wait_for(lambda: [n["status"] for n in h1.json("node", "ls")] == ["ready"] * 3, 60, "node 3 ready again")
    assert wait_for(lambda: placed(h3, "spread", 6, {"1", "2"}), 30, "host 3 sees the replicas where they run") == got


def test_a_node_cut_off_never_leads_its_replicas_move_and_it_rejoins(cluster: NetnsCluster) -> None:
    h1, h2, h3 = cluster.hosts
    cut = next(h for h in (h2, h1) if str(h.index) != leader_of(h3))  # a node that runs replicas and does not lead
    rest = [h for h in cluster.hosts if h is not cut]
    live = {str(h.index) for h in rest}
    subprocess.run(["ip", "link", "set", cut.veth, "down"], check=True)
    try:
        got = wait_for(lambda: placed(rest[0], "spread", 6, live), 90, "6 healthy replicas on the majority's nodes")
        assert leader_of(rest[1]) in live
        # the minority answers reads with what it last knew, and never takes the lead
        assert all(not n["is_leader"] or n["id"] != str(cut.index) for n in cut.json("node", "ls"))
    finally:
        subprocess.run(["ip", "link", "set", cut.veth, "up"], check=True)
    wait_for(lambda: [n["status"] for n in rest[0].json("node", "ls")] == ["ready"] * 3, 60, "the cut node back")
    # back, it learns its replicas run elsewhere now and stops its own: no replica runs twice
    assert wait_for(lambda: placed(cut, "spread", 6, live), 60, "the cut node's view agrees") == got
    assert leader_of(cut) in live


def test_the_leader_killed_another_leads_and_a_scale_still_applies(cluster: NetnsCluster) -> None:
    hosts = cluster.hosts
    first = leader_of(hosts[0])
    leader = hosts[int(first or 0) - 1]
    others = [h for h in hosts if h is not leader]
    leader.kill9()
    chosen = wait_for(lambda: (n := leader_of(others[0])) not in (None, first) and n, 60, "a new leader")
    assert chosen != first
    live = {str(h.index) for h in others}
    wait_for(lambda: placed(others[0], "spread", 6, live), 90, "6 healthy replicas on the two nodes left")
    r = others[1].zl("scale", "web", "4", "-d", "spread", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    got = wait_for(lambda: placed(others[1], "spread", 4, live), 90, "the scale to 4 applied by the new leader")
    assert set(got.values()) == live, got  # both nodes left still run some
    # the other node's proxy hears of the change through the cluster's watch: once it holds the 4, all answer
    wait_for(lambda: backends(others[0]) == 4, 30, "the proxy of the other node with the 4 replicas")
    seen = answers(others[0], PORT, 12)
    assert set(seen) <= set(got), seen
    leader.start()
    wait_for(lambda: placed(leader, "spread", 4, live), 60, "the old leader back, sees the 4 replicas and runs none")
