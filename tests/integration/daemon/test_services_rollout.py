"""Rolling replacement and scaling on a real node: busybox httpd replicas behind the proxy, observed from outside.

A spec change and an image change each replace the replicas one at a time; requests sent through the proxy the
whole time never fail, and at some moment the new replica is healthy while the old one is still running. Fixed and
manual scale, scale through the API, the SDK and ``zlayer stop -s`` (the CLI's way to scale a service to zero).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from tests.fixtures.daemon_node import Node, unique

pytestmark = [pytest.mark.root, pytest.mark.slow]


# /who.txt names the replica that answers and the MSG of the spec revision that made it
HTTPD = 'echo "$(/bin/busybox hostname) $MSG" > /www/who.txt; exec /bin/busybox httpd -f -p 8080 -h /www'


def web_spec(name: str, port: int, *, tag: str = "v1", msg: str = "one", replicas: int = 2, scale: str = "") -> str:
    scale = scale or f"{{mode: fixed, replicas: {replicas}}}"
    return f"""version: v1
deployment: {name}
services:
  web:
    image: {{name: "zlayer-svc/httpd:{tag}", pull_policy: never}}
    command: {{entrypoint: ["/bin/sh", "-c"], args: [{HTTPD!r}]}}
    env: {{MSG: "{msg}"}}
    stop_grace_period: 1s
    endpoints: [{{name: http, protocol: http, port: {port}, target_port: 8080, expose: public}}]
    scale: {scale}
    health: {{start_grace: 0s, interval: 1s, timeout: 1s, retries: 2, check: {{type: http, url: "http://localhost:8080/"}}}}
"""


class Watcher:
    """Polls the service's containers (through the API) while a rollout runs, keeping every snapshot."""

    def __init__(self, node: Node, name: str) -> None:
        self.node, self.name = node, name
        self.snaps: list[list[dict[str, Any]]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.snaps.append(self.node.containers(self.name, "web"))
            self._stop.wait(0.05)

    def __enter__(self) -> Watcher:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(10)

    def overlap(self, old: set[tuple[str, int]], new: set[tuple[str, int]]) -> bool:
        """Some snapshot shows a new replica healthy while an old one is still running (replicas are told apart
        by id and pid: a freed replica number is reused)."""
        for snap in self.snaps:
            healthy_new = any((c["id"], c["pid"]) in new and c["health"]["status"] == "healthy" for c in snap)
            running_old = any((c["id"], c["pid"]) in old and c["state"] == "running" for c in snap)
            if healthy_new and running_old:
                return True
        return False


def stops_follow_health(events: list[dict[str, Any]], after: int) -> int:
    """Every replica stop after event ``after`` comes after a replica turned healthy since the previous stop;
    returns how many stops there were."""
    stops, healthy_since = 0, False
    for e in events:
        if e["seq"] <= after:
            continue
        if e["kind"] == "health" and ": healthy" in e["message"]:
            healthy_since = True
        elif e["kind"] == "replica_stopped":
            assert healthy_since, f"{e['message']} before any new replica was healthy: {events}"
            stops, healthy_since = stops + 1, False
    return stops


def running(node: Node, name: str) -> list[dict[str, Any]]:
    return [c for c in node.containers(name, "web") if c["state"] == "running"]


def test_spec_and_image_changes_roll_one_replica_at_a_time_without_failed_requests(
    daemon_node: Node, daemon_deployments: list[str]
) -> None:
    node = daemon_node
    name, port = unique("roll"), node.free_port()
    daemon_deployments.append(name)
    node.deploy(web_spec(name, port))
    node.expect(name)
    first = {(c["id"], c["pid"]) for c in running(node, name)}
    assert sorted(i for i, _ in first) == ["web-rep-1", "web-rep-2"]
    assert node.get(port) == (200, "v1\n")
    status, body = node.get(port, "/who.txt")
    assert status == 200 and body.split()[1] == "one", body

    # 1) spec change (env): both replicas replaced, one at a time, while requests keep flowing.
    mark = node.events(name)[-1]["seq"]
    with node.probing(port, "/who.txt") as probe, Watcher(node, name) as watch:
        time.sleep(0.3)
        node.deploy(web_spec(name, port, msg="two"))
        node.expect(name)
        node.wait_for(lambda: any(b.split()[1] == "two" for b in probe.bodies()[-3:]), 10, "answers from 'two'")
    assert probe.results and not probe.failures, probe.failures[:5]
    second = {(c["id"], c["pid"]) for c in running(node, name)}
    assert len(second) == 2 and not second & first, (first, second)
    assert watch.overlap(first, second), "never saw a new replica healthy beside a running old one"
    # never fewer than the desired count of running replicas during the roll
    assert min(sum(c["state"] == "running" for c in s) for s in watch.snaps if s) >= 2
    msgs = [b.split()[1] for b in probe.bodies()]
    assert msgs[0] == "one" and msgs[-1] == "two" and set(msgs) == {"one", "two"}
    # the events say the same: each old replica stopped only after a new one turned healthy
    assert stops_follow_health(node.events(name), mark) == 2

    # 2) image change (v1 -> v2), same spec otherwise.
    mark = node.events(name)[-1]["seq"]
    with node.probing(port) as probe, Watcher(node, name) as watch:
        time.sleep(0.3)
        node.deploy(web_spec(name, port, msg="two", tag="v2"))
        node.expect(name)
        node.wait_for(lambda: probe.bodies()[-1:] == ["v2\n"], 10, "answers from the v2 image")
    assert probe.results and not probe.failures, probe.failures[:5]
    third = {(c["id"], c["pid"]) for c in running(node, name)}
    assert len(third) == 2 and not third & second
    assert all(c["image"] == "zlayer-svc/httpd:v2" for c in running(node, name))
    assert watch.overlap(second, third)
    assert min(sum(c["state"] == "running" for c in s) for s in watch.snaps if s) >= 2
    assert probe.bodies()[0] == "v1\n" and set(probe.bodies()) == {"v1\n", "v2\n"}
    assert stops_follow_health(node.events(name), mark) == 2

    # 3) the same spec again changes nothing: no replica is touched.
    node.deploy(web_spec(name, port, msg="two", tag="v2"))
    node.expect(name)
    assert {(c["id"], c["pid"]) for c in running(node, name)} == third


def test_fixed_and_manual_scale_through_api_sdk_and_cli(daemon_node: Node, daemon_deployments: list[str]) -> None:
    node = daemon_node
    name, port = unique("scale"), node.free_port()
    daemon_deployments.append(name)

    # fixed: the spec's count, and a redeploy with another count converges to it
    node.deploy(web_spec(name, port, replicas=1))
    node.expect(name)
    assert [c["id"] for c in running(node, name)] == ["web-rep-1"]
    node.deploy(web_spec(name, port, replicas=3))
    node.expect(name)
    assert sorted(c["id"] for c in running(node, name)) == ["web-rep-1", "web-rep-2", "web-rep-3"]
    hosts = {node.get(port, "/who.txt")[1].split()[0] for _ in range(12)}
    assert hosts == {"web-rep-1", "web-rep-2", "web-rep-3"}  # the proxy balances over all three

    # scale through the API: down to 1 (highest numbers go first), then up to 2
    body = node.api("POST", f"/api/v1/deployments/{name}/services/web/scale", {"replicas": 1})
    assert body["desired_replicas"] == 1 and body["replicas"] == 1
    assert [c["id"] for c in running(node, name)] == ["web-rep-1"]
    assert node.get(port)[0] == 200
    body = node.api("POST", f"/api/v1/deployments/{name}/services/web/scale", {"replicas": 2})
    assert body["replicas"] == 2
    health = node.deployment(name)["service_health"][0]
    assert (health["replicas_running"], health["replicas_desired"], health["health"]) == (2, 2, "healthy")
    status, err = node.request("POST", f"/api/v1/deployments/{name}/services/web/scale", {"replicas": -1})
    assert status == 422 or status == 400, (status, err)
    status, err = node.request("POST", f"/api/v1/deployments/{name}/services/nope/scale", {"replicas": 1})
    assert status == 404, (status, err)

    # the CLI: `zlayer stop DEPLOYMENT -s web` scales the service to zero, keeping the deployment
    r = node.zl("stop", name, "-s", "web", "-t", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert running(node, name) == []
    assert node.deployment(name)["service_health"][0]["health"] == "stopped"
    assert node.get(port)[0] != 200

    # the SDK brings it back
    async def sdk_scale() -> dict[str, Any]:
        from zlayer import Client

        async with Client(data_dir=node.data, auto_start=False) as c:
            return await c.scale(name, "web", 2)

    assert asyncio.run(sdk_scale())["replicas"] == 2
    assert node.get(port)[0] == 200

    # manual: starts with none; scale sets the count, and a redeploy of the same spec keeps it
    manual = unique("manual")
    daemon_deployments.append(manual)
    mport = node.free_port()
    node.deploy(web_spec(manual, mport, scale="{mode: manual}"))
    node.expect(manual)
    assert running(node, manual) == []
    node.api("POST", f"/api/v1/deployments/{manual}/services/web/scale", {"replicas": 2})
    assert len(running(node, manual)) == 2
    node.deploy(web_spec(manual, mport, scale="{mode: manual}"))
    node.expect(manual)
    assert len(running(node, manual)) == 2
    assert node.get(mport) == (200, "v1\n")


def test_same_service_name_in_two_deployments_keeps_each_ones_replicas(
    daemon_node: Node, daemon_deployments: list[str]
) -> None:
    node = daemon_node
    (a, pa), (b, pb) = (unique("twa"), node.free_port()), (unique("twb"), node.free_port())
    daemon_deployments += [a, b]
    node.deploy(web_spec(a, pa, msg="from-a"))
    node.expect(a)
    before = {(c["id"], c["pid"]) for c in running(node, a)}
    node.deploy(web_spec(b, pb, msg="from-b"))
    node.expect(b)
    # b's replicas got their own ids; a's replicas were not touched
    assert {(c["id"], c["pid"]) for c in running(node, a)} == before
    ids_b = {c["id"] for c in running(node, b)}
    assert len(ids_b) == 2 and not ids_b & {i for i, _ in before}, ids_b
    for dep, msg in ((a, "from-a"), (b, "from-b")):
        for c in running(node, dep):
            r = node.api("POST", f"/api/v1/containers/{c['id']}/exec", {"command": ["cat", "/www/who.txt"]})
            assert r["stdout"] == f"{c['id']} {msg}\n", (dep, c["id"], r)
    node.delete(b)
    assert {(c["id"], c["pid"]) for c in running(node, a)} == before


def test_new_image_content_under_the_same_name_rolls_on_redeploy(
    daemon_node: Node, daemon_deployments: list[str]
) -> None:
    node = daemon_node
    reg, tag = node.registry(), unique("moving")
    local, remote = f"zlayer-svc/{tag}:1", f"{reg}/svc/{tag}:1"
    r = node.zl("import", str(node.root / "svc-v1.tar"), "-t", local)
    assert r.returncode == 0, r.stderr
    node.push("zlayer-svc/httpd:v1", remote)
    cases = [
        # re-imported under the same name (pull_policy never: the local store is the source)
        (local, "never", lambda: node.zl("import", str(node.root / "svc-v2.tar"), "-t", local).check_returncode()),
        # pushed again under the same tag, pulled by a deploy with pull_policy always
        (remote, "always", lambda: node.push("zlayer-svc/httpd:v2", remote)),
    ]
    for image, policy, renew in cases:
        name, port = unique("same"), node.free_port()
        daemon_deployments.append(name)
        old_image = '"zlayer-svc/httpd:v1", pull_policy: never'
        text = web_spec(name, port).replace(old_image, f'"{image}", pull_policy: {policy}')
        node.deploy(text)
        node.expect(name)
        assert node.get(port) == (200, "v1\n")
        before = {(c["id"], c["pid"]) for c in running(node, name)}
        node.deploy(text)  # nothing new: nothing replaced
        node.expect(name)
        assert {(c["id"], c["pid"]) for c in running(node, name)} == before
        renew()
        with node.probing(port) as probe:
            node.deploy(text)
            node.expect(name)
            node.wait_for(lambda: probe.bodies()[-1:] == ["v2\n"], 10, f"{image} answering with the new content")
        assert probe.results and not probe.failures, (image, probe.failures[:5])
        after = {(c["id"], c["pid"]) for c in running(node, name)}
        assert len(after) == 2 and not after & before, (image, before, after)


def test_a_broken_new_spec_stops_the_roll_and_the_old_replicas_keep_serving(
    daemon_node: Node, daemon_deployments: list[str]
) -> None:
    node = daemon_node
    name, port = unique("badroll"), node.free_port()
    daemon_deployments.append(name)
    node.deploy(web_spec(name, port))
    node.expect(name)
    old = {(c["id"], c["pid"]) for c in running(node, name)}
    broken = web_spec(name, port, msg="three").replace(repr(HTTPD), repr("echo 'no config' >&2; exit 2"))
    with node.probing(port) as probe:
        node.deploy(broken)
        d = node.expect(name, "failed")
        time.sleep(0.5)
    assert "is crash-looping: exited with code 2" in d["status_message"], d
    assert probe.results and not probe.failures, probe.failures[:5]
    assert old <= {(c["id"], c["pid"]) for c in running(node, name)}  # both old replicas still run
    crashing = [c for c in node.containers(name, "web") if (c["id"], c["pid"]) not in old]
    assert len(crashing) == 1 and crashing[0]["exit_code"] == 2 and "no config" in crashing[0]["last_error"]
    # the fixed spec rolls on from there
    node.deploy(web_spec(name, port, msg="four"))
    node.expect(name)
    assert {c["state"] for c in node.containers(name, "web")} == {"running"} and len(running(node, name)) == 2
    assert node.get(port, "/who.txt")[1].split()[1] == "four"
