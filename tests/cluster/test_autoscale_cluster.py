"""Adaptive scaling across a cluster of three hosts (tests/fixtures/netns_cluster.py, every daemon evaluating each
second): requests sent through one follower's proxy are counted there, shared, and the leader alone scales the
service up; the scheduler places the new replicas on several nodes; once the load stops it comes back to min."""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from collections.abc import Iterator

import pytest

from tests.fixtures.daemon_node import _enter_netns
from tests.fixtures.netns_cluster import Host, NetnsCluster, netns_hosts, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.peer]

PORT = 8092
SPEC = """version: v1
deployment: elastic
services:
  web:
    image: {name: 'zlayer-svc/httpd:v1', pull_policy: never}
    command: {entrypoint: ['/bin/sh', '-c'], args: ['exec /bin/busybox httpd -f -p 8080 -h /www']}
    stop_grace_period: 1s
    endpoints: [{name: http, protocol: http, port: 8092, target_port: 8080, expose: public}]
    scale: {mode: adaptive, min: 1, max: 3, cooldown: 2s, targets: {rps: 4}}
    health: {start_grace: 0s, interval: 1s, timeout: 1s, retries: 2, check: {type: tcp, port: 8080}}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    with netns_hosts(tmp_path_factory, ("--autoscale-interval", "1")) as c:
        c.form("hi\n")
        yield c


def _placed(host: Host) -> dict[str, str]:
    """``{container: node}`` of the running, healthy replicas, as ``zlayer ps`` on ``host`` says."""
    cts = host.json("ps", "--deployment", "elastic")["containers"]
    return {c["id"]: str(c.get("node")) for c in cts
            if c["state"] == "running" and (c.get("health") or {}).get("status") == "healthy"}  # fmt: skip


@contextlib.contextmanager
def load(host: Host, clients: int, rate: float) -> Iterator[list[int]]:
    """``clients`` keep-alive connections to ``host``'s proxy, from inside its namespace, each ``rate`` requests a
    second; yields [answered, failed]."""
    counts = [0, 0]
    stop = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        _enter_netns(host.ns)
        conn: http.client.HTTPConnection | None = None
        while not stop.is_set():
            t = time.monotonic()
            try:
                conn = conn or http.client.HTTPConnection(host.addr, PORT, timeout=10)
                conn.request("GET", "/")
                ok = conn.getresponse().read() == b"hi\n"
            except (OSError, http.client.HTTPException):
                ok, conn = False, None
            with lock:
                counts[0 if ok else 1] += 1
            stop.wait(max(0.0, 1.0 / rate - (time.monotonic() - t)))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for th in threads:
        th.start()
    try:
        yield counts
    finally:
        stop.set()
        for th in threads:
            th.join(15)


def test_load_through_one_node_scales_across_the_cluster_and_back_to_min(cluster: NetnsCluster) -> None:
    h1, h2, h3 = cluster.hosts
    spec = h1.root / "elastic.zlayer.yml"
    spec.write_text(SPEC)
    h1.ok("deploy", str(spec), timeout=120)
    wait_for(lambda: len(_placed(h1)) == 1, 30, "one replica (min)")
    leader = next(n["id"] for n in h1.json("node", "ls") if n["is_leader"])
    lead = cluster.hosts[int(leader) - 1]
    follower = next(h for h in cluster.hosts if h is not lead)  # the load enters through a follower's proxy
    with load(follower, clients=2, rate=10) as counts:  # ~20 req/s: over 4 per replica even at 3 replicas
        got = wait_for(lambda: (p := _placed(h3)) and len(p) == 3 and p, 40, "3 healthy replicas under load")
        assert len(set(got.values())) >= 2, got  # placed by the scheduler over several nodes, not all on one
        # the leader decided on the requests the follower's proxy counted; the follower only measures
        assert "last scale 2 -> 3 (rps " in lead.ok("status", "elastic")
        assert "decided by the cluster's leader" in follower.ok("status", "elastic")
    wait_for(lambda: len(_placed(h2)) == 1, 40, "back to 1 replica once the load stopped")
    assert "last scale 2 -> 1 (every metric at most half its target (rps " in lead.ok("status", "elastic")
    assert counts[0] > 0 and counts[1] == 0, counts  # no request through the proxy failed while it scaled
