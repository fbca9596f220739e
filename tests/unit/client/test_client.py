"""zlayer.Client against a real daemon process: ZLayer's SDK calls, errors, and auto-start."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import zlayer
from tests.fixtures.daemon import free_port, httpd_service, kill_host_containers
from zlayer.errors import AuthError, NotFoundError, SpecError


def test_sdk_deploy_status_scale_exec_logs_stop(daemon_process: Any) -> None:
    d = daemon_process("a")
    port = free_port()
    spec = "version: v1\ndeployment: sdk-app\nservices:\n  web:\n" + httpd_service(port, 1)

    async def go() -> None:
        async with zlayer.Client(socket=d.socket, auto_start=False) as client:
            assert await client.ps() == []
            created = await client.deploy(spec)
            assert created["name"] == "sdk-app"
            for _ in range(100):
                st = await client.status("sdk-app")
                if st["status"] == "running":
                    break
                await asyncio.sleep(0.1)
            assert st["service_health"][0]["health"] == "healthy"
            [c] = await client.ps()
            assert c["id"] == "web-rep-1" and c["state"] == "running"
            res = await client.exec("sdk-app", "web", ["sh", "-c", "echo $ZLAYER_REPLICA"])
            assert res == {"exit_code": 0, "stdout": "web-rep-1\n", "stderr": "", "oom_killed": False}
            assert f"[stdout] serving {port}" in await client.logs("web-rep-1", tail=10)
            scaled = await client.scale("sdk-app", "web", 0)
            assert scaled["replicas"] == 0 and scaled["desired_replicas"] == 0
            await client.stop("sdk-app")
            with pytest.raises(NotFoundError, match="not found"):
                await client.status("sdk-app")
            with pytest.raises(SpecError) as err:
                await client.deploy("version: v1\ndeployment: x1x\nservices:\n  a: {image: {}}\n")
            assert err.value.code == "invalid_spec"
            assert [p.to_json()["path"] for p in err.value.problems] == ["services.a.image.name"]

    asyncio.run(go())


def test_tcp_client_needs_the_token(daemon_process: Any) -> None:
    d = daemon_process("a")

    async def go() -> None:
        async with zlayer.Client(host=f"http://127.0.0.1:{d.port}", token="nope") as bad:
            with pytest.raises(AuthError) as e:
                await bad.ps()
            assert e.value.code == "unauthorized" and e.value.http_status == 401
        async with zlayer.Client(host=f"http://127.0.0.1:{d.port}", token=d.token) as good:
            assert await good.ps() == []

    asyncio.run(go())


def test_client_auto_starts_a_daemon_when_none_listens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "auto"
    monkeypatch.setenv("ZLAYER_RUNTIME_FACTORY", "tests.fixtures.daemon:host_runtime_factory")
    monkeypatch.setenv("PYTHONPATH", str(Path.cwd()))
    monkeypatch.setenv("ZLAYER_API_BIND", f"127.0.0.1:{free_port()}")

    async def go() -> list[Any]:
        async with zlayer.Client(data_dir=data) as client:
            return await client.ps()

    try:
        t0 = time.monotonic()
        assert asyncio.run(go()) == []
        assert time.monotonic() - t0 < 15
        info = json.loads((data / "daemon.json").read_text())
        assert (data / "logs" / "daemon.log").exists()
    finally:
        if (data / "daemon.json").exists():
            os.kill(json.loads((data / "daemon.json").read_text())["pid"], signal.SIGTERM)
        kill_host_containers(tmp_path)
    assert info["socket_path"] == str(data / "run" / "zlayer.sock")


def test_no_daemon_and_no_auto_start_is_a_clear_error(tmp_path: Path) -> None:
    async def go() -> None:
        async with zlayer.Client(data_dir=tmp_path / "none", auto_start=False) as client:
            await client.ps()

    with pytest.raises(zlayer.errors.DaemonError, match="no zlayer daemon is listening"):
        asyncio.run(go())
