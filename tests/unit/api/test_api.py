"""The REST API as a client sees it: status codes, JSON shapes and error codes, over a real agent and store.

Containers here are host processes (HostProcessRuntime), so these run without root; the same routes are exercised
against the real Linux runtime in tests/integration/daemon.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures.daemon import HostProcessRuntime, free_port, httpd_service
from zlayer.agent import JobManager, ServiceManager
from zlayer.api import ApiContext, TokenAuth, create_app
from zlayer.state import SqliteStore
from zlayer.tokens import create_token

Body = Callable[[httpx.AsyncClient, ApiContext], Awaitable[None]]


def run_api(tmp_path: Path, body: Body, token: str | None = None) -> None:
    async def go() -> None:
        store = SqliteStore(tmp_path / "state.db")
        rt = HostProcessRuntime(tmp_path / "containers")
        jobs = JobManager(store, rt)
        manager = ServiceManager(store, rt, jobs=jobs, health_scale=0.2)
        context = ApiContext(store=store, runtime=rt, manager=manager, jobs=jobs, runtime_name="host", token="t0k")
        context.ready = True
        app: Any = create_app(context)
        if token is not None:
            app = TokenAuth(app, "t0k")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://zlayer", headers=headers) as client:
                await body(client, context)
        finally:
            await manager.close()
            await jobs.close()
            await rt.close()
            await store.close()

    asyncio.run(go())


async def wait_for(fn: Callable[[], Awaitable[Any]], pred: Callable[[Any], bool], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await fn()
        if pred(last):
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"condition not met in {timeout}s; last={last!r}")


def spec(name: str, services: str) -> str:
    return f"version: v1\ndeployment: {name}\nservices:\n{services}"


def test_health_endpoints_answer_with_version_and_runtime(tmp_path: Path) -> None:
    async def body(c: httpx.AsyncClient, _: ApiContext) -> None:
        live = await c.get("/health/live")
        assert live.status_code == 200 and live.json()["status"] == "ok" and live.json()["runtime_name"] == "host"
        assert (await c.get("/health/ready")).status_code == 200
        doc = (await c.get("/api-docs/openapi.json")).json()
        assert "/api/v1/deployments/{deployment}/services/{service}/scale" in doc["paths"]

    run_api(tmp_path, body)


def test_invalid_spec_is_rejected_with_every_problem_and_nothing_is_stored(tmp_path: Path) -> None:
    bad = "version: v2\ndeployment: x\nservices:\n  web:\n    image: nginx\n  db:\n    scale: {replicas: 2}\n"

    async def body(c: httpx.AsyncClient, _: ApiContext) -> None:
        r = await c.post("/api/v1/deployments", json={"spec": bad})
        assert r.status_code == 400
        err = r.json()
        assert err["code"] == "invalid_spec"
        paths = {p["path"] for p in err["problems"]}
        assert {"version", "deployment", "services.web.image", "services.db.image", "services.db.scale.mode"} <= paths
        assert (await c.get("/api/v1/deployments")).json() == []

    run_api(tmp_path, body)


def test_unknown_things_are_404_with_a_stable_code(tmp_path: Path) -> None:
    async def body(c: httpx.AsyncClient, _: ApiContext) -> None:
        r = await c.get("/api/v1/deployments/nope")
        assert r.status_code == 404 and r.json()["code"] == "not_found" and "nope" in r.json()["message"]
        assert (await c.get("/api/v1/deployments/nope/services/web")).status_code == 404
        assert (await c.delete("/api/v1/deployments/nope")).status_code == 404
        assert (await c.get("/api/v1/containers/web-rep-9")).status_code == 404
        r = await c.post("/api/v1/deployments", json={"nospec": 1})
        assert r.status_code == 400 and r.json()["code"] == "invalid_request" and r.json()["where"] == "spec"

    run_api(tmp_path, body)


def test_deploy_scale_and_delete_converge_replicas(tmp_path: Path) -> None:
    port = free_port()

    async def body(c: httpx.AsyncClient, ctx: ApiContext) -> None:
        r = await c.post("/api/v1/deployments", json={"spec": spec("shop", "  web:\n" + httpd_service(port, 1))})
        assert r.status_code == 201
        assert r.json()["name"] == "shop" and r.json()["services"] == ["web"]
        await wait_for(lambda: c.get("/api/v1/deployments/shop"), lambda r: r.json()["status"] == "running")
        details = (await c.get("/api/v1/deployments/shop")).json()
        assert details["service_health"][0] == {
            "name": "web",
            "health": "healthy",
            "replicas_running": 1,
            "replicas_desired": 1,
            "endpoints": [],
        }
        # The replica really serves: it answers with its own container id.
        _, w = await asyncio.open_connection("127.0.0.1", port)
        w.close()
        svc = (await c.get("/api/v1/deployments/shop/services/web")).json()
        assert svc["replicas"] == 1 and svc["desired_replicas"] == 1 and "metrics" in svc

        scaled = await c.post("/api/v1/deployments/shop/services/web/scale", json={"replicas": 0})
        assert scaled.status_code == 200 and scaled.json()["desired_replicas"] == 0 and scaled.json()["replicas"] == 0
        assert (await c.post("/api/v1/deployments/shop/services/web/scale", json={"replicas": -1})).status_code == 400
        assert (await c.post("/api/v1/deployments/shop/services/web/scale", json={"replicas": 1})).status_code == 200
        containers = (await c.get("/api/v1/deployments/shop/services/web/containers")).json()
        assert [x["id"] for x in containers] == ["web-rep-1"] and containers[0]["state"] == "running"

        ex = await c.post("/api/v1/deployments/shop/services/web/exec", json={"command": ["sh", "-c", "echo hi"]})
        assert ex.json() == {"exit_code": 0, "stdout": "hi\n", "stderr": "", "oom_killed": False}
        logs = await c.get("/api/v1/deployments/shop/services/web/logs", params={"lines": 5})
        assert f"[stdout] serving {port}" in logs.text

        assert (await c.delete("/api/v1/deployments/shop")).status_code == 204
        assert (await c.get("/api/v1/containers")).json() == []
        assert all(p.returncode is not None for p in ctx.runtime.procs.values())  # type: ignore[attr-defined]

    run_api(tmp_path, body)


def test_crash_looping_replica_shows_backoff_exit_code_and_last_lines(tmp_path: Path) -> None:
    crash = (
        "  bad:\n    image: {name: busybox}\n"
        "    command: {entrypoint: [sh, -c, 'echo boom-$$; exit 3']}\n"
        "    scale: {mode: fixed, replicas: 1}\n"
        "    health: {start_grace: 0s, interval: 1s, check: {type: command, command: 'true'}}\n"
    )

    async def body(c: httpx.AsyncClient, _: ApiContext) -> None:
        await c.post("/api/v1/deployments", json={"spec": spec("crashy", crash)})
        info = await wait_for(
            lambda: c.get("/api/v1/containers/bad-rep-1"),
            lambda r: r.status_code == 200 and r.json()["restarts"] >= 2 and r.json()["state"] == "backoff",
        )
        data = info.json()
        assert data["exit_code"] == 3
        assert "exited with code 3" in data["last_error"] and "[stdout] boom-" in data["last_error"]

    run_api(tmp_path, body)


def test_missing_image_shows_the_pull_error_on_the_service(tmp_path: Path) -> None:
    svc = "  web:\n    image: {name: 'missing/app:1'}\n    scale: {mode: fixed, replicas: 1}\n"

    async def body(c: httpx.AsyncClient, _: ApiContext) -> None:
        await c.post("/api/v1/deployments", json={"spec": spec("ghost", svc)})
        dep = await wait_for(lambda: c.get("/api/v1/deployments/ghost"), lambda r: r.json()["status"] == "failed")
        assert "manifest unknown" in dep.json()["status_message"]
        svc_json = (await c.get("/api/v1/deployments/ghost/services/web")).json()
        assert svc_json["status"] == "failed" and "missing/app:1" in svc_json["status_message"]

    run_api(tmp_path, body)


def test_jobs_run_to_completion_and_cron_can_be_switched(tmp_path: Path) -> None:
    services = (
        "  report:\n    rtype: job\n    image: {name: busybox}\n"
        "    command: {entrypoint: [sh, -c, 'echo report done; exit 0']}\n"
        "  tick:\n    rtype: cron\n    schedule: '0 0 0 1 1 * 2099'\n    image: {name: busybox}\n"
        "    command: {entrypoint: [sh, -c, 'echo tick']}\n"
    )

    async def body(c: httpx.AsyncClient, _: ApiContext) -> None:
        await c.post("/api/v1/deployments", json={"spec": spec("batch", services)})
        await wait_for(lambda: c.get("/api/v1/deployments/batch"), lambda r: r.json()["status"] == "running")
        r = await c.post("/api/v1/jobs/report/trigger")
        assert r.status_code == 202
        exec_id = r.json()["execution_id"]
        done = await wait_for(
            lambda: c.get(f"/api/v1/jobs/{exec_id}/status"), lambda r: r.json()["status"] == "completed"
        )
        assert done.json()["exit_code"] == 0 and "[stdout] report done" in done.json()["logs"]
        assert [e["id"] for e in (await c.get("/api/v1/jobs/report/executions")).json()] == [exec_id]
        assert (await c.post(f"/api/v1/jobs/{exec_id}/cancel")).status_code == 409

        crons = (await c.get("/api/v1/cron")).json()
        assert crons[0]["name"] == "tick" and crons[0]["enabled"] and crons[0]["next_run"].startswith("2099-01-01")
        off = await c.put("/api/v1/cron/tick/disable")
        assert off.json()["enabled"] is False
        assert (await c.get("/api/v1/cron/tick")).json()["next_run"] is None
        assert (await c.put("/api/v1/cron/tick/enable")).json()["enabled"] is True
        trig = await c.post("/api/v1/cron/tick/trigger")
        assert trig.status_code == 202
        await wait_for(
            lambda: c.get(f"/api/v1/jobs/{trig.json()['execution_id']}/status"),
            lambda r: r.json()["status"] == "completed",
        )

    run_api(tmp_path, body)


def test_tcp_listener_needs_the_bearer_token(tmp_path: Path) -> None:
    async def wrong(c: httpx.AsyncClient, _: ApiContext) -> None:
        r = await c.get("/api/v1/deployments")
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        assert (await c.get("/health/live")).status_code == 200

    async def right(c: httpx.AsyncClient, _: ApiContext) -> None:
        assert (await c.get("/api/v1/deployments")).status_code == 200

    run_api(tmp_path / "a", wrong, token="wrong")
    run_api(tmp_path / "b", right, token=create_token("t0k", "ci", 60, ["admin"]))
    run_api(tmp_path / "c", wrong, token="t0k")  # the secret itself is not a token
    run_api(tmp_path / "d", wrong, token=create_token("t0k", "ci", -60, ["admin"]))  # expired
