"""Deploy speed and idle cost of the daemon, side by side with podman.

- zlayer: ``zlayer -b deploy`` of 20 replicas of a busybox httpd service, from the command to every replica healthy
  (TCP check, no start grace), on a daemon started for this run with its own data dir.
- peer: 20 × ``podman run -d`` of the same image (runc, cgroupfs, nofile/nproc ulimits lowered: podman's defaults
  are refused on this host), sequentially as a user or script would.
- idle: the daemon's RSS before any deployment, and its CPU use at rest (10 s) with 50 containers running.

Run as root: ``python perf/deploy.py``. The last line is one JSON object; ``time_vs_peer`` < 1 means zlayer is faster
(target ≤ 0.5).
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

REPLICAS = 20
AT_REST = 50
IMAGE = "zlayer-perf/httpd:latest"
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]


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
    scale: {{mode: fixed, replicas: {replicas}}}
    health: {{start_grace: 0s, interval: 1s, timeout: 1s, retries: 3, check: {{type: tcp, port: 8080}}}}
"""


def peer(tar: Path) -> float:
    sh(*PODMAN, "load", "-i", str(tar))
    loaded = sh(*PODMAN, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()[0]
    names = [f"zlperf-{os.getpid()}-{i}" for i in range(REPLICAS)]
    try:
        t0 = time.perf_counter()
        for n in names:
            limits = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
            httpd = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
            sh(*PODMAN, "run", "-d", "--name", n, "--network", "none", *limits, loaded, *httpd)
        elapsed = time.perf_counter() - t0
        running = sh(*PODMAN, "ps", "--filter", f"name=zlperf-{os.getpid()}", "--format", "{{.Names}}").stdout.split()
        if len(running) != REPLICAS:
            raise SystemExit(f"podman: only {len(running)} of {REPLICAS} containers running")
        return elapsed
    finally:
        sh(*PODMAN, "rm", "-f", "-t", "0", *names, check=False)
        sh(*PODMAN, "rmi", "-f", loaded, check=False)


def proc_stat(pid: int) -> tuple[int, float]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, cpu


def zlayer_run(tar: Path, work: Path) -> dict[str, float]:
    data = work / "data"
    zl = [sys.executable, "-m", "zlayer", "--data-dir", str(data)]
    env = {**os.environ, "ZLAYER_NODE_NETWORK": os.environ.get("ZLAYER_NODE_NETWORK", "on")}
    sh(*zl, "import", str(tar), "-t", IMAGE, env=env)
    sh(*zl, "serve", "--daemon", "--bind", "none", env=env)
    pid = json.loads((data / "daemon.json").read_text())["pid"]
    try:
        time.sleep(2.0)
        idle_rss, _ = proc_stat(pid)
        (work / "perf.zlayer.yml").write_text(spec(REPLICAS))
        t0 = time.perf_counter()
        sh(*zl, "-b", "deploy", str(work / "perf.zlayer.yml"), env=env)
        deploy_s = time.perf_counter() - t0
        healthy = [c for c in json.loads(sh(*zl, "ps", "--format", "json", env=env).stdout)["containers"]
                   if c["state"] == "running" and c["health"]["status"] == "healthy"]  # fmt: skip
        if len(healthy) != REPLICAS:
            raise SystemExit(f"zlayer: only {len(healthy)} of {REPLICAS} replicas healthy after deploy")
        (work / "perf.zlayer.yml").write_text(spec(AT_REST))
        sh(*zl, "-b", "deploy", str(work / "perf.zlayer.yml"), env=env)
        time.sleep(5.0)
        _, cpu0 = proc_stat(pid)
        t1 = time.perf_counter()
        time.sleep(10.0)
        rss50, cpu1 = proc_stat(pid)
        cpu_pct = 100.0 * (cpu1 - cpu0) / (time.perf_counter() - t1)
        return {
            "deploy_s": deploy_s,
            "idle_rss_mb": idle_rss / 2**20,
            "rss_50_mb": rss50 / 2**20,
            "cpu_pct_50": cpu_pct,
        }
    finally:
        sh(*zl, "down", "perf", env=env, check=False)
        os.kill(pid, 15)


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("perf/deploy.py needs root (containers)")
    with tempfile.TemporaryDirectory(prefix="zlayer-perf-deploy-") as tmp:
        work = Path(tmp)
        tar = build_image(work)
        podman_s = peer(tar)
        z = zlayer_run(tar, work)
    result = {
        "replicas": REPLICAS,
        "zlayer_deploy_to_healthy_s": round(z["deploy_s"], 3),
        "podman_run_d_s": round(podman_s, 3),
        "time_vs_peer": round(z["deploy_s"] / podman_s, 3),
        "idle_daemon_rss_mb": round(z["idle_rss_mb"], 1),
        "daemon_rss_with_50_mb": round(z["rss_50_mb"], 1),
        "daemon_cpu_at_rest_50_containers_pct": round(z["cpu_pct_50"], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
