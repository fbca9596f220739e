"""Deploying 30 replicas to healthy: one node alone against a 3-node cluster of this machine, and what a node costs.

Hosts as network namespaces on a bridge (``tests/fixtures/netns_cluster.py``), each running ``zlayer serve`` with its
own data dir; the same busybox httpd image imported on each (``service_image``, as ``perf/cluster_failover.py``).
The deployment: 30 replicas of one service with an endpoint (so each node's proxy fronts it, and in the cluster each
replica is also published for the other nodes' proxies), TCP health check every second, no start grace.

- single: one host, not in a cluster; ``zlayer deploy`` from the command to 30 replicas healthy as ``zlayer ps``
  says (``deploy`` itself waits for that).
- cluster: three hosts, ``node init`` on the first, ``node join`` on the others (each with its etcd member);
  ``zlayer deploy`` through the leader from the command to 30 replicas healthy over the three nodes (placed 10/10/10;
  ``deploy`` waits for every node's share).
- memory: the resident set (VmRSS) of each cluster node's processes, at rest: once idle before the deploy and again
  with its 10 replicas running, after ``REST`` s. ``node_rss_mb`` is the largest node's daemon (``zlayer serve``,
  one Python process) plus its etcd; the proxy's data-plane process (``python -m zlayer.proxy.dataplane``, a process
  of its own per node) is reported apart as ``dataplane_rss_mb``; the per-container shims are not counted.

Targets: ``cluster_vs_single`` ≤ 2, ``node_rss_mb`` ≤ 150 (MiB). Run as root: ``python perf/cluster_deploy.py``.
Prints one JSON object on its last line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tests.fixtures.netns_cluster as nc  # noqa: E402
from tests.fixtures.daemon_node import service_image  # noqa: E402

REPLICAS = 30
REST = 10.0
SPEC = (
    "version: v1\ndeployment: thirty\nservices:\n  web:\n"
    "    image: {name: 'zlayer-svc/httpd:v1', pull_policy: never}\n"
    "    command: {entrypoint: ['/bin/sh', '-c'], args: ['exec /bin/busybox httpd -f -p 8080 -h /www']}\n"
    "    stop_grace_period: 1s\n"
    "    endpoints: [{name: http, protocol: http, port: 8090, target_port: 8080, expose: public}]\n"
    f"    scale: {{mode: fixed, replicas: {REPLICAS}}}\n"
    "    health: {start_grace: 0s, interval: 1s, timeout: 1s, retries: 3, check: {type: tcp, port: 8080}}\n"
)


def healthy(host: nc.Host) -> dict[str, int]:
    """Node → how many replicas of the deployment run healthy there, as ``zlayer ps`` on ``host`` says."""
    r = host.zl("ps", "--deployment", "thirty", "-o", "json", timeout=60)
    out: dict[str, int] = {}
    if r.returncode == 0:
        for c in json.loads(r.stdout)["containers"]:
            if c["state"] == "running" and (c.get("health") or {}).get("status") == "healthy":
                out[str(c.get("node"))] = out.get(str(c.get("node")), 0) + 1
    return out


def deploy_to_healthy(host: nc.Host) -> tuple[float, dict[str, int]]:
    """Seconds from ``zlayer deploy`` to every replica healthy (and where they run)."""
    spec = host.root / "thirty.zlayer.yml"
    spec.write_text(SPEC)
    start = time.monotonic()
    host.ok("deploy", str(spec), timeout=600)
    got = nc.wait_for(lambda: (h := healthy(host)) and sum(h.values()) == REPLICAS and h, 300,
                      f"{REPLICAS} healthy replicas", every=0.1)  # fmt: skip
    return time.monotonic() - start, got


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def processes(host: nc.Host) -> dict[str, float]:
    """RSS in MiB of the host's daemon, its etcd and its data-plane process."""
    out = {"daemon": 0.0, "etcd": 0.0, "dataplane": 0.0}
    for pid in host.pids():
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if host.proc is not None and pid == host.proc.pid:
            out["daemon"] += rss_mib(pid)
        elif comm == "etcd":
            out["etcd"] += rss_mib(pid)
        elif b"zlayer.proxy.dataplane" in cmdline:
            out["dataplane"] += rss_mib(pid)
    return {k: round(v, 1) for k, v in out.items()}


def run_single(tmp: Path) -> float:
    cluster = nc.NetnsCluster(tmp / "single", 1)
    try:
        cluster.setup()
        (h,) = cluster.hosts
        h.ok("import", str(service_image(h.root / "svc.tar", "v1\n")), "-t", "zlayer-svc/httpd:v1")
        took, _ = deploy_to_healthy(h)
        h.ok("down", "thirty", timeout=300)
        return took
    finally:
        cluster.teardown()
        left = cluster.leftovers()
        if left:
            print(f"left behind: {left}", file=sys.stderr)


def run_cluster(tmp: Path) -> dict[str, Any]:
    cluster = nc.NetnsCluster(tmp / "cluster", 3)
    try:
        cluster.setup()
        cluster.form(within=60)
        h1 = cluster.hosts[0]
        time.sleep(REST)
        idle = {str(h.index): processes(h) for h in cluster.hosts}
        took, spread = deploy_to_healthy(h1)
        time.sleep(REST)
        loaded = {str(h.index): processes(h) for h in cluster.hosts}
        h1.ok("down", "thirty", timeout=300)
        return {"took": took, "spread": spread, "idle": idle, "loaded": loaded}
    finally:
        cluster.teardown()
        left = cluster.leftovers()
        if left:
            print(f"left behind: {left}", file=sys.stderr)


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("perf/cluster_deploy.py needs root (network namespaces, containers)")
    nc.HEARTBEAT, nc.DEAD_AFTER = "1", "5"  # perf/cluster_failover.py's timings
    with tempfile.TemporaryDirectory(prefix="zl-cluster-deploy-") as tmp:
        single = run_single(Path(tmp))
        c = run_cluster(Path(tmp))

    def node(p: dict[str, float]) -> float:
        return round(p["daemon"] + p["etcd"], 1)

    result = {
        "replicas": REPLICAS,
        "deploy30_single_s": round(single, 2),
        "deploy30_cluster_s": round(c["took"], 2),
        "cluster_vs_single": round(c["took"] / single, 3),
        "cluster_spread": dict(sorted(c["spread"].items())),
        "node_rss_mb": max(node(p) for p in c["loaded"].values()),
        "node_rss_idle_mb": max(node(p) for p in c["idle"].values()),
        "daemon_rss_mb": max(p["daemon"] for p in c["loaded"].values()),
        "etcd_rss_mb": max(p["etcd"] for p in c["loaded"].values()),
        "dataplane_rss_mb": max(p["dataplane"] for p in c["loaded"].values()),
        "per_node_rss_mb": c["loaded"],
        "rss_note": "MiB at rest with 10 replicas per node; node = daemon + etcd, data plane apart, shims not counted",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
