"""The Python SDK on a real node (issue 5, item 7): ``zlayer.Client`` over the daemon's unix socket, with ZLayer's
async methods ``deploy``, ``ps``, ``logs``, ``exec``, ``status``, ``scale`` and ``stop`` driving real containers."""

from __future__ import annotations

import asyncio
import time

import pytest

import zlayer
from tests.fixtures.daemon_live import LiveNode, web_spec
from tests.fixtures.daemon_node import unique
from zlayer.errors import NotFoundError, SpecError

pytestmark = [pytest.mark.root, pytest.mark.slow]


async def _until(fn, pred, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await fn()
        if pred(last):
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout}s; last: {last!r}")


def test_client_deploy_ps_logs_exec_status_scale_stop(daemon_live: LiveNode, daemon_live_names: list[str]) -> None:
    node, name = daemon_live, unique("sdk")
    daemon_live_names.append(name)
    spec = web_spec(name, 1).replace(
        "args: ['exec /bin/busybox httpd -f -p 8080 -h /www']",
        "args: ['echo hello-from-$(/bin/busybox hostname); exec /bin/busybox httpd -f -p 8080 -h /www']",
    )
    assert "hello-from" in spec

    async def go() -> None:
        sock = node.data / "run" / "zlayer.sock"
        async with zlayer.Client(socket=sock, auto_start=False) as client:
            assert repr(client) == f"Client(socket={str(sock)!r})"
            created = await client.deploy(spec)
            assert created["name"] == name and created["status"] in ("deploying", "running")
            st = await _until(lambda: client.status(name), lambda d: d["status"] == "running")
            assert [(h["name"], h["health"], h["replicas_running"]) for h in st["service_health"]] == [
                ("web", "healthy", 1)
            ]
            mine = [c for c in await client.ps() if c.get("deployment") == name]
            assert [(c["id"], c["state"]) for c in mine] == [("web-rep-1", "running")]
            assert mine[0]["pid"] > 0 and mine[0]["ipv4"]

            text = await _until(lambda: client.logs("web-rep-1", tail=10), lambda t: "hello-from-web-rep-1" in t)
            assert "hello-from-web-rep-1" in text

            res = await client.exec(name, "web", ["/bin/sh", "-c", "cat /www/index.html; echo e >&2; exit 4"])
            assert res == {"exit_code": 4, "stdout": "v1\n", "stderr": "e\n", "oom_killed": False}

            svc = await client.scale(name, "web", 3)
            assert svc["name"] == "web" and svc["desired_replicas"] == 3
            mine = await _until(
                client.ps,
                lambda cs: (
                    sorted(c["id"] for c in cs if c.get("deployment") == name and c["state"] == "running")
                    == ["web-rep-1", "web-rep-2", "web-rep-3"]
                ),
            )
            res = await client.exec(name, "web", ["/bin/busybox", "hostname"], replica=3)
            assert res["stdout"] == "web-rep-3\n"
            await client.scale(name, "web", 1)
            mine = [c for c in await client.ps() if c.get("deployment") == name]
            assert [c["id"] for c in mine] == ["web-rep-1"]

            # errors come back as zlayer.errors classes with the daemon's code and field path
            with pytest.raises(SpecError) as bad:
                await client.deploy(f"version: v1\ndeployment: {name}\nservices:\n  web:\n    image: {{}}\n")
            assert bad.value.code == "invalid_spec" and any("services.web.image" in str(p) for p in bad.value.problems)
            assert (await client.status(name))["status"] == "running"  # the bad deploy changed nothing
            with pytest.raises(NotFoundError):
                await client.status("no-such-deployment")

            await client.stop(name)
            with pytest.raises(NotFoundError):
                await client.status(name)
            assert not [c for c in await client.ps() if c.get("deployment") == name]

    asyncio.run(go())
    assert not any(c.startswith("web-rep") for c in node.runtime_containers())
