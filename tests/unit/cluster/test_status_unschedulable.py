"""`zlayer status` shows why replicas have no node: the scheduler's "unschedulable: …" under the service's row."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import zlayer
from tests.fixtures.daemon import free_port, httpd_service
from zlayer.state import SqliteStore

REASON = (
    "unschedulable: 2 of 3 replicas of web fit no node; of 3 nodes: 2 lack labels zone=eu, "
    "1 already run a replica of web (node_mode dedicated)"
)


def test_status_shows_the_unschedulable_reason(daemon_process: Any) -> None:
    d = daemon_process("a")
    spec = "version: v1\ndeployment: shop\nservices:\n  web:\n" + httpd_service(free_port(), 1)

    async def go() -> None:
        async with zlayer.Client(socket=d.socket, auto_start=False) as client:
            await client.deploy(spec)
            for _ in range(100):
                if (await client.status("shop"))["status"] == "running":
                    break
                await asyncio.sleep(0.1)
        # what the leader's scheduler writes when 2 of 3 wanted replicas have no node (tests/unit/cluster/
        # test_scheduler.py shows it does), written through the store the daemon reads
        store = SqliteStore(d.data_dir / "state.db")
        try:
            await store.set_service_desired("shop", "web", 3)
            await store.set_service_status("shop", "web", "pending", REASON)
        finally:
            await store.close()

    asyncio.run(go())
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    argv = [sys.executable, "-m", "zlayer", "--data-dir", str(d.data_dir), "status"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    row = next(i for i, ln in enumerate(lines) if ln.split()[:1] == ["web"])
    assert lines[row].split()[:3] == ["web", "degraded", "1/3"]
    assert f"  web: pending: {REASON}" in lines[row + 1 :]
    out = subprocess.run([*argv, "-o", "json"], env=env, capture_output=True, text=True, timeout=60)
    (dep,) = json.loads(out.stdout)["deployments"]
    assert dep["service_health"][0]["status_message"] == REASON
