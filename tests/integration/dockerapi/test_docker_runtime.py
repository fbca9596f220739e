"""The Docker fallback runtime (``--runtime docker``): a deployment's replicas run by a real dockerd (Debian's
docker.io, started here in the node's network namespace on its own socket and data root, and removed afterwards),
on the node's own network, with exec, logs and stats through it, and re-adopted by a restarted daemon."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.daemon_live import LiveNode

pytestmark = [pytest.mark.root, pytest.mark.peer, pytest.mark.slow]

DOCKER = "/usr/bin/docker"


class Dockerd:
    def __init__(self, root: Path, ns: str) -> None:
        self.sock = root / "dockerd.sock"
        self.root = root
        (root / "daemon.json").write_text("{}\n")
        self.log = root / "dockerd.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{ns}", "/usr/sbin/dockerd", "--host", f"unix://{self.sock}",
                 "--data-root", str(root / "data"), "--exec-root", str(root / "exec"), "--pidfile",
                 str(root / "dockerd.pid"), "--config-file", str(root / "daemon.json"), "--bridge", "none",
                 "--iptables=false", "--ip-masq=false"],
                stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while self.docker("version", check=False).returncode != 0:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()[-2000:]
            time.sleep(0.2)

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_HOST": f"unix://{self.sock}", "DOCKER_CONFIG": str(self.root / "cfg")}
        r = subprocess.run([DOCKER, *args], env=env, capture_output=True, text=True, timeout=120)
        assert not check or r.returncode == 0, r.stdout + r.stderr
        return r

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with open("/proc/self/mountinfo") as f:
            points = [ln.split()[4] for ln in f if ln.split()[4].startswith(str(self.root) + "/")]
        for p in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", p], capture_output=True)
        shutil.rmtree(self.root / "data", ignore_errors=True)


@pytest.fixture(scope="module")
def docker_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveNode, Dockerd]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespace, dockerd)")
    if not Path("/usr/sbin/dockerd").exists():
        pytest.fail("Debian's docker.io is a peer of this test (.ci/apt-packages.txt)")
    root = tmp_path_factory.mktemp("dockerrt")
    node = LiveNode(root / "node", ["--bind", "none"])
    dockerd: Dockerd | None = None
    node.env.update({"DOCKER_HOST": f"unix://{root / 'dockerd' / 'dockerd.sock'}", "ZLAYER_RUNTIME": "docker"})
    try:
        node.setup()
        (root / "dockerd").mkdir()
        dockerd = Dockerd(root / "dockerd", node.ns)
        yield node, dockerd
    finally:
        node.teardown()
        if dockerd is not None:
            dockerd.stop()


def test_replicas_run_through_dockerd_and_are_readopted(docker_node: tuple[LiveNode, Dockerd]) -> None:
    node, dockerd = docker_node
    registry = node.registry()  # svc/httpd:v1 in a docker-registry in the namespace, which dockerd pulls from
    spec = (
        "version: v1\ndeployment: dkr\nservices:\n  web:\n"
        f"    image: {{name: '{registry}/svc/httpd:v1'}}\n"
        "    command: {entrypoint: ['/bin/sh', '-c'],\n"
        "              args: ['echo started; exec /bin/busybox httpd -f -p 8080 -h /www']}\n"
        "    env: {GREETING: hi}\n"
        "    stop_grace_period: 1s\n"
        "    scale: {mode: fixed, replicas: 1}\n"
        "    health: {start_grace: 0s, interval: 1s, timeout: 1s, retries: 2, check: {type: tcp, port: 8080}}\n"
    )
    node.deploy(spec)
    node.expect("dkr", timeout=120)
    [c] = node.api("GET", "/api/v1/containers?label=zlayer.deployment=dkr")
    assert c["id"] == "web-rep-1" and c["state"] == "running" and c["ipv4"].startswith("10.")
    # it is dockerd's container, labelled as ours
    [name] = [n for n in dockerd.docker("ps", "--format", "{{.Names}}").stdout.split() if n.endswith("web-rep-1")]
    doc = json.loads(dockerd.docker("inspect", name).stdout)[0]
    assert doc["Config"]["Labels"]["zlayer.container"] == "web-rep-1" and doc["HostConfig"]["NetworkMode"] == "none"
    started = doc["State"]["StartedAt"]
    # on the node's network: its page from its node address; exec, logs and stats through dockerd
    got = node.sh("curl", "-s", "--max-time", "10", f"http://{c['ipv4']}:8080/")
    assert got.stdout == "v1\n", got.stderr
    res = node.api("POST", "/api/v1/containers/web-rep-1/exec", {"command": ["sh", "-c", "echo $GREETING; exit 3"]})
    assert (res["exit_code"], res["stdout"]) == (3, "hi\n")
    status, logs = node.request("GET", "/api/v1/containers/web-rep-1/logs")
    assert status == 200 and "[stdout] started" in logs
    stats = node.api("GET", "/api/v1/containers/web-rep-1/stats")
    assert stats["memory_bytes"] > 0
    # a standalone container (ZLayer's container API) runs through dockerd too
    r = node.zl("container", "create", "--name", "solo", f"{registry}/svc/httpd:v1", "sleep", "300")
    assert r.returncode == 0, r.stdout + r.stderr + node.log_tail()
    [solo] = [n for n in dockerd.docker("ps", "--format", "{{.Names}}").stdout.split() if n.endswith("solo-rep-0")]
    solo_started = json.loads(dockerd.docker("inspect", solo).stdout)[0]["State"]["StartedAt"]
    # a restarted daemon re-adopts the running containers instead of making new ones
    node.proc.send_signal(signal.SIGTERM)
    node.proc.wait(30)
    node.start()
    node.expect("dkr", timeout=120)
    [c2] = node.api("GET", "/api/v1/containers?label=zlayer.deployment=dkr")
    assert c2["state"] == "running"
    assert json.loads(dockerd.docker("inspect", name).stdout)[0]["State"]["StartedAt"] == started
    assert json.loads(node.zl("container", "inspect", "solo-rep-0").stdout)["state"] == "running"
    assert json.loads(dockerd.docker("inspect", solo).stdout)[0]["State"]["StartedAt"] == solo_started
    assert node.zl("container", "rm", "--force", "solo-rep-0").returncode == 0
    assert dockerd.docker("inspect", solo, check=False).returncode != 0  # gone from dockerd
    # down removes it from dockerd
    node.delete("dkr")
    assert not [n for n in dockerd.docker("ps", "-a", "--format", "{{.Names}}").stdout.split() if "web-rep" in n]


def test_auto_runtime_falls_back_to_dockerd_where_cgroups_are_missing(
    docker_node: tuple[LiveNode, Dockerd], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With no runtime named (`auto`), a daemon that finds no cgroup v2 — here a tmpfs over /sys/fs/cgroup in a
    mount namespace of its own — runs its containers through the dockerd that answers on DOCKER_HOST."""
    node, dockerd = docker_node
    registry = node.registry()
    hidden = LiveNode(tmp_path_factory.mktemp("nocgroup"), ["--bind", "none"], ns=node.ns)
    hidden.wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'mount -t tmpfs none /sys/fs/cgroup && exec "$@"', "sh"]  # fmt: skip
    hidden.env["DOCKER_HOST"] = f"unix://{dockerd.sock}"
    hidden.env.pop("ZLAYER_RUNTIME", None)
    try:
        hidden.setup()
        assert hidden.api("GET", "/health/live")["runtime_name"] == "docker"
        deadline = time.monotonic() + 60
        while hidden.request("GET", "/health/ready")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "the native runtime cannot run here (no cgroup v2 at /sys/fs/cgroup)" in hidden.log_tail(100_000)
        r = hidden.zl("container", "create", "--name", "fb", f"{registry}/svc/httpd:v1", "sh", "-c",
                      "echo via-dockerd; exec sleep 300")  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr + hidden.log_tail()
        [name] = [n for n in dockerd.docker("ps", "--format", "{{.Names}}").stdout.split() if n.endswith("fb-rep-0")]
        deadline = time.monotonic() + 10
        while "via-dockerd" not in dockerd.docker("logs", name).stdout and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "via-dockerd" in hidden.zl("container", "logs", "fb-rep-0").stdout
        assert hidden.zl("container", "rm", "--force", "fb-rep-0").returncode == 0
        assert dockerd.docker("inspect", name, check=False).returncode != 0
    finally:
        hidden.teardown()
