"""The autoscaler's reaction to a step of load, and its own cost at rest.

- reaction: a daemon started for this run with ``--autoscale-interval 1`` serves one adaptive busybox httpd service
  (min 1, max 2, cooldown 1 s, target 20 requests/s per replica) behind its proxy on loopback. Load steps from none
  to ~200 requests/s (a bounded generator of this script's own, to 127.0.0.1 only); ``reaction_s`` is the time from
  the step to the first response served by the added replica (each replica answers its own name), the median of
  five steps (a step falls anywhere within an evaluation interval, so a single one varies by up to the interval).
  ``start_to_healthy_s`` is that replica's own cost, measured on the same service just before: the median of three
  manual scales 1 -> 2 through the API, which returns once the new replica is healthy and in the proxy.
  ``reaction_overhead_s`` = reaction - interval - start_to_healthy (target <= 3 s): what the autoscaler adds.
- idle: 200 adaptive services (one replica each, CPU, memory and requests-per-second targets, an HTTP endpoint each)
  at rest. The daemon's CPU over 60 s is measured with the autoscaler on (the default 10 s interval), off
  (``--autoscale-interval 0``) and on at 1 s, each after a restart of the daemon (which re-adopts the replicas).
  ``idle_cpu_pct`` = on (10 s) - off, in % of one core (target <= 1); ``idle_cpu_pct_interval_1s`` likewise. On a
  shared machine the difference of two such figures moves by a few tenths from run to run: run it more than once.

Run as root: ``python perf/autoscale.py``. The last line is one JSON object.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchlib import cpu_seconds, free_port

IMAGE = "zlayer-perf/httpd:autoscale"
SERVICES_AT_REST = 200
REST_SECONDS = 60.0
STEP_RPS = 200
STEPS = 5  # steps of load; the median reaction is reported (the step falls anywhere in an interval)
TARGET_RPS = 20
WHO = 'echo "$HOSTNAME" > /www/who.txt; exec /bin/busybox httpd -f -p 8080 -h /www'


def sh(*argv: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, env=env)
    if check and r.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])} failed ({r.returncode}): {r.stderr.strip()[-800:]}")
    return r


def build_image(work: Path) -> Path:
    """An OCI layout tar holding /bin/busybox and /www, built offline with umoci."""
    oci, bundle = work / "oci", work / "bundle"
    sh("umoci", "init", "--layout", str(oci))
    sh("umoci", "new", "--image", f"{oci}:latest")
    sh("umoci", "unpack", "--rootless", "--image", f"{oci}:latest", str(bundle))
    (bundle / "rootfs/bin").mkdir(parents=True, exist_ok=True)
    (bundle / "rootfs/www").mkdir(parents=True, exist_ok=True)
    (bundle / "rootfs/bin/busybox").write_bytes(Path("/bin/busybox").read_bytes())
    (bundle / "rootfs/bin/busybox").chmod(0o755)
    (bundle / "rootfs/bin/sh").symlink_to("busybox")
    (bundle / "rootfs/www/index.html").write_text("perf\n")
    sh("umoci", "repack", "--image", f"{oci}:latest", str(bundle))
    tar = work / "image.tar"
    sh("tar", "-C", str(oci), "-cf", str(tar), "oci-layout", "index.json", "blobs")
    return tar


def service(name: str, port: int, scale: str, health_interval: str) -> str:
    return f"""  {name}:
    image: {{name: "{IMAGE}", pull_policy: never}}
    command: {{entrypoint: ["/bin/sh", "-c"], args: [{json.dumps(WHO)}]}}
    stop_grace_period: 2s
    endpoints: [{{name: http, protocol: http, port: {port}, target_port: 8080, expose: public}}]
    scale: {scale}
    health: {{start_grace: 0s, interval: {health_interval}, timeout: 1s, retries: 3, check: {{type: tcp, port: 8080}}}}
"""


class Api:
    """The daemon's API over its unix socket."""

    def __init__(self, sock: Path) -> None:
        self.sock = sock

    def __call__(self, method: str, path: str, body: Any = None, timeout: float = 300.0) -> Any:
        conn = http.client.HTTPConnection("localhost", timeout=timeout)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(str(self.sock))
        conn.sock = s
        try:
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=payload, headers={"Content-Type": "application/json"} if payload else {})
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        if resp.status >= 300:
            raise SystemExit(f"{method} {path} -> {resp.status}: {raw[:500]!r}")
        return json.loads(raw) if raw else None


class Daemon:
    def __init__(self, data: Path, env: dict[str, str]) -> None:
        self.data = data
        self.env = env
        self.zl = [sys.executable, "-m", "zlayer", "--data-dir", str(data)]
        self.api = Api(data / "run" / "zlayer.sock")
        self.pid = 0

    def start(self, interval: float) -> None:
        sh(*self.zl, "serve", "--daemon", "--bind", "none", "--autoscale-interval", f"{interval:g}", env=self.env)
        self.pid = json.loads((self.data / "daemon.json").read_text())["pid"]

    def stop(self) -> None:
        if not self.pid:
            return
        os.kill(self.pid, 15)
        for _ in range(400):
            if not Path(f"/proc/{self.pid}").exists():
                break
            time.sleep(0.05)
        self.pid = 0

    def wait_running(self, name: str, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            d = self.api("GET", f"/api/v1/deployments/{name}")
            if d["status"] == "running" and all(h["health"] == "healthy" for h in d["service_health"]):
                return
            if d["status"] == "failed":
                raise SystemExit(f"deployment {name} failed: {d.get('status_message')}")
            time.sleep(0.5)
        raise SystemExit(f"deployment {name} not running and healthy after {timeout:g}s")

    def desired(self, dep: str, svc: str) -> int:
        return int(self.api("GET", f"/api/v1/deployments/{dep}/services/{svc}")["desired_replicas"])


def load_step(port: int, rps: int, until: threading.Event, first_new: dict[str, float], first: str) -> None:
    """Keep-alive clients sending ``rps`` requests/s in all to /who.txt; records when a replica other than
    ``first`` answers first."""
    clients = 8

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        every = clients / rps
        nxt = time.monotonic()
        while not until.is_set():
            try:
                conn.request("GET", "/who.txt")
                body = conn.getresponse().read().decode().strip()
                if body and body != first and "t" not in first_new:
                    first_new["t"] = time.monotonic()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            nxt += every
            until.wait(max(0.0, nxt - time.monotonic()))
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def reaction(d: Daemon, work: Path) -> dict[str, float]:
    port = free_port()
    scale = f"{{mode: adaptive, min: 1, max: 2, cooldown: 1s, targets: {{rps: {TARGET_RPS}}}}}"
    (work / "react.yml").write_text("version: v1\ndeployment: react\nservices:\n" + service("web", port, scale, "1s"))
    d.api("POST", "/api/v1/deployments", {"spec": (work / "react.yml").read_text()})
    d.wait_running("react")
    # the replica's own start-to-healthy: manual scales 1 -> 2 (the API answers once it is healthy and proxied)
    own: list[float] = []
    for _ in range(3):
        t0 = time.monotonic()
        d.api("POST", "/api/v1/deployments/react/services/web/scale", {"replicas": 2})
        own.append(time.monotonic() - t0)
        d.api("POST", "/api/v1/deployments/react/services/web/scale", {"replicas": 1})
    reactions = [one_step(d, port) for _ in range(STEPS)]
    d.api("DELETE", "/api/v1/deployments/react")
    return {"reaction_s": statistics.median(reactions), "start_to_healthy_s": statistics.median(own)}


def one_step(d: Daemon, port: int) -> float:
    """From rest at one replica, a step of load until the added replica answers; then back to one."""
    d.api("POST", "/api/v1/deployments/react/services/web/scale", {"replicas": 1})
    time.sleep(4.0)  # past the cooldown, the averages settled at rest
    if d.desired("react", "web") != 1:
        raise SystemExit("the service did not stay at 1 replica at rest")
    first = http_get(port, "/who.txt")
    stop, seen = threading.Event(), dict[str, float]()
    gen = threading.Thread(target=load_step, args=(port, STEP_RPS, stop, seen, first), daemon=True)
    t0 = time.monotonic()
    gen.start()
    deadline = t0 + 60.0
    while "t" not in seen and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    gen.join()
    if "t" not in seen:
        raise SystemExit("no added replica served within 60 s of the step")
    return seen["t"] - t0


def http_get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode().strip()
    finally:
        conn.close()


def distinct_ports(n: int) -> list[int]:
    """``n`` different free ports (held open together while they are picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def at_rest(d: Daemon) -> float:
    time.sleep(5.0)
    c0, t0 = cpu_seconds(d.pid), time.monotonic()
    time.sleep(REST_SECONDS)
    c1, t1 = cpu_seconds(d.pid), time.monotonic()
    return 100.0 * (c1 - c0) / (t1 - t0)


def idle(d: Daemon, work: Path) -> dict[str, float]:
    scale = "{mode: adaptive, min: 1, max: 2, cooldown: 30s, targets: {cpu: 80, memory: 80, rps: 1000}}"
    body = "".join(service(f"s{i}", port, scale, "30s") for i, port in enumerate(distinct_ports(SERVICES_AT_REST)))
    d.api("POST", "/api/v1/deployments", {"spec": "version: v1\ndeployment: rest\nservices:\n" + body})
    d.wait_running("rest")
    # Each figure from a daemon that just re-adopted the replicas: measured right after the deploy, the first one
    # carried the deploy's own aftermath and read higher than the others for it.
    d.stop()
    d.start(10.0)
    d.wait_running("rest")
    on = at_rest(d)
    d.stop()
    d.start(0.0)
    d.wait_running("rest")
    off = at_rest(d)
    d.stop()
    d.start(1.0)
    d.wait_running("rest")
    on_1s = at_rest(d)
    d.api("DELETE", "/api/v1/deployments/rest")
    return {"on": on, "off": off, "on_1s": on_1s}


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("perf/autoscale.py needs root (containers)")
    with tempfile.TemporaryDirectory(prefix="zlayer-perf-autoscale-") as tmp:
        work = Path(tmp)
        data = work / "data"
        env = {**os.environ, "ZLAYER_NODE_NETWORK": os.environ.get("ZLAYER_NODE_NETWORK", "on")}
        d = Daemon(data, env)
        sh(*d.zl, "import", str(build_image(work)), "-t", IMAGE, env=env)
        try:
            d.start(1.0)
            r = reaction(d, work)
            d.stop()
            d.start(10.0)
            rest = idle(d, work)
        finally:
            if not d.pid:  # stopped between two runs: a daemon to take the deployments down
                d.start(0.0)
            for name in ("react", "rest"):
                sh(*d.zl, "down", name, env=env, check=False)
            d.stop()
            # this run's node bridge and NAT table (a real node keeps them across daemon restarts)
            teardown = "import asyncio,sys; from pathlib import Path; from zlayer.net import NodeNetwork\n" \
                       "asyncio.run(NodeNetwork(Path(sys.argv[1])).teardown())"  # fmt: skip
            sh(sys.executable, "-c", teardown, str(data), check=False)
    result = {
        "interval_s": 1.0,
        "reaction_s": round(r["reaction_s"], 3),
        "start_to_healthy_s": round(r["start_to_healthy_s"], 3),
        "reaction_overhead_s": round(r["reaction_s"] - 1.0 - r["start_to_healthy_s"], 3),
        "services_at_rest": SERVICES_AT_REST,
        "daemon_cpu_at_rest_autoscaler_on_pct": round(rest["on"], 3),
        "daemon_cpu_at_rest_autoscaler_off_pct": round(rest["off"], 3),
        "idle_cpu_pct": round(rest["on"] - rest["off"], 3),
        "idle_cpu_pct_interval_1s": round(rest["on_1s"] - rest["off"], 3),
        "rest_seconds": REST_SECONDS,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
