"""The SQLite store keeps deployments, revisions, services, containers, jobs and events, and survives a kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from zlayer.state import ContainerRecord, CronRecord, JobExecutionRecord, ServiceRecord, SqliteStore


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_redeploy_adds_a_revision_and_replaces_services(tmp_path: Path) -> None:
    async def go() -> None:
        st = SqliteStore(tmp_path / "state.db")
        await st.put_deployment(
            "app", "v: 1", {"v": 1}, [ServiceRecord("app", "web", {}, 2), ServiceRecord("app", "db", {}, 1)]
        )
        rec = await st.put_deployment("app", "v: 2", {"v": 2}, [ServiceRecord("app", "web", {"x": 1}, 3)])
        assert rec.revision == 2
        got = await st.get_deployment("app")
        assert got is not None and got.spec == {"v": 2} and got.spec_yaml == "v: 2"
        assert [r[0] for r in await st.list_revisions("app")] == [1, 2]
        services = await st.list_services("app")
        assert [(s.name, s.desired_replicas, s.spec) for s in services] == [("web", 3, {"x": 1})]
        await st.set_service_desired("app", "web", 4)
        assert await st.scale_view("app") == ("pending", {"web": 4})  # the autoscaler's read: no spec decoded
        assert await st.scale_view("nosuch") is None
        await st.close()

    run(go())


def test_delete_deployment_removes_its_services_containers_and_cron(tmp_path: Path) -> None:
    async def go() -> None:
        st = SqliteStore(tmp_path / "state.db")
        await st.put_deployment("app", "", {}, [ServiceRecord("app", "web", {}, 1)])
        await st.put_container(ContainerRecord("web-rep-1", "app", "web", 1, image="busybox"))
        await st.put_cron(CronRecord("app", "tick", "0 * * * * *"))
        assert await st.delete_deployment("app") is True
        assert await st.get_deployment("app") is None
        assert await st.list_services("app") == []
        assert await st.list_containers("app") == []
        assert await st.list_cron("app") == []
        assert await st.delete_deployment("app") is False

    run(go())


def test_containers_jobs_and_events_round_trip(tmp_path: Path) -> None:
    async def go() -> None:
        st = SqliteStore(tmp_path / "state.db")
        await st.put_deployment("app", "", {}, [])
        await st.put_container(ContainerRecord("web-rep-2", "app", "web", 2, state="running", exit_code=None))
        await st.put_container(ContainerRecord("web-rep-1", "app", "web", 1, state="exited", exit_code=3, restarts=2))
        cs = await st.list_containers("app", "web")
        assert [(c.id, c.state, c.exit_code, c.restarts) for c in cs] == [
            ("web-rep-1", "exited", 3, 2),
            ("web-rep-2", "running", None, 0),
        ]
        for i in range(3):
            await st.put_job_execution(JobExecutionRecord(f"e{i}", "app", "backup", status="completed", exit_code=0))
        await st.put_job_execution(JobExecutionRecord("e0", "app", "backup", status="failed", exit_code=1))
        ex = await st.list_job_executions("backup")
        assert [e.id for e in ex] == ["e2", "e1", "e0"]
        got = await st.get_job_execution("e0")
        assert got is not None and got.status == "failed"
        s1 = await st.add_event("app", "deploy", "started")
        s2 = await st.add_event("app", "deploy", "done", {"ok": True})
        assert s2 > s1
        evs = await st.list_events("app", after=s1)
        assert [(e.message, e.data) for e in evs] == [("done", {"ok": True})]

    run(go())


_WRITER = """
import asyncio, sys
from zlayer.state import SqliteStore, ServiceRecord
async def main():
    st = SqliteStore(sys.argv[1])
    i = 0
    print("ready", flush=True)
    while True:
        i += 1
        services = [ServiceRecord("app", f"s{j}", {"i": i}, i) for j in range(5)]
        await st.put_deployment("app", f"rev {i}", {"i": i}, services)
asyncio.run(main())
"""


def test_a_store_killed_mid_write_reopens_consistent(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()

    async def check() -> None:
        st = SqliteStore(db)
        dep = await st.get_deployment("app")
        assert dep is not None and dep.revision >= 1
        i = dep.spec["i"]
        assert dep.spec_yaml == f"rev {i}"
        services = await st.list_services("app")
        assert len(services) == 5
        assert all(s.spec == {"i": i} and s.desired_replicas == i for s in services)
        assert len(await st.list_revisions("app")) == dep.revision

    run(check())


def test_a_database_of_the_first_schema_is_upgraded_in_place(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "state.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema_version', '1');"
        "CREATE TABLE containers (id TEXT PRIMARY KEY, deployment TEXT NOT NULL, service TEXT NOT NULL,"
        " replica INTEGER NOT NULL, image TEXT NOT NULL, state TEXT NOT NULL, revision INTEGER NOT NULL,"
        " spec_hash TEXT NOT NULL, exit_code INTEGER, restarts INTEGER NOT NULL, pid INTEGER NOT NULL,"
        " ip TEXT NOT NULL, health TEXT NOT NULL, last_error TEXT NOT NULL, created_at TEXT NOT NULL,"
        " updated_at TEXT NOT NULL);"
        "INSERT INTO containers VALUES ('web-rep-1', 'app', 'web', 1, 'img', 'running', 1, 'h', NULL, 0, 42, '',"
        " 'healthy', '', 't0', 't0');"
    )
    old.commit()
    old.close()

    async def go() -> None:
        st = SqliteStore(path)
        kept = await st.get_container("web-rep-1")
        assert kept is not None and kept.pid == 42 and kept.oom_killed is False
        kept.oom_killed, kept.exit_code = True, 137
        await st.put_container(kept)
        await st.close()
        again = SqliteStore(path)
        got = await again.get_container("web-rep-1")
        assert got is not None and got.oom_killed is True and got.exit_code == 137
        await again.close()

    run(go())
    assert sqlite3.connect(path).execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
