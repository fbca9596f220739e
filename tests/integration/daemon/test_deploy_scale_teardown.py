"""What a user notices of deploy speed and teardown on a real node (daemon + Linux runtime in a test-made netns).

- ten replicas come up together, all healthy, and every one of them answers through the proxy;
- a second node on the same host runs replicas with the same names (web-rep-1 ...): stopping one node's replicas
  never kills the other's (their cgroups are the node's own);
- ``down`` after a deploy whose replicas fail (one service crash-looping, one whose shim monitor was killed) leaves
  no overlay mount, no veth, no cgroup, no container state and no address lease of that deployment behind;
- ``down`` stops the replicas side by side, each one first asked with SIGTERM (the grace period is honoured).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.daemon_node import Node, unique

pytestmark = [pytest.mark.root, pytest.mark.slow]

WHO = 'echo "$(/bin/busybox hostname)" > /www/who.txt; exec /bin/busybox httpd -f -p 8080 -h /www'


def web_spec(name: str, replicas: int, *, port: int | None = None, grace: str = "1s", svc: str = "web") -> str:
    endpoints = (
        f"\n    endpoints: [{{name: http, protocol: http, port: {port}, target_port: 8080, expose: public}}]"
        if port
        else ""
    )
    return f"""version: v1
deployment: {name}
services:
  {svc}:
    image: {{name: "zlayer-svc/httpd:v1", pull_policy: never}}
    command: {{entrypoint: ["/bin/sh", "-c"], args: [{WHO!r}]}}
    stop_grace_period: {grace}{endpoints}
    scale: {{mode: fixed, replicas: {replicas}}}
    health: {{start_grace: 0s, interval: 1s, timeout: 1s, retries: 2, check: {{type: tcp, port: 8080}}}}
"""


def node_tag(node: Node) -> str:
    return hashlib.sha256(str(node.data.absolute()).encode()).hexdigest()[:8]


def leftovers(node: Node, ids: list[str]) -> list[str]:
    """Everything of these containers still on the host: mounts, veths, cgroups, state and bundle dirs, leases."""
    from zlayer.net import NodeNetwork

    found: list[str] = []
    mountinfo = Path("/proc/self/mountinfo").read_text()
    for cid in ids:
        bundle = node.data / "bundles" / cid
        if str(bundle) in mountinfo:
            found.append(f"mount under {bundle}")
        for d in (bundle, node.data / "containers" / cid):
            if d.exists():
                found.append(f"directory {d}")
    links = subprocess.run(["ip", "-n", node.ns, "-o", "link"], capture_output=True, text=True, check=True).stdout
    net = NodeNetwork(node.data)
    for cid in ids:
        if net.veth_name(cid) in links:
            found.append(f"veth {net.veth_name(cid)} of {cid}")
    tag = node_tag(node)
    names = {f"{cid}-{tag}" for cid in ids}
    for root in Path("/sys/fs/cgroup").glob("**/zlayer"):
        found += [f"cgroup {p}" for p in root.iterdir() if p.name in names]
    with_leases = json.loads((node.data / "agent_ipam.json").read_text()).get("leases", {})
    found += [f"address lease of {cid}" for cid in ids if cid in with_leases]
    return found


def alive(pid: int, start_time: int) -> bool:
    """The process is there, is the one that was started then (not a reused pid), and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0] != "Z" and int(fields[19]) == start_time


@pytest.fixture
def second_node(tmp_path: Path) -> Iterator[Node]:
    node = Node(tmp_path)
    try:
        node.setup()
        yield node
    finally:
        node.teardown()


def test_ten_replicas_come_up_healthy_together_and_all_answer_through_the_proxy(
    daemon_node: Node, daemon_deployments: list[str]
) -> None:
    node = daemon_node
    name, port = unique("ten"), node.free_port()
    daemon_deployments.append(name)
    node.deploy(web_spec(name, 10, port=port))
    node.expect(name, timeout=90)
    reps = node.containers(name, "web")
    assert len(reps) == 10 and all(c["state"] == "running" for c in reps), reps
    assert all(c["health"]["status"] == "healthy" for c in reps), [c["health"] for c in reps]
    assert len({c["ipv4"] for c in reps}) == 10, "two replicas share an address"
    # every replica serves through the proxy (each one's /who.txt names it)
    seen: set[str] = set()
    for _ in range(200):
        status, body = node.get(port, "/who.txt")
        assert status == 200, body
        seen.add(body.strip())
        if len(seen) == 10:
            break
    assert len(seen) == 10, f"only {len(seen)} of 10 replicas answered through the proxy: {sorted(seen)}"
    events = node.events(name)
    assert sum(e["kind"] == "replica_started" for e in events) == 10, "a replica was started twice"
    assert not [e for e in events if e["kind"] in ("replica_crashed", "replica_failed")], events

    # scaling the same spec to 12 adds two replicas and leaves the ten running ones alone
    before = {(c["id"], c["pid"]) for c in reps}
    node.deploy(web_spec(name, 12, port=port))
    node.expect(name, timeout=90)
    after = {(c["id"], c["pid"]) for c in node.containers(name, "web") if c["state"] == "running"}
    assert before < after and len(after) == 12, (before, after)


def test_a_second_node_on_the_host_never_kills_replicas_of_the_same_name(
    daemon_node: Node, daemon_deployments: list[str], second_node: Node
) -> None:
    a, b = daemon_node, second_node
    name_a, name_b = unique("twin"), unique("twin")
    daemon_deployments.append(name_a)
    b.deploy(web_spec(name_b, 2))
    a.deploy(web_spec(name_a, 2))
    b.expect(name_b)
    a.expect(name_a)
    pids_b = {c["id"]: c["pid"] for c in b.containers(name_b, "web")}
    assert set(pids_b) == {"web-rep-1", "web-rep-2"}
    assert {c["id"] for c in a.containers(name_a, "web")} == set(pids_b), "the two nodes should reuse names"
    # busybox httpd as PID 1 ignores SIGTERM: node A's stop ends in SIGKILL to every process of its replica's cgroup
    a.delete(name_a)
    a.wait_for(lambda: a.request("GET", f"/api/v1/deployments/{name_a}")[0] == 404, 30, f"{name_a} gone")
    now_b = b.containers(name_b, "web")
    assert {c["id"]: c["pid"] for c in now_b} == pids_b, now_b
    assert all(c["state"] == "running" and c["restarts"] == 0 for c in now_b), now_b
    assert not [e for e in b.events(name_b) if e["kind"] == "replica_crashed"], b.events(name_b)
    for pid in pids_b.values():
        os.kill(pid, 0)  # still alive
    b.delete(name_b)


def test_down_after_a_failed_deploy_leaves_no_mount_veth_cgroup_or_state(
    daemon_node: Node, daemon_deployments: list[str]
) -> None:
    node = daemon_node
    name = unique("broken")
    daemon_deployments.append(name)
    spec = (
        web_spec(name, 3)
        + """  crash:
    image: {name: "zlayer-svc/httpd:v1", pull_policy: never}
    command: {entrypoint: ["/bin/sh", "-c"], args: ["echo dying; exit 3"]}
    restart_policy: {kind: always}
    scale: {mode: fixed, replicas: 2}
"""
    )
    node.deploy(spec)
    node.expect(name, "failed", timeout=90)
    ids = [c["id"] for c in node.containers(name, "web")] + [c["id"] for c in node.containers(name, "crash")]
    assert len(ids) == 5, ids
    # the check below looks where things really are: before the down it finds each kind of thing
    before = leftovers(node, ids)
    for kind in ("mount", "veth", "cgroup", "directory", "address lease"):
        assert any(f.startswith(kind) for f in before), f"no {kind} found before down: {before}"
    # a partial failure on top: the shim monitor of one running replica dies (SIGKILL), leaving its init orphaned
    st = json.loads((node.data / "containers" / "web-rep-1" / "state.json").read_text())
    os.kill(int(st["shim_pid"]), signal.SIGKILL)
    r = node.zl("down", name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert node.request("GET", f"/api/v1/deployments/{name}")[0] == 404
    assert leftovers(node, ids) == []
    assert not alive(int(st["pid"]), int(st["pid_start_time"])), "the orphaned replica process still runs"


def test_down_stops_replicas_side_by_side_each_asked_with_sigterm_first(
    daemon_node: Node, daemon_deployments: list[str]
) -> None:
    node = daemon_node
    name = unique("grace")
    daemon_deployments.append(name)
    # PID 1 is a shell that notes SIGTERM (with the time) and keeps running: only the SIGKILL after the grace ends it
    keep = "trap 'echo term $(cat /proc/uptime)' TERM; /bin/busybox httpd -p 8080 -h /www; while :; do sleep 0.1; done"
    spec = web_spec(name, 4, grace="3s").replace(repr(WHO), repr(keep))
    node.deploy(spec)
    node.expect(name)
    ids = [c["id"] for c in node.containers(name, "web")]
    r = node.zl("down", name)
    assert r.returncode == 0, r.stdout + r.stderr
    terms = []
    for cid in ids:
        log = (node.data / "logs" / f"{cid}.log").read_text()
        m = re.findall(r"stdout F term (\d+\.\d+)", log)
        assert m, f"{cid} was never sent SIGTERM (killed outright?): {log[-400:]}"
        terms.append(float(m[-1]))
    # side by side: every replica got its SIGTERM before the first one's grace period was over
    assert max(terms) - min(terms) < 3.0, terms
    assert leftovers(node, ids) == []


def test_down_in_the_middle_of_a_deploy_leaves_nothing(daemon_node: Node, daemon_deployments: list[str]) -> None:
    node = daemon_node
    name = unique("midway")
    daemon_deployments.append(name)
    node.deploy(web_spec(name, 8))
    # as soon as the first replica exists, while the others are still being created and plumbed
    node.wait_for(lambda: node.containers(name, "web"), 30, "a first replica", every=0.01)
    r = node.zl("down", name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert node.request("GET", f"/api/v1/deployments/{name}")[0] == 404
    ids = [f"web-rep-{i}" for i in range(1, 9)]
    assert leftovers(node, ids) == []
    # and no container of it is left running in the runtime either
    assert not [d for d in (node.data / "containers").glob("web-rep-*") if d.name in ids]
