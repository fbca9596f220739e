"""The service manager's behaviour: rolling replacement, depends, init actions, health, restart policies, cron."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon import HostProcessRuntime, free_port, httpd_service
from zlayer.agent import Backend, JobManager, ServiceManager
from zlayer.errors import SpecError
from zlayer.spec.models import ServiceSpec
from zlayer.spec.scalars import CronSchedule
from zlayer.state import SqliteStore


class RecordingProxy:
    """Remembers every backend set the manager published, in order."""

    def __init__(self) -> None:
        self.history: list[tuple[str, list[str]]] = []

    async def update_service(self, deployment: str, service: str, spec: ServiceSpec, backends: list[Backend]) -> None:
        self.history.append((service, sorted(b.container for b in backends)))

    async def remove_service(self, deployment: str, service: str) -> None:
        self.history.append((service, []))


Body = Callable[[ServiceManager, HostProcessRuntime, SqliteStore], Awaitable[None]]


def run_manager(tmp_path: Path, body: Body, proxy: Any = None) -> None:
    async def go() -> None:
        store = SqliteStore(tmp_path / "state.db")
        rt = HostProcessRuntime(tmp_path / "containers")
        mgr = ServiceManager(store, rt, proxy=proxy, health_scale=0.2)
        try:
            await body(mgr, rt, store)
        finally:
            await mgr.close()
            await rt.close()
            await store.close()

    asyncio.run(go())


def spec(name: str, services: str) -> str:
    return f"version: v1\ndeployment: {name}\nservices:\n{services}"


async def settled(mgr: ServiceManager, store: SqliteStore, name: str) -> str:
    await mgr.wait_deployed(name)
    dep = await store.get_deployment(name)
    assert dep is not None
    return dep.status + (f": {dep.status_message}" if dep.status_message else "")


def test_changed_spec_rolls_replicas_one_by_one_keeping_a_healthy_backend(tmp_path: Path) -> None:
    proxy = RecordingProxy()
    p1, p2 = free_port(), free_port()

    async def body(mgr: ServiceManager, rt: HostProcessRuntime, store: SqliteStore) -> None:
        await mgr.deploy(spec("roll", "  web:\n" + httpd_service(p1, 1)))
        assert await settled(mgr, store, "roll") == "running"
        old = [c.id for c in await store.list_containers("roll")]
        await mgr.deploy(spec("roll", "  web:\n" + httpd_service(p2, 1)))
        assert await settled(mgr, store, "roll") == "running"
        new = [c.id for c in await store.list_containers("roll")]
        assert old == ["web-rep-1"] and new == ["web-rep-2"]
        # After the first backend appeared, the proxy never saw an empty set: new healthy before old stopped.
        sets = [b for _, b in proxy.history]
        first = sets.index(["web-rep-1"])
        assert [] not in sets[first:]
        assert ["web-rep-1", "web-rep-2"] in sets and sets[-1] == ["web-rep-2"]
        dep = await store.get_deployment("roll")
        assert dep is not None and dep.revision == 2

    run_manager(tmp_path, body, proxy)


def test_depends_waits_for_healthy_and_a_timeout_fails_or_continues(tmp_path: Path) -> None:
    port = free_port()
    never = (
        "  db:\n    image: {name: busybox}\n    command: {entrypoint: [sleep, '60']}\n"
        "    scale: {mode: fixed, replicas: 1}\n"
        "    health: {start_grace: 0s, interval: 1s, check: {type: command, command: 'false'}}\n"
    )

    async def body(mgr: ServiceManager, rt: HostProcessRuntime, store: SqliteStore) -> None:
        dep_fail = "    depends: [{service: db, condition: healthy, timeout: 1s}]\n"
        await mgr.deploy(spec("dep1", never + "  web:\n" + httpd_service(port, 1, extra=dep_fail)))
        status = await settled(mgr, store, "dep1")
        assert status.startswith("failed") and "dependency 'db' not healthy after 1s" in status
        assert [c.service for c in await store.list_containers("dep1")] == ["db"]
        await mgr.delete("dep1")
        dep_go = "    depends: [{service: db, condition: started, timeout: 5s}]\n"
        await mgr.deploy(spec("dep2", never + "  web:\n" + httpd_service(port, 1, extra=dep_go)))
        status = await settled(mgr, store, "dep2")
        # db never turns healthy (so it is reported), but `started` was enough for web to come up
        assert status.startswith("failed: db: replica db-rep-1 not healthy") and "web" not in status
        assert sorted(c.service for c in await store.list_containers("dep2")) == ["db", "web"]

    run_manager(tmp_path, body)


def test_dependency_cycles_are_rejected_before_anything_runs(tmp_path: Path) -> None:
    cyc = (
        "  a:\n    image: {name: x}\n    depends: [{service: b}]\n"
        "  b:\n    image: {name: x}\n    depends: [{service: a}]\n"
    )

    async def body(mgr: ServiceManager, rt: HostProcessRuntime, store: SqliteStore) -> None:
        with pytest.raises(SpecError) as e:
            await mgr.deploy(spec("cyc", cyc))
        assert [str(p) for p in e.value.problems] == ["a -> b -> a"]
        assert await store.list_deployments() == []

    run_manager(tmp_path, body)


def test_init_run_executes_in_the_replica_and_its_failure_fails_the_replica(tmp_path: Path) -> None:
    marker = tmp_path / "init-ran"
    ok_init = (
        "    init: {steps: [{id: mark, uses: init.run, with: {command: 'echo $ZLAYER_REPLICA > "
        + str(marker)
        + "'}}]}\n"
    )
    bad_init = "    init: {steps: [{id: boom, uses: init.run, with: {command: 'echo nope; exit 7'}}]}\n"

    async def body(mgr: ServiceManager, rt: HostProcessRuntime, store: SqliteStore) -> None:
        await mgr.deploy(spec("init1", "  web:\n" + httpd_service(free_port(), 1, extra=ok_init)))
        assert await settled(mgr, store, "init1") == "running"
        assert marker.read_text() == "web-rep-1\n"
        await mgr.deploy(spec("init2", "  web:\n" + httpd_service(free_port(), 1, extra=bad_init)))
        status = await settled(mgr, store, "init2")
        assert "init step 'boom' (init.run): exited 7: nope" in status

    run_manager(tmp_path, body)


def test_wait_tcp_init_times_out_with_a_clear_message(tmp_path: Path) -> None:
    closed = free_port()
    wait = (
        "    init: {steps: [{id: w, uses: init.wait_tcp, with: {host: 127.0.0.1, port: " + str(closed) + ", "
        "timeout: 1}}]}\n"
    )

    async def body(mgr: ServiceManager, rt: HostProcessRuntime, store: SqliteStore) -> None:
        await mgr.deploy(spec("waittcp", "  web:\n" + httpd_service(free_port(), 1, extra=wait)))
        status = await settled(mgr, store, "waittcp")
        assert f"127.0.0.1:{closed} not ready after 1s" in status
        assert rt.argv == {}  # nothing was created

    run_manager(tmp_path, body)


def test_restart_policy_no_leaves_a_crashed_replica_failed_with_its_exit_code(tmp_path: Path) -> None:
    svc = (
        "  once:\n    image: {name: busybox}\n    command: {entrypoint: [sh, -c, 'sleep 0.5; echo bye; exit 5']}\n"
        "    scale: {mode: fixed, replicas: 1}\n    restart_policy: {kind: 'no'}\n"
        "    health: {start_grace: 0s, interval: 1s, check: {type: command, command: 'true'}}\n"
    )

    async def body(mgr: ServiceManager, rt: HostProcessRuntime, store: SqliteStore) -> None:
        await mgr.deploy(spec("once", svc))
        await settled(mgr, store, "once")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rec = await store.get_container("once-rep-1")
            if rec is not None and rec.state == "failed":
                break
            await asyncio.sleep(0.1)
        assert rec is not None and rec.state == "failed" and rec.exit_code == 5 and rec.restarts == 0
        assert "[stdout] bye" in rec.last_error

    run_manager(tmp_path, body)


def test_http_health_check_marks_replicas_healthy(tmp_path: Path) -> None:
    port = free_port()

    async def body(mgr: ServiceManager, rt: HostProcessRuntime, store: SqliteStore) -> None:
        await mgr.deploy(spec("health1", "  web:\n" + httpd_service(port, 1, health="http")))
        assert await settled(mgr, store, "health1") == "running"
        rec = await store.get_container("web-rep-1")
        assert rec is not None and rec.health == "healthy"
        assert "GET http://127.0.0.1:" in mgr.replica_health("web-rep-1")[2]

    run_manager(tmp_path, body)


def test_cron_schedules_and_never_overlaps(tmp_path: Path) -> None:
    cron = (
        "  tick:\n    rtype: cron\n    schedule: '*/1 * * * * *'\n    image: {name: busybox}\n"
        "    command: {entrypoint: [sh, -c, 'sleep 3']}\n"
    )

    async def go() -> None:
        store = SqliteStore(tmp_path / "state.db")
        rt = HostProcessRuntime(tmp_path / "containers")
        jobs = JobManager(store, rt)
        mgr = ServiceManager(store, rt, jobs=jobs, health_scale=0.2)
        try:
            await mgr.deploy(spec("cron1", cron))
            await mgr.wait_deployed("cron1")
            now = datetime.now(UTC) + timedelta(seconds=2)
            first = await jobs.tick(now)
            second = await jobs.tick(now + timedelta(seconds=1))  # first run still going: skipped
            assert len(first) == 1 and second == []
            [rec] = await store.list_cron("cron1")
            assert rec.last_run and rec.next_run > rec.last_run
            await jobs.set_cron_enabled("tick", False)
            assert await jobs.tick(now + timedelta(seconds=10)) == []
            await jobs.cancel(first[0])
            got = await store.get_job_execution(first[0])
            assert got is not None and got.status == "cancelled"
        finally:
            await jobs.close()
            await mgr.close()
            await rt.close()
            await store.close()

    asyncio.run(go())


def test_cron_expressions_follow_the_six_and_seven_field_rules() -> None:
    t = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert CronSchedule.parse("0 */5 * * * * *").next_after(t) == datetime(2026, 3, 1, 12, 5, tzinfo=UTC)
    assert CronSchedule.parse("30 0 9 * * Mon-Fri").next_after(t) == datetime(2026, 3, 2, 9, 0, 30, tzinfo=UTC)
    assert CronSchedule.parse("0 0 0 1 Jan * 2027").next_after(t) == datetime(2027, 1, 1, tzinfo=UTC)
    assert CronSchedule.parse("0 0 0 1 1 * 2020").next_after(t) is None
    for bad, msg in [("* * * * *", "expected 6 or 7 fields"), ("61 * * * * *", "seconds 61 is outside 0-59"),
                     ("0 0 0 * * Funday", "not a valid day of week")]:  # fmt: skip
        with pytest.raises(SpecError, match=msg):
            CronSchedule.parse(bad)


def test_executions_left_running_by_an_earlier_daemon_are_recorded_failed(tmp_path: Path) -> None:
    async def go() -> None:
        from zlayer.state import JobExecutionRecord

        store = SqliteStore(tmp_path / "state.db")
        await store.put_job_execution(JobExecutionRecord("e1", "d", "backup", status="running"))
        await store.put_job_execution(JobExecutionRecord("e2", "d", "backup", status="completed", exit_code=0))
        jobs = JobManager(store, HostProcessRuntime(tmp_path / "containers"))
        await jobs.restore()
        e1, e2 = await store.get_job_execution("e1"), await store.get_job_execution("e2")
        assert e1 is not None and e1.status == "failed" and "daemon restarted" in e1.error
        assert e2 is not None and e2.status == "completed"
        await store.close()

    asyncio.run(go())
