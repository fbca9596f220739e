"""Three hosts (network namespaces on a bridge, tests/fixtures/netns_cluster.py) become one cluster with ZLayer's
commands, as a user would drive it: init and two joins, every kind of bad join refused with nothing left behind,
a host that loses power turns dead and comes back by itself, a killed leader is replaced and writes go on, and the
last host standing takes over with force-leader. The cluster's timings here: heartbeat 0.5 s, dead after 4 s."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon_live import web_spec
from tests.fixtures.daemon_node import service_image
from tests.fixtures.netns_cluster import NetnsCluster, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.peer]


def _nodes(host: Any) -> dict[str, dict[str, Any]]:
    return {n["id"]: n for n in host.json("node", "ls")}


def _roles(host: Any) -> dict[str, tuple[str, str]]:
    return {i: (n["role"], n["status"]) for i, n in _nodes(host).items()}


def _services(host: Any) -> list[tuple[str, str, int]]:
    return [(s["name"], s["status"], s["replicas"]) for s in host.json("ps")["services"]]


def _etcd_pids(host: Any) -> list[int]:
    out = []
    for pid in host.pids():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "etcd":
                out.append(pid)
    return out


def _token(host: Any, ttl: str = "1h") -> str:
    return host.ok("node", "generate-join-token", "--ttl", ttl, "-q").strip()


def test_init_and_two_joins_make_a_cluster_of_three_ready_voters(netns_cluster: NetnsCluster) -> None:
    h1, h2, h3 = netns_cluster.hosts
    r = h1.zl("node", "ls")
    assert r.returncode != 0 and "not in a cluster" in r.stderr, r.stdout + r.stderr
    # host 1 runs a deployment before it starts the cluster: it goes on as it was (same container, same process)
    h1.ok("import", str(service_image(h1.root / "svc.tar", "v1\n")), "-t", "zlayer-svc/httpd:v1")
    spec = h1.root / "app.zlayer.yml"
    spec.write_text(web_spec("carried", replicas=1))
    h1.ok("deploy", str(spec), timeout=120)
    before = [(c["id"], c["pid"], c["state"]) for c in h1.json("ps", "-c")["containers"]]
    assert len(before) == 1 and before[0][2] == "running" and before[0][1], before
    services = _services(h1)
    out = h1.ok("node", "init", "--advertise-addr", h1.addr, "--labels", "zone=a")
    assert "node 1" in out and "leader" in out, out
    assert (h1.data / "cluster" / "etcd").stat().st_mode & 0o777 == 0o700
    assert _roles(h1) == {"1": ("leader", "ready")}
    assert [(c["id"], c["pid"], c["state"]) for c in h1.json("ps", "-c")["containers"]] == before
    assert _services(h1) == services
    revisions_before = h1.ok("status", "carried")
    assert "carried: running" in revisions_before, revisions_before
    h1.stop()  # a daemon restarted in the cluster finds its state in etcd and re-adopts the same replica
    h1.start()
    assert [(c["id"], c["pid"]) for c in h1.json("ps", "-c")["containers"]] == [b[:2] for b in before]
    h1.ok("down", "carried", timeout=120)

    out = h2.ok("node", "join", h1.api, "--token", _token(h1), "--advertise-addr", h2.addr)
    assert "node 2" in out, out
    assert wait_for(lambda: _roles(h1) == {"1": ("leader", "ready"), "2": ("learner", "ready")}, 20,
                    "two nodes: ZLayer's rule keeps the second a learner")  # fmt: skip

    # `zlayer join TOKEN`: the token names the leader's API
    out = h3.ok("join", _token(h1), "--advertise-addr", h3.addr, "--labels", "zone=b,disk=ssd")
    assert "node 3" in out, out
    want = {"1": ("leader", "ready"), "2": ("voter", "ready"), "3": ("voter", "ready")}
    for host in (h1, h2, h3):  # any node answers, and all three say the same
        assert wait_for(lambda host=host: _roles(host) == want, 30, f"3 ready voters seen from host {host.index}")
    three = _nodes(h3)["3"]
    assert three["labels"] == {"zone": "b", "disk": "ssd"} and three["mode"] == "full"
    assert three["cpu_total"] > 0 and three["memory_total"] > 0, three
    status = h2.ok("node", "status", "3")
    assert "ready" in status and "zone=b" in status and "gpus:" in status, status


def test_a_bad_join_is_refused_with_a_clear_line_and_leaves_nothing(netns_cluster: NetnsCluster) -> None:
    h1, h2, h3 = netns_cluster.hosts
    before = _roles(h1)
    r = h3.zl("node", "join", h1.api, "--token", _token(h1), "--advertise-addr", h3.addr)
    assert r.returncode != 0 and "already in a cluster (node 3)" in r.stderr, r.stderr
    # a fresh host: a second daemon with its own data dir in host 3's namespace, asking with every kind of bad join
    spare = h3.data.parent / "spare"
    cmd = ["nsenter", f"--net=/run/netns/{h3.ns}", sys.executable, "-m", "zlayer", "--data-dir", str(spare)]
    serve = subprocess.Popen([*cmd, "serve", "--bind", f"{h3.addr}:3670"], env=h3.env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: (spare / "daemon.json").exists(), 60, "the spare daemon")
        leader = next(n for n in _nodes(h1).values() if n["is_leader"])["api_endpoint"]
        follower = next(h.api for h in (h1, h2) if h.api != leader)

        def refused(token: str, via: str = leader, ports: bool = True) -> str:
            extra = ["--raft-port", "9100", "--client-port", "2479"] if ports else []
            r = subprocess.run([*cmd, "node", "join", via, "--token", token, "--advertise-addr", h3.addr, *extra],
                               env=h3.env, capture_output=True, text=True, timeout=90)  # fmt: skip
            assert r.returncode != 0, r.stdout
            assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) <= 2, r.stderr
            return r.stderr

        assert "not a zlayer join token" in refused("bm90IGEgdG9rZW4")
        token = _token(h1)
        envelope = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        envelope["claims"]["exp"] = "2099-01-01T00:00:00Z"  # a token made to live longer: its signature breaks
        forged = base64.urlsafe_b64encode(json.dumps(envelope).encode()).decode().rstrip("=")
        assert "signature does not verify" in refused(forged)
        short = _token(h1, "1s")
        time.sleep(1.5)
        assert "expired" in refused(short)
        revoked = _token(h1)
        assert "revoked" in h2.ok("node", "revoke-token", revoked)
        assert "revoked" in refused(revoked)
        said = refused(token, via=follower)
        assert "not the cluster's leader" in said and leader in said, said
        said = refused(token, ports=False)  # 9000 on host 3's address is host 3's etcd
        assert f"{h3.addr}:9000 is in use on this node" in said, said
        said = refused(token)
        assert f"{h3.addr} is already the address of node 3" in said, said
    finally:
        serve.terminate()
        serve.wait(30)
    assert _roles(h1) == before  # nothing half-registered by any of them
    assert not (spare / "cluster" / "node.json").exists()


def test_drain_mode_and_labels_from_any_node(netns_cluster: NetnsCluster) -> None:
    h1, h2, h3 = netns_cluster.hosts
    assert "draining" in h3.ok("node", "drain", "2")
    assert _nodes(h1)["2"]["status"] == "draining"
    time.sleep(1.5)  # monitor passes run every heartbeat: draining is the operator's, they leave it
    assert _nodes(h2)["2"]["status"] == "draining"
    assert "ready" in h2.ok("node", "drain", "2", "--undo")
    r = h1.zl("node", "set-mode", "3", "--mode", "replicate")
    assert r.returncode != 0 and "voter" in r.stderr, r.stderr
    assert "gpu=none" in h2.ok("node", "label", "1", "gpu=none", "--remove", "zone")
    assert _nodes(h3)["1"]["labels"] == {"gpu": "none"}


def test_a_host_that_loses_power_is_dead_after_the_threshold_and_ready_when_it_returns(
    netns_cluster: NetnsCluster,
) -> None:
    h1, h2, h3 = netns_cluster.hosts
    etcd = _etcd_pids(h2)
    assert len(etcd) == 1, etcd
    os.kill(etcd[0], signal.SIGKILL)  # its etcd alone dies: the daemon starts it again, the node stays in
    wait_for(lambda: [p for p in _etcd_pids(h2) if p != etcd[0]], 30, "host 2's etcd started again")
    wait_for(lambda: _roles(h1)["2"] == ("voter", "ready"), 30, "node 2 a ready voter")
    h3.kill9()
    wait_for(lambda: _nodes(h1)["3"]["status"] == "dead", 30, "node 3 dead on the leader's word")
    assert _nodes(h2)["3"]["status"] == "dead"
    h2.ok("node", "label", "2", "seen=dead3")  # two of three voters: the cluster still writes
    h3.start()
    wait_for(lambda: _nodes(h1)["3"]["status"] == "ready", 30, "node 3 ready again by itself")
    assert _nodes(h3)["2"]["labels"].get("seen") == "dead3"  # what was written meanwhile reached it


def test_the_leader_killed_another_takes_over_and_writes_go_on(netns_cluster: NetnsCluster) -> None:
    hosts = netns_cluster.hosts
    leader = next(h for h in hosts if _nodes(hosts[0])[str(h.index)]["is_leader"])
    others = [h for h in hosts if h is not leader]
    leader.kill9()

    def new_leader() -> str | None:
        nodes = _nodes(others[0])
        return next((i for i, n in nodes.items() if n["is_leader"] and i != str(leader.index)), None)

    chosen = wait_for(new_leader, 30, "a new leader among the two left")
    wait_for(lambda: _nodes(others[1])[str(leader.index)]["status"] == "dead", 30, "the old leader dead")
    others[1].ok("node", "label", chosen, "led=after")
    assert _nodes(others[0])[chosen]["labels"]["led"] == "after"
    leader.start()
    wait_for(lambda: _nodes(others[0])[str(leader.index)]["status"] == "ready", 30, "the old leader back")
    assert _roles(leader)[str(leader.index)][0] == "voter"  # back as a voter, not the leader


def test_force_leader_on_the_last_survivor(netns_cluster: NetnsCluster) -> None:
    h1, h2, h3 = netns_cluster.hosts
    r = h1.zl("node", "force-leader", "-y")
    assert r.returncode != 0 and "still has a quorum" in r.stderr, r.stderr
    h2.kill9()
    h3.kill9()
    assert set(_nodes(h1)) == {"1", "2", "3"}  # without a quorum, reads answer with the last state it knows
    r = h1.zl("node", "label", "1", "lost=quorum")
    assert r.returncode != 0 and "etcd" in r.stderr and "Traceback" not in r.stderr, r.stderr  # writes: 503
    out = h1.ok("node", "force-leader", "-y", timeout=120)
    assert "cluster of one" in out and "3 nodes" in out, out
    roles = wait_for(lambda: _roles(h1), 20, "node ls on the survivor")
    assert roles["1"] == ("leader", "ready") and roles["2"][1] == roles["3"][1] == "dead", roles
    assert "kept=yes" in h1.ok("node", "label", "1", "kept=yes")  # it writes alone
