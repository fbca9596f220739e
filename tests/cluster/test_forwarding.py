"""``zlayer logs`` and ``zlayer exec`` through one node reach the replicas another node runs (its API asked with a
credential signed by the calling node, zlayer/cluster/peer.py), on two hosts as network namespaces
(tests/fixtures/netns_cluster.py): a service's logs merge both nodes' replicas, ``logs -f`` through node 1 receives
what node 2's replica writes after it started, an exec through node 1 runs in node 2's replica and returns its exit
code, node 2's peer routes refuse anyone who is not a member, and a dead owner is said at once, by name.

Each replica prints ``hello from <its hostname>`` when it starts (the hostname is the replica's container id) and
``late line from <hostname>`` each time /www/go appears."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.daemon_node import service_image
from tests.fixtures.netns_cluster import Host, NetnsCluster, netns_hosts, wait_for
from zlayer.cluster.peer import PeerAuth

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.peer]

LOOP = (
    "/bin/busybox httpd -p 8080 -h /www; "  # in the background: what the health check connects to
    'echo "hello from $(/bin/busybox hostname)"; '
    "while true; do if /bin/busybox test -e /www/go; then /bin/busybox rm -f /www/go; "
    'echo "late line from $(/bin/busybox hostname)"; fi; /bin/busybox sleep 0.2; done'
)


def _service(name: str, replicas: int) -> str:
    return (
        f"  {name}:\n"
        "    image: {name: 'zlayer-svc/httpd:v1', pull_policy: never}\n"
        f"    command: {{entrypoint: ['/bin/sh', '-c'], args: [{json.dumps(LOOP)}]}}\n"
        "    stop_grace_period: 1s\n"
        f"    scale: {{mode: fixed, replicas: {replicas}}}\n"
        "    health: {start_grace: 0s, interval: 1s, timeout: 1s, retries: 2, check: {type: tcp, port: 8080}}\n"
    )


# web: a replica on each node; pinned: one replica that only node 2 (zone=b) may run, so it stays there when node 2
# dies (nothing else can take it) and asking for it then must name node 2
SPEC = (
    "version: v1\ndeployment: xnode\nservices:\n"
    + _service("web", 2)
    + _service("pinned", 1)
    + "    node_selector: {labels: {zone: b}}\n"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    with netns_hosts(tmp_path_factory, size=2) as c:
        h1, h2 = c.hosts
        h1.ok("node", "init", "--advertise-addr", h1.addr)
        token = h1.ok("node", "generate-join-token", "--ttl", "1h", "-q").strip()
        h2.ok("node", "join", h1.api, "--token", token, "--advertise-addr", h2.addr, "--labels", "zone=b")
        for h in c.hosts:
            h.ok("import", str(service_image(h.root / "svc.tar", "v1\n")), "-t", "zlayer-svc/httpd:v1")
        wait_for(lambda: [n["status"] for n in h1.json("node", "ls")] == ["ready"] * 2, 30, "two ready nodes")
        spec = h1.root / "xnode.zlayer.yml"
        spec.write_text(SPEC)
        h1.ok("deploy", str(spec), timeout=180)
        wait_for(lambda: len(_running(h1)) == 3, 60, "three running replicas")
        yield c


def _running(host: Host) -> dict[tuple[str, int], tuple[str, str]]:
    """``{(service, replica): (node, container id)}`` of the running replicas, as ``zlayer ps`` on ``host`` says."""
    cts = host.json("ps", "--deployment", "xnode")["containers"]
    return {(c["service"], int(c["replica"])): (str(c.get("node")), c["id"]) for c in cts if c["state"] == "running"}


def _on(host: Host, service: str, node: str) -> tuple[int, str]:
    """(replica number, container id) of ``service``'s replica on ``node``."""
    got = [(rep, cid) for (svc, rep), (n, cid) in _running(host).items() if svc == service and n == node]
    assert len(got) == 1, _running(host)
    return got[0]


def _hostname(host: Host, replica: int) -> str:
    """The replica's hostname, asked of the node it runs on (no forwarding)."""
    return host.ok("exec", "--deployment", "xnode", "web", "-r", str(replica), "--", "/bin/busybox", "hostname").strip()


def _curl(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    """curl from inside ``host``'s namespace; the HTTP status is the last line of stdout."""
    return subprocess.run(["ip", "netns", "exec", host.ns, "curl", "-sS", "--max-time", "20", "--cacert",
                           str(_ca(host)), "-w", "\n%{http_code}", *args], capture_output=True, text=True,
                          timeout=30)  # fmt: skip


def _ca(host: Host) -> Path:
    """The cluster CA, which signed the certificate every node's API serves once it is in the cluster."""
    return host.data / "cluster" / "tls" / "ca.crt"


def _bearer(host: Host) -> str:
    return (host.data / "admin_bearer.token").read_text().strip()


def test_logs_through_node_1_merge_the_replicas_of_both_nodes(cluster: NetnsCluster) -> None:
    h1, h2 = cluster.hosts
    r1, _ = _on(h1, "web", "1")
    r2, cid2 = _on(h1, "web", "2")
    name1, name2 = _hostname(h1, r1), _hostname(h2, r2)
    assert name1 != name2
    out = wait_for(lambda: (o := h1.ok("logs", "-d", "xnode", "web")) and name2 in o and o, 30, "node 2's lines")
    assert f"[stdout] hello from {name1}" in out.splitlines(), out
    assert f"[stdout] hello from {name2}" in out.splitlines(), out
    # one replica: node 2's alone, by number and by container id; the container route too
    one = h1.ok("logs", "-d", "xnode", "web", "-i", str(r2))
    assert one.splitlines() == [f"[stdout] hello from {name2}"], one
    assert h1.ok("logs", "-d", "xnode", "web", "-i", cid2).splitlines() == [f"[stdout] hello from {name2}"]
    r = _curl(h1, "-H", f"Authorization: Bearer {_bearer(h1)}", f"https://{h1.api}/api/v1/containers/{cid2}/logs")
    assert r.stdout.splitlines()[-1] == "200", r
    assert f"[stdout] hello from {name2}" in r.stdout, r


def test_logs_follow_through_node_1_receives_what_node_2_writes_later(cluster: NetnsCluster) -> None:
    h1, h2 = cluster.hosts
    r2, _ = _on(h1, "web", "2")
    name2 = _hostname(h2, r2)
    argv = [sys.executable, "-m", "zlayer", "--data-dir", str(h1.data), "logs", "-d", "xnode", "web", "-f"]
    follow = subprocess.Popen(argv, env=h1.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln.rstrip("\n")) for ln in follow.stdout or ()], daemon=True).start()

    def until(text: str, seen: list[str]) -> None:
        while text not in seen:
            try:
                seen.append(lines.get(timeout=60))
            except queue.Empty:
                follow.kill()
                raise AssertionError(f"no {text!r} from logs -f; got {seen}; stderr {follow.stderr.read()}") from None

    try:
        seen: list[str] = []
        until(f"[stdout] hello from {name2}", seen)  # the last lines first, node 2's among them
        for _ in range(2):  # node 2's replica writes a line after the follow started: it arrives through node 1
            seen.clear()
            h2.ok("exec", "--deployment", "xnode", "web", "-r", str(r2), "--", "/bin/busybox", "touch", "/www/go")
            until(f"[stdout] late line from {name2}", seen)
        assert follow.poll() is None  # still following
    finally:
        follow.send_signal(signal.SIGINT)
        try:
            follow.wait(10)
        except subprocess.TimeoutExpired:
            follow.kill()
            follow.wait()


def test_exec_through_node_1_runs_in_node_2s_replica(cluster: NetnsCluster) -> None:
    h1, h2 = cluster.hosts
    r2, cid2 = _on(h1, "web", "2")
    name2 = _hostname(h2, r2)

    def exec_(*cmd: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return h1.zl("exec", "--deployment", "xnode", "web", "-r", str(r2), "--", *cmd, timeout=60, input=stdin)

    got = exec_("/bin/busybox", "hostname")
    assert (got.returncode, got.stdout.strip()) == (0, name2), got
    got = exec_("/bin/busybox", "cat", "/www/index.html")
    assert (got.returncode, got.stdout) == (0, "v1\n"), got
    got = exec_("/bin/sh", "-c", "exit 3")
    assert got.returncode == 3, got
    # stdin goes through both nodes and back: the attached exec is relayed as it runs
    got = exec_("/bin/busybox", "cat", stdin="ping through node 1\n")
    assert (got.returncode, got.stdout) == (0, "ping through node 1\n"), got
    got = exec_("/bin/sh", "-c", "echo out; echo err >&2; exit 7")
    assert (got.returncode, got.stdout, got.stderr) == (7, "out\n", "err\n"), got
    # the whole-output exec (POST), by service and replica and by container id
    body = json.dumps({"command": ["/bin/sh", "-c", "hostname; exit 5"], "replica": r2})
    auth = f"Authorization: Bearer {_bearer(h1)}"
    r = _curl(h1, "-X", "POST", "-H", auth, "-H", "Content-Type: application/json", "-d", body,
              f"https://{h1.api}/api/v1/deployments/xnode/services/web/exec")  # fmt: skip
    *text, status = r.stdout.splitlines()
    assert status == "200", r
    res = json.loads("\n".join(text))
    assert (res["exit_code"], res["stdout"].strip()) == (5, name2), res
    body = json.dumps({"command": ["/bin/busybox", "hostname"]})
    r = _curl(h1, "-X", "POST", "-H", auth, "-H", "Content-Type: application/json", "-d", body,
              f"https://{h1.api}/api/v1/containers/{cid2}/exec")  # fmt: skip
    *text, status = r.stdout.splitlines()
    assert status == "200" and json.loads("\n".join(text))["stdout"].strip() == name2, r
    # a replica that runs nowhere: 404 as before
    got = h1.zl("exec", "--deployment", "xnode", "web", "-r", "99", "--", "/bin/busybox", "true", timeout=60)
    assert got.returncode != 0 and "replica 99" in got.stderr, got


def test_node_2s_peer_routes_refuse_anyone_but_a_member(cluster: NetnsCluster, tmp_path: Path) -> None:
    h1, h2 = cluster.hosts
    _, cid2 = _on(h1, "web", "2")
    path = f"/api/v1/cluster/peer/containers/{cid2}/logs"
    url = f"https://{h2.api}{path}"
    # no credential
    r = _curl(h1, url)
    assert r.stdout.splitlines()[-1] == "401", r
    assert "peer credential" in r.stdout, r
    # node 2's own admin token is a user's, not a member's
    r = _curl(h1, "-H", f"Authorization: Bearer {_bearer(h2)}", url)
    assert r.stdout.splitlines()[-1] == "401", r
    # a credential that claims to come from node 1 but is signed by another key
    forger = PeerAuth(tmp_path / "forger")
    forger.node_id = "1"
    r = _curl(h1, "-H", f"X-ZLayer-Peer: {forger.sign('2', 'GET', path, 'mallory')}", url)
    assert r.stdout.splitlines()[-1] == "401", r
    assert "signature" in r.stdout, r
    # a node's credential for another request does not open this one
    r = _curl(h1, "-H", f"X-ZLayer-Peer: {forger.sign('2', 'GET', path + '?tail=1', 'mallory')}", url)
    assert r.stdout.splitlines()[-1] == "401", r
    # the exec WebSocket: refused too, the close saying why; nothing runs
    probe = (
        "import sys\nfrom websockets.sync.client import connect\nfrom websockets.exceptions import ConnectionClosed\n"
        "import ssl\nctx = ssl.create_default_context(cafile=sys.argv[4])\n"
        "with connect(sys.argv[1], additional_headers={'X-ZLayer-Peer': sys.argv[2]}, ssl=ctx) as ws:\n"
        "    try:\n"
        "        ws.send(sys.argv[3])\n"
        "        print('got', ws.recv(timeout=10))\n"
        "    except ConnectionClosed as e:\n"
        "        print('closed', *((e.rcvd.code, e.rcvd.reason) if e.rcvd else ('abnormally',)))\n"
    )
    ws_path = f"/api/v1/cluster/peer/containers/{cid2}/exec"
    forged = json.dumps({"command": ["/bin/busybox", "touch", "/www/forged"]})
    argv = ["ip", "netns", "exec", h1.ns, sys.executable, "-c", probe, f"wss://{h2.api}{ws_path}",
            forger.sign("2", "WEBSOCKET", ws_path, "mallory"), forged, str(_ca(h1))]  # fmt: skip
    r = subprocess.run(argv, env=h1.env, capture_output=True, text=True, timeout=30)
    assert r.stdout.startswith("closed 1008") and "signature" in r.stdout, r
    got = h2.zl("exec", "--deployment", "xnode", "web", "-r", str(_on(h1, "web", "2")[0]), "--", "/bin/busybox",
                "test", "-e", "/www/forged", input="")  # fmt: skip
    assert got.returncode == 1, got


def test_a_dead_owner_is_said_by_name_at_once(cluster: NetnsCluster) -> None:
    h1, h2 = cluster.hosts
    pinned, pcid = _on(h1, "pinned", "2")
    assert h1.ok("logs", "-d", "xnode", "pinned").strip() == f"[stdout] hello from {pcid}"
    h2.kill9()
    # the hang guard is the subprocess's timeout; what is asserted is what the user reads
    got = h1.zl("logs", "-d", "xnode", "pinned", "-i", str(pinned), timeout=30)
    assert got.returncode != 0, got
    assert "node 2" in got.stderr and h2.addr in got.stderr and pcid in got.stderr, got
    got = h1.zl("exec", "--deployment", "xnode", "pinned", "-r", str(pinned), "--", "/bin/busybox", "true", timeout=30)
    assert got.returncode != 0, got
    assert "node 2" in got.stderr or "not running" in got.stderr, got
    # once the cluster has marked it dead, the answer says so, as fast
    wait_for(lambda: [n["status"] for n in h1.json("node", "ls")] == ["ready", "dead"], 30, "node 2 dead")
    got = h1.zl("logs", "-d", "xnode", "pinned", "-i", str(pinned), timeout=30)
    assert got.returncode != 0 and "node 2" in got.stderr and "dead" in got.stderr, got
    # the service's logs go on without it: node 1's replica of web still answers
    assert "hello from" in h1.ok("logs", "-d", "xnode", "web")
