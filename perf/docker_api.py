"""The Docker Engine API shim against a real dockerd, driven by the same client (Debian's ``docker``).

- run: ``docker run --rm busybox true`` (create, attach, start, wait for the removal, the CLI's whole path) through
  ``zlayer serve --docker-socket`` and through Debian's ``dockerd`` (with the containerd and runc it starts), the
  median of ``RUNS`` after a warm-up; ``run_vs_dockerd`` < 1 means zlayer is faster (target <= 0.5).
- ps: ``docker ps`` with ``PS_CONTAINERS`` running containers on each daemon, the median of ``RUNS``;
  ``ps_vs_dockerd`` (target <= 1.0).

Both daemons run in a network namespace the benchmark makes (so dockerd's bridge and iptables rules and zlayer's
bridge and nftables tables stay there), each with its own socket and data root under a temporary directory; both
are stopped and everything removed afterwards. The image is a ``docker save`` archive of Debian's busybox-static,
loaded into each daemon with ``docker load``.

Run as root: ``python perf/docker_api.py``. The last line is one JSON object.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DOCKER = "/usr/bin/docker"  # Debian's docker.io client (another `docker` may come first on PATH)
RUNS = int(os.environ.get("PERF_RUNS", "10"))
PS_CONTAINERS = 100
IMAGE = "busybox:latest"


def sh(*argv: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 300) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    if check and r.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])} failed ({r.returncode}): {(r.stdout + r.stderr).strip()[-800:]}")
    return r.stdout


def busybox_archive(path: Path) -> Path:
    """A ``docker save`` archive: one layer with /bin/busybox and its applets true, sh and sleep."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        t.add("/bin/busybox", arcname="bin/busybox")
        for applet in ("true", "sh", "sleep"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            t.addfile(info)
    data = layer.getvalue()
    diff = "sha256:" + hashlib.sha256(data).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
                         "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()  # fmt: skip
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [IMAGE], "Layers": ["layer/layer.tar"]}]).encode()
    with tarfile.open(path, "w") as t:
        for name, body in ((config_name, config), ("layer/layer.tar", data), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            t.addfile(info, io.BytesIO(body))
    return path


def wait_socket(sock: Path, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited ({proc.returncode}): {log.read_text(errors='replace')[-1500:]}")
        if sock.exists() and subprocess.run([DOCKER, "-H", f"unix://{sock}", "version"], capture_output=True,
                                            timeout=10).returncode == 0:  # fmt: skip
            return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not answer on {sock} within {timeout:.0f}s")


class Daemon:
    def __init__(self, name: str, sock: Path, argv: list[str], log: Path, ns: str) -> None:
        self.name, self.sock, self.log = name, sock, log
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_CONFIG": str(sock.parent / "cfg")}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", *argv], stdout=out, stderr=out,
                                         start_new_session=True)  # fmt: skip
        wait_socket(sock, self.proc, name, log)

    def docker(self, *args: str, check: bool = True) -> str:
        return sh(DOCKER, *args, env=self.env, check=check)

    def timed(self, *args: str) -> float:
        t0 = time.perf_counter()
        self.docker(*args)
        return time.perf_counter() - t0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def measure(d: Daemon, archive: Path) -> dict[str, float]:
    d.docker("load", "-i", str(archive))
    for _ in range(2):  # warm-up: first-use costs (network set-up, caches) are not what is measured
        d.docker("run", "--rm", IMAGE, "true")
    runs = [d.timed("run", "--rm", IMAGE, "true") for _ in range(RUNS)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: d.docker("run", "-d", "--name", f"ps{i}", IMAGE, "sleep", "3600"),
                      range(PS_CONTAINERS)))  # fmt: skip
    running = len(d.docker("ps", "-q").split())
    if running != PS_CONTAINERS:
        raise SystemExit(f"{d.name}: {running} containers running, {PS_CONTAINERS} expected")
    d.docker("ps")
    ps = [d.timed("ps") for _ in range(RUNS)]
    ids = d.docker("ps", "-aq").split()
    for i in range(0, len(ids), 25):
        d.docker("rm", "-f", *ids[i : i + 25], check=False)
    return {"run_s": statistics.median(runs), "ps_s": statistics.median(ps)}


def unmount_under(root: Path) -> None:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if line.split()[4].startswith(str(root) + "/")]
    for p in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", p], capture_output=True)


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("perf/docker_api.py needs root (containers, a network namespace, dockerd)")
    for tool in (DOCKER, "/usr/sbin/dockerd"):
        if not Path(tool).exists():
            raise SystemExit(f"{tool} is missing: install Debian's docker.io (.ci/apt-packages.txt)")
    ns = f"zlperf-docker-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", ns)
    sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
    work = Path(tempfile.mkdtemp(prefix="zlayer-perf-docker-"))
    zl: Daemon | None = None
    dk: Daemon | None = None
    try:
        archive = busybox_archive(work / "busybox.tar")
        root = Path(__file__).resolve().parents[1]
        env_py = f"PYTHONPATH={os.environ.get('PYTHONPATH', str(root))}"
        zl = Daemon("zlayer", work / "zlayer.sock",
                    ["env", env_py, sys.executable, "-m", "zlayer", "--data-dir", str(work / "zlayer"), "serve",
                     "--bind", "none", "--docker-socket-path", str(work / "zlayer.sock")],
                    work / "zlayer.log", ns)  # fmt: skip
        z = measure(zl, archive)
        zl.stop()
        dk = Daemon("dockerd", work / "dockerd.sock",
                    ["/usr/sbin/dockerd", "--host", f"unix://{work / 'dockerd.sock'}", "--data-root",
                     str(work / "docker"), "--exec-root", str(work / "docker-exec"), "--pidfile",
                     str(work / "dockerd.pid"), "--config-file", str(_empty_config(work)), "--log-level", "error"],
                    work / "dockerd.log", ns)  # fmt: skip
        d = measure(dk, archive)
        dk.stop()
    finally:
        for daemon in (zl, dk):
            if daemon is not None:
                with contextlib.suppress(Exception):
                    daemon.stop()
        if zl is not None:
            with contextlib.suppress(Exception):
                from zlayer.net import NodeNetwork
                from zlayer.proxy.dpclient import stop_dataplane

                stop_dataplane(work / "zlayer" / "run")
                import asyncio

                asyncio.run(NodeNetwork(work / "zlayer").teardown())
        unmount_under(work)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "runs": RUNS,
        "zlayer_run_rm_true_s": round(z["run_s"], 4),
        "dockerd_run_rm_true_s": round(d["run_s"], 4),
        "run_vs_dockerd": round(z["run_s"] / d["run_s"], 3),
        "ps_containers": PS_CONTAINERS,
        "zlayer_ps_s": round(z["ps_s"], 4),
        "dockerd_ps_s": round(d["ps_s"], 4),
        "ps_vs_dockerd": round(z["ps_s"] / d["ps_s"], 3),
    }
    print(json.dumps(result))


def _empty_config(work: Path) -> Path:
    """dockerd reads /etc/docker/daemon.json unless told otherwise: this run's daemon takes nothing of the host's."""
    path = work / "daemon.json"
    path.write_text("{}\n")
    return path


if __name__ == "__main__":
    main()
