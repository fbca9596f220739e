"""Deploy speed and idle cost of the daemon, side by side with podman.

- zlayer: ``zlayer -b deploy`` of 20 replicas of a busybox httpd service (image built offline from Debian's
  busybox-static and brought in with ``zlayer import``, as the quickstart does), from the command to every replica
  healthy (TCP check, no start grace), on a daemon started for this run with its own data dir and node network.
- peer: 20 × ``podman run -d`` of the same image (runc, cgroupfs, nofile/nproc ulimits lowered: podman's default
  1048576-file limit is refused on this host), one after another as a user or script would. When podman cannot run
  at all, 20 × ``runc run -d`` of bundles over the same root filesystem instead (``"peer"`` says which).
- idle: the daemon's RSS before any deployment; with 50 replicas running (each TCP-checked every second), the
  daemon's CPU over 30 s at rest, in % of one core, from /proc/PID/stat.
- down: ``zlayer down`` of those 50 replicas (they stop in parallel; busybox httpd as PID 1 ignores SIGTERM, so
  this is one stop_grace_period, 2 s here, plus the teardown).

Run as root: ``python perf/deploy.py``. The last line is one JSON object; ``time_vs_peer`` < 1 means zlayer is faster
(target ≤ 0.5); targets at rest: idle RSS ≤ 80 MB (reported in MiB), CPU ≤ 2 % of a core.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import cpu_seconds

REPLICAS = 20
AT_REST = 50
REST_SECONDS = 30.0
IMAGE = "zlayer-perf/httpd:latest"
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
HTTPD = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]


def sh(*argv: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, env=env)
    if check and r.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])} failed ({r.returncode}): {r.stderr.strip()[-800:]}")
    return r


def build_image(work: Path) -> Path:
    """An OCI layout tar holding /bin/busybox and /www/index.html, built offline with umoci."""
    oci, bundle = work / "oci", work / "bundle"
    sh("umoci", "init", "--layout", str(oci))
    sh("umoci", "new", "--image", f"{oci}:latest")
    sh("umoci", "unpack", "--rootless", "--image", f"{oci}:latest", str(bundle))
    (bundle / "rootfs/bin").mkdir(parents=True, exist_ok=True)
    (bundle / "rootfs/www").mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", bundle / "rootfs/bin/busybox")
    (bundle / "rootfs/www/index.html").write_text("perf\n")
    sh("umoci", "repack", "--image", f"{oci}:latest", str(bundle))
    tar = work / "image.tar"
    sh("tar", "-C", str(oci), "-cf", str(tar), "oci-layout", "index.json", "blobs")
    return tar


def spec(replicas: int) -> str:
    return f"""version: v1
deployment: perf
services:
  web:
    image: {{name: "{IMAGE}", pull_policy: never}}
    command: {{entrypoint: ["/bin/busybox"], args: ["httpd", "-f", "-p", "8080", "-h", "/www"]}}
    stop_grace_period: 2s
    scale: {{mode: fixed, replicas: {replicas}}}
    health: {{start_grace: 0s, interval: 1s, timeout: 1s, retries: 3, check: {{type: tcp, port: 8080}}}}
"""


def podman_peer(tar: Path) -> float:
    sh(*PODMAN, "load", "-i", str(tar))
    loaded = sh(*PODMAN, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()[0]
    names = [f"zlperf-{os.getpid()}-{i}" for i in range(REPLICAS)]
    limits = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
    try:
        t0 = time.perf_counter()
        for n in names:
            sh(*PODMAN, "run", "-d", "--name", n, "--network", "none", *limits, loaded, *HTTPD)
        elapsed = time.perf_counter() - t0
        running = sh(*PODMAN, "ps", "--filter", f"name=zlperf-{os.getpid()}", "--format", "{{.Names}}").stdout.split()
        if len(running) != REPLICAS:
            raise SystemExit(f"podman: only {len(running)} of {REPLICAS} containers running")
        return elapsed
    finally:
        sh(*PODMAN, "rm", "-f", "-t", "0", *names, check=False)
        sh(*PODMAN, "rmi", "-f", loaded, check=False)


def runc_peer(work: Path) -> float:
    """20 × ``runc run -d``: one bundle each (its own config.json), all over one read-only copy of the image."""
    rootfs = work / "bundle" / "rootfs"
    names = [f"zlperf-{os.getpid()}-{i}" for i in range(REPLICAS)]
    bundles = []
    for n in names:
        b = work / "runc" / n
        b.mkdir(parents=True)
        sh("runc", "spec", "--bundle", str(b))
        cfg = json.loads((b / "config.json").read_text())
        cfg["root"] = {"path": str(rootfs), "readonly": True}
        cfg["process"].update(args=HTTPD, terminal=False)
        (b / "config.json").write_text(json.dumps(cfg))
        bundles.append(b)
    try:
        t0 = time.perf_counter()
        for n, b in zip(names, bundles, strict=True):
            # the detached container keeps runc's stdio: a file, not a pipe we would wait on for ever
            with open(b / "out.log", "wb") as out:
                r = subprocess.run(["runc", "run", "-d", "--bundle", str(b), n], stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
            if r.returncode != 0:
                raise SystemExit(f"runc run -d {n} failed: {(b / 'out.log').read_text()[-400:]}")
        return time.perf_counter() - t0
    finally:
        for n in names:
            sh("runc", "delete", "--force", n, check=False)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def wait_healthy(zl: list[str], env: dict[str, str], n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    healthy = 0
    while time.monotonic() < deadline:
        doc = json.loads(sh(*zl, "ps", "--format", "json", env=env).stdout)
        healthy = sum(1 for c in doc["containers"] if c["state"] == "running" and c["health"]["status"] == "healthy")
        if healthy == n:
            return
        time.sleep(0.5)
    raise SystemExit(f"zlayer: only {healthy} of {n} replicas healthy {timeout:g}s after the scale-up")


def zlayer_run(tar: Path, work: Path) -> dict[str, float]:
    data = work / "data"
    zl = [sys.executable, "-m", "zlayer", "--data-dir", str(data)]
    env = {**os.environ, "ZLAYER_NODE_NETWORK": os.environ.get("ZLAYER_NODE_NETWORK", "on")}
    sh(*zl, "import", str(tar), "-t", IMAGE, env=env)
    sh(*zl, "serve", "--daemon", "--bind", "none", env=env)
    pid = json.loads((data / "daemon.json").read_text())["pid"]
    deployed = False
    try:
        time.sleep(2.0)
        idle_rss = rss_bytes(pid)
        (work / "perf.zlayer.yml").write_text(spec(REPLICAS))
        t0 = time.perf_counter()
        deployed = True
        sh(*zl, "-b", "deploy", str(work / "perf.zlayer.yml"), env=env)
        deploy_s = time.perf_counter() - t0
        healthy = [c for c in json.loads(sh(*zl, "ps", "--format", "json", env=env).stdout)["containers"]
                   if c["state"] == "running" and c["health"]["status"] == "healthy"]  # fmt: skip
        if len(healthy) != REPLICAS:
            raise SystemExit(f"zlayer: only {len(healthy)} of {REPLICAS} replicas healthy after deploy")
        # Scale to 50 (a redeploy with another replica count adds replicas; the running 20 stay).
        (work / "perf.zlayer.yml").write_text(spec(AT_REST))
        sh(*zl, "-b", "deploy", str(work / "perf.zlayer.yml"), env=env)
        wait_healthy(zl, env, AT_REST)
        time.sleep(3.0)
        cpu0, t1 = cpu_seconds(pid), time.perf_counter()
        time.sleep(REST_SECONDS)
        cpu1, t2 = cpu_seconds(pid), time.perf_counter()
        rss50 = rss_bytes(pid)
        t3 = time.perf_counter()
        sh(*zl, "down", "perf", env=env)
        deployed = False
        down_s = time.perf_counter() - t3
        return {
            "deploy_s": deploy_s,
            "idle_rss_mb": idle_rss / 2**20,
            "rss_50_mb": rss50 / 2**20,
            "cpu_pct_50": 100.0 * (cpu1 - cpu0) / (t2 - t1),
            "down_s": down_s,
        }
    finally:
        if deployed:
            sh(*zl, "down", "perf", env=env, check=False)
        os.kill(pid, 15)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.05)
        # this run's node bridge and NAT table (a real node keeps them across daemon restarts)
        teardown = "import asyncio,sys; from pathlib import Path; from zlayer.net import NodeNetwork\n" \
                   "asyncio.run(NodeNetwork(Path(sys.argv[1])).teardown())"  # fmt: skip
        sh(sys.executable, "-c", teardown, str(data), check=False)


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("perf/deploy.py needs root (containers)")
    with tempfile.TemporaryDirectory(prefix="zlayer-perf-deploy-") as tmp:
        work = Path(tmp)
        tar = build_image(work)
        peer_name = os.environ.get("PERF_PEER", "podman")
        try:
            if peer_name != "podman":
                raise SystemExit("podman not chosen")
            peer_s = podman_peer(tar)
        except SystemExit as e:
            if peer_name == "podman":
                print(f"podman could not run ({e}); using runc run -d instead", file=sys.stderr)
            peer_name = "runc"
            peer_s = runc_peer(work)
        z = zlayer_run(tar, work)
    result = {
        "replicas": REPLICAS,
        "peer": f"{peer_name} run -d",
        "zlayer_deploy_to_healthy_s": round(z["deploy_s"], 3),
        "peer_run_d_s": round(peer_s, 3),
        "time_vs_peer": round(z["deploy_s"] / peer_s, 3),
        "idle_daemon_rss_mib": round(z["idle_rss_mb"], 1),
        "daemon_rss_with_50_mib": round(z["rss_50_mb"], 1),
        "daemon_cpu_at_rest_50_containers_pct": round(z["cpu_pct_50"], 2),
        "rest_seconds": REST_SECONDS,
        "down_50_s": round(z["down_s"], 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
