"""Adaptive scaling on a real node: busybox httpd replicas behind the proxy, loaded through it from inside the node's
namespace, with the daemon evaluating every second (``serve --autoscale-interval 1``).

One daemon for the module. A CPU-bound CGI handler under load scales up to max and back to min once the load stops;
a requests-per-second target scales on request rate alone; replicas that hold memory scale on a memory target; no
two steps closer than the cooldown; no request sent through the proxy fails while replicas come and go; the API,
``zlayer status`` and the events say what the autoscaler did and why; ``zlayer scale`` of an adaptive service stays
within its bounds, and a fixed-mode service under the same load keeps its count; targets that can never be met
are refused at deploy; a replica whose cgroup is gone stops the decisions with the reason shown, and the service
keeps its replicas.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon_live import LiveNode, live_node
from tests.fixtures.daemon_node import _enter_netns, unique

pytestmark = [pytest.mark.root, pytest.mark.slow]

COOLDOWN = 3
# A CGI script that burns CPU in the replica's shell for each request (busybox httpd runs /www/cgi-bin/*).
BURN = (
    "mkdir -p /www/cgi-bin; printf '%s\\n' '#!/bin/sh' 'i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done' "
    "'echo Content-Type: text/plain' 'echo' 'echo burnt' > /www/cgi-bin/burn; chmod +x /www/cgi-bin/burn; "
    # and one that takes a second without using CPU: requests in flight while replicas are removed
    "printf '%s\\n' '#!/bin/sh' 'sleep 1' 'echo Content-Type: text/plain' 'echo' 'echo slept' > /www/cgi-bin/slow; "
    "chmod +x /www/cgi-bin/slow; "
)
# PID 1 is a shell that exits at SIGTERM (busybox httpd as PID 1 would ignore it until the SIGKILL): a replica
# removed without being drained first would cut the requests it serves.
HTTPD = "/bin/busybox httpd -f -p 8080 -h /www & trap 'exit 0' TERM; wait"


def spec(name: str, port: int, targets: str, *, lo: int = 1, hi: int = 3, setup: str = "", extra: str = "") -> str:
    script = f"{setup}{HTTPD}"
    return f"""version: v1
deployment: {name}
services:
  web:
    image: {{name: "zlayer-svc/httpd:v1", pull_policy: never}}
    command: {{entrypoint: ["/bin/sh", "-c"], args: [{json.dumps(script)}]}}
    stop_grace_period: 2s
    endpoints: [{{name: http, protocol: http, port: {port}, target_port: 8080, expose: public}}]
    scale: {{mode: adaptive, min: {lo}, max: {hi}, cooldown: {COOLDOWN}s, targets: {targets}}}
    health: {{start_grace: 0s, interval: 1s, timeout: 1s, retries: 2, check: {{type: tcp, port: 8080}}}}
{extra}"""


@dataclass
class Load:
    """Requests through the proxy from ``clients`` keep-alive connections, each at most ``rate`` a second (0: as
    fast as answers come); every failure is kept."""

    ok: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)


@contextlib.contextmanager
def load(node: LiveNode, port: int, path: str, clients: int, rate: float = 0.0) -> Iterator[Load]:
    out = Load()
    lock = threading.Lock()

    def client() -> None:
        _enter_netns(node.ns)
        conn: http.client.HTTPConnection | None = None
        while not out.stop.is_set():
            t = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                with lock:
                    if resp.status == 200:
                        out.ok += 1
                    else:
                        out.failures.append(f"{time.strftime('%X')} HTTP {resp.status}")
            except (OSError, http.client.HTTPException) as e:
                with lock:
                    out.failures.append(f"{time.strftime('%X')} {e!r}")
                if conn is not None:
                    conn.close()
                conn = None
            if rate:
                out.stop.wait(max(0.0, 1.0 / rate - (time.monotonic() - t)))
        if conn is not None:
            conn.close()

    out.threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for th in out.threads:
        th.start()
    try:
        yield out
    finally:
        out.stop.set()
        for th in out.threads:
            th.join(30)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNode]:
    root = tmp_path_factory.mktemp("autoscale")
    with live_node(root, ["--bind", "none", "--autoscale-interval", "1"]) as n:
        yield n


@pytest.fixture
def names(node: LiveNode) -> Iterator[list[str]]:
    """Deployments the test made, removed after it whatever happened."""
    made: list[str] = []
    yield made
    for name in made:
        with contextlib.suppress(Exception):
            node.delete(name)


def service(node: LiveNode, name: str) -> dict[str, Any]:
    got: dict[str, Any] = node.api("GET", f"/api/v1/deployments/{name}/services/web")
    return got


def wait_desired(node: LiveNode, name: str, want: int, timeout: float) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        s = service(node, name)
        return s if s["desired_replicas"] == want and s["replicas"] == want else None

    return node.wait_for(reached, timeout, f"{name}/web at {want} replicas\n{node.describe(name)}", every=0.25)


def scale_events(node: LiveNode, name: str) -> list[dict[str, Any]]:
    return [e for e in node.events(name) if e["kind"] in ("scale_up", "scale_down")]


def steps_apart(events: list[dict[str, Any]]) -> list[float]:
    times = [datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp() for e in events]
    return [b - a for a, b in itertools.pairwise(times)]


def test_cpu_load_scales_up_to_max_and_back_to_min_with_no_failed_request(node: LiveNode, names: list[str]) -> None:
    name, port = unique("ascpu"), node.free_port()
    names.append(name)
    node.deploy(spec(name, port, "{cpu: 8}", setup=BURN))
    node.expect(name)
    assert node.get(port, "/cgi-bin/burn")[1].strip() == "burnt"
    with node.probing(port) as probe, load(node, port, "/cgi-bin/burn", clients=4) as busy:
        up = wait_desired(node, name, 3, 90)
    assert up["scale_mode"] == "adaptive" and (up["min_replicas"], up["max_replicas"]) == (1, 3)
    assert up["metrics"]["cpu_percent"] > 0
    # Scaling down with requests always in flight (each takes a second): every replica removed is drained first.
    with node.probing(port) as idle_probe, load(node, port, "/cgi-bin/slow", clients=3) as slow:
        wait_desired(node, name, 1, 90)
    assert slow.ok > 0 and slow.failures == [], slow.failures[:5]
    events = scale_events(node, name)
    assert [(e["data"]["from"], e["data"]["to"]) for e in events] == [(1, 2), (2, 3), (3, 2), (2, 1)], events
    assert all(e["data"]["metric"] == "cpu" for e in events), events
    assert "cpu" in events[0]["message"] and ">= target 8.0%" in events[0]["message"]
    assert min(steps_apart(events)) >= COOLDOWN - 0.5, events  # no flapping: steps at least a cooldown apart
    assert busy.ok > 0 and busy.failures == [], busy.failures[:5]
    assert probe.failures == [] and idle_probe.failures == [], (probe.failures + idle_probe.failures)[:5]
    status = node.zl("status", name)
    assert status.returncode == 0, status.stderr
    assert "adaptive 1-3" in status.stdout and "last scale 2 -> 1" in status.stdout, status.stdout


def fixed_service(port: int) -> str:
    """A second service of the deployment, in fixed mode: its count is the spec's whatever its load."""
    return f"""  still:
    image: {{name: "zlayer-svc/httpd:v1", pull_policy: never}}
    command: {{entrypoint: ["/bin/sh", "-c"], args: [{json.dumps(HTTPD)}]}}
    endpoints: [{{name: http, protocol: http, port: {port}, target_port: 8080, expose: public}}]
    scale: {{mode: fixed, replicas: 1}}
"""


def test_request_rate_alone_scales_and_manual_scale_stays_within_bounds(node: LiveNode, names: list[str]) -> None:
    name, port, fixed_port = unique("asrps"), node.free_port(), node.free_port()
    names.append(name)
    node.deploy(spec(name, port, "{rps: 8}", extra=fixed_service(fixed_port)))
    node.expect(name)
    with load(node, port, "/", clients=2, rate=10) as traffic, load(node, fixed_port, "/", clients=2, rate=10):
        up = wait_desired(node, name, 3, 60)
    assert traffic.failures == [], traffic.failures[:5]
    still = node.api("GET", f"/api/v1/deployments/{name}/services/still")
    assert (still["scale_mode"], still["desired_replicas"], still["replicas"]) == ("fixed", 1, 1), still
    assert still["autoscale"] is None
    assert not [e for e in scale_events(node, name) if e["data"]["service"] == "still"]
    assert up["autoscale"]["targets"] == {"rps": 8.0} and up["metrics"]["rps"] > 8
    events = scale_events(node, name)
    assert events[0]["data"]["metric"] == "rps" and events[0]["data"]["value"] >= 8, events
    assert "req/s per replica" in events[0]["message"]
    wait_desired(node, name, 1, 60)  # no load: every metric under half its target
    # zlayer scale: a count within [min, max] the autoscaler may move again; outside it, a clear refusal
    out = node.zl("scale", "web", "5", "-d", name)
    assert out.returncode != 0 and "between 1 and 3 replicas" in out.stderr, out.stdout + out.stderr
    out = node.zl("scale", "web", "2", "-d", name)
    assert out.returncode == 0 and "adaptive 1-3" in out.stdout, out.stdout + out.stderr
    assert service(node, name)["autoscale"]["last_scale"] == "-> 2 (set by hand)"
    wait_desired(node, name, 1, 30)  # idle: after the cooldown the autoscaler moves it back


def test_memory_target_scales_up_then_a_gone_cgroup_holds_the_replicas(node: LiveNode, names: list[str]) -> None:
    name, port = unique("asmem"), node.free_port()
    names.append(name)
    hold = "dd if=/dev/zero of=/dev/shm/hold bs=1M count=20 2>/dev/null; "
    extra = "    resources: {memory: 32Mi}\n"
    node.deploy(spec(name, port, "{memory: 40}", hi=2, setup=hold, extra=extra))
    node.expect(name)
    up = wait_desired(node, name, 2, 60)
    assert up["metrics"]["memory_percent"] >= 40
    events = scale_events(node, name)
    assert events and events[0]["data"]["metric"] == "memory", events
    # A replica's cgroup taken away under it: the autoscaler says so and the service keeps its replicas.
    victim = node.containers(name, "web")[0]["id"]
    moved = take_cgroups_away(node, victim)
    try:

        def blocked() -> str | None:
            reason = str(service(node, name)["autoscale"]["reason"])
            return reason if "metrics unavailable" in reason else None

        reason = node.wait_for(blocked, 30, f"the autoscaler to report {victim}'s missing cgroup")
        assert "keeping 2 replicas" in reason and victim in reason and "gone" in reason, reason
        assert "metrics unavailable" in node.zl("status", name).stdout
        assert service(node, name)["desired_replicas"] == 2
        assert any(e["kind"] == "autoscale_blocked" for e in node.events(name))
    finally:
        for pid in moved:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def test_targets_that_can_never_be_met_are_refused_at_deploy(node: LiveNode, names: list[str]) -> None:
    name, port = unique("asbad"), node.free_port()
    names.append(name)
    status, body = node.request("POST", "/api/v1/deployments", {"spec": spec(name, port, "{cpu: 150, rps: 0}")})
    assert status == 400, body
    text = json.dumps(body)
    assert "services.web.scale.targets.cpu" in text and "1 to 100" in text
    assert "services.web.scale.targets.rps" in text
    status, body = node.request("POST", "/api/v1/deployments", {"spec": spec(name, port, "{cpu: 10}", lo=3, hi=2)})
    assert status == 400 and "scale min (3) cannot be greater than max (2)" in json.dumps(body), body


def take_cgroups_away(node: LiveNode, container: str) -> list[int]:
    """Move the container's processes to the root of each of its hierarchies and remove its cgroup directories, as
    an operator's cleanup might; returns the pids moved (the test ends them)."""
    state = json.loads((node.data / "containers" / container / "state.json").read_text())
    paths = [Path(p) for p in state["cgroup_paths"]]
    pids: set[int] = set()
    for p in paths:
        procs = p / "cgroup.procs"
        if not procs.exists():
            continue
        mine = [int(x) for x in procs.read_text().split()]
        pids.update(mine)
        target = next(a for a in p.parents if os.path.ismount(a)) / "cgroup.procs"  # the hierarchy's root
        for pid in mine:
            with contextlib.suppress(OSError):
                target.write_text(str(pid))
    for p in sorted(paths, key=lambda x: len(x.parts), reverse=True):
        with contextlib.suppress(OSError):
            p.rmdir()
    assert not any(p.is_dir() for p in paths), paths
    return sorted(pids)
