"""The cluster store on a real etcd (Debian's etcd-server, run by zlayer.cluster.etcd as the daemon runs it):
the Store protocol's behaviour as the SQLite store has it, a node's SQLite state carried over whole, revisions and
watches, and etcd's death and return seen as a clear error, not a traceback."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from zlayer.cluster.etcd import EtcdProcess
from zlayer.errors import ZLayerError
from zlayer.state import ContainerRecord, CronRecord, JobExecutionRecord, ServiceRecord, SqliteStore, SwitchingStore
from zlayer.state.etcd import EtcdClient, EtcdError, EtcdStore

pytestmark = pytest.mark.peer


def _store(etcd: EtcdProcess, name: str) -> EtcdStore:
    return EtcdStore(EtcdClient([etcd.member.client_url]), f"/test/{name}/")


def test_the_data_dir_is_the_daemons_alone(etcd: EtcdProcess) -> None:
    assert etcd.data_dir.stat().st_mode & 0o777 == 0o700
    assert etcd.has_data()


def test_the_member_runs_with_a_bounded_raft_log_and_a_tighter_go_heap(etcd: EtcdProcess) -> None:
    assert etcd.proc is not None
    argv = Path(f"/proc/{etcd.proc.pid}/cmdline").read_bytes().decode().split("\0")
    env = Path(f"/proc/{etcd.proc.pid}/environ").read_bytes().decode().split("\0")
    assert argv[argv.index("--snapshot-count") + 1] == "10000"
    assert f"GOGC={os.environ.get('GOGC', '50')}" in env  # the operator's own GOGC wins


def test_deployments_services_containers_jobs_and_events_as_the_sqlite_store(etcd: EtcdProcess) -> None:
    async def go() -> None:
        st = _store(etcd, "protocol")
        await st.put_deployment("app", "v: 1", {"v": 1}, [ServiceRecord("app", "web", {}, 2),
                                                          ServiceRecord("app", "db", {}, 1)])  # fmt: skip
        await st.set_service_status("app", "web", "running", "2/2")
        rec = await st.put_deployment("app", "v: 2", {"v": 2}, [ServiceRecord("app", "web", {"x": 1}, 3)])
        assert rec.revision == 2
        got = await st.get_deployment("app")
        assert got is not None and got.spec == {"v": 2} and got.spec_yaml == "v: 2"
        assert [r[0] for r in await st.list_revisions("app")] == [1, 2]
        services = await st.list_services("app")
        assert [(s.name, s.desired_replicas, s.spec, s.status) for s in services] == [("web", 3, {"x": 1}, "running")]
        await st.set_service_desired("app", "web", 5)
        await st.set_service_desired("app", "nosuch", 5)  # a missing row: nothing, as SQLite's UPDATE
        assert (await st.get_service("app", "web")).desired_replicas == 5  # type: ignore[union-attr]
        await st.set_deployment_status("app", "running", "all healthy")
        assert await st.scale_view("app") == ("running", {"web": 5})  # the autoscaler's read
        assert await st.scale_view("nosuch") is None
        assert (await st.get_deployment("app")).status_message == "all healthy"  # type: ignore[union-attr]

        await st.put_container(ContainerRecord("web-rep-2", "app", "web", 2, state="running"))
        await st.put_container(ContainerRecord("web-rep-1", "app", "web", 1, state="exited", exit_code=3))
        assert [c.id for c in await st.list_containers("app", "web")] == ["web-rep-1", "web-rep-2"]
        assert (await st.get_container("web-rep-1")).exit_code == 3  # type: ignore[union-attr]
        await st.put_job_execution(JobExecutionRecord("e1", "app", "migrate"))
        await st.put_job_execution(JobExecutionRecord("e2", "app", "migrate", status="completed"))
        assert [e.id for e in await st.list_job_executions("migrate")] == ["e2", "e1"]
        await st.put_cron(CronRecord("app", "tick", "0 * * * * *"))
        first = await st.add_event("app", "deploy", "started")
        second = await st.add_event("app", "deploy", "done", {"replicas": 3})
        assert second == first + 1
        events = await st.list_events("app", after=first)
        assert [(e.message, e.data) for e in events] == [("done", {"replicas": 3})]

        assert await st.delete_deployment("app") is True
        assert await st.get_deployment("app") is None
        assert await st.list_services("app") == [] and await st.list_containers("app") == []
        assert await st.list_cron("app") == [] and await st.list_revisions("app") == []
        assert await st.delete_deployment("app") is False
        await st.close()

    asyncio.run(go())


def test_concurrent_writers_lose_no_change(etcd: EtcdProcess) -> None:
    """Read-modify-write under compare-and-swap: 20 writers bumping one counter and redeploying end at 20 events
    and 10 revisions, none lost to a race."""

    async def go() -> None:
        st = _store(etcd, "race")
        await asyncio.gather(*(st.add_event("app", "k", str(i)) for i in range(20)),
                             *(st.put_deployment("app", f"v: {i}", {}, []) for i in range(10)))  # fmt: skip
        assert len(await st.list_events("app")) == 20
        assert [r[0] for r in await st.list_revisions("app")] == list(range(1, 11))
        await st.close()

    asyncio.run(go())


def test_events_added_at_once_on_two_nodes_are_each_numbered_once_in_the_order_each_node_added_them(
    etcd: EtcdProcess,
) -> None:
    """Thirty events at once on each of two nodes (a deploy's replicas starting everywhere): sixty events numbered 1
    to 60 with no gap and no number twice, each add answered with its own number, each node's in its order, and a
    follower reading from the middle gets the rest."""

    async def go() -> None:
        client = EtcdClient([etcd.member.client_url])
        one = EtcdStore(client, "/ev/state/", local="/ev/nodes/1/state/")
        two = EtcdStore(client, "/ev/state/", local="/ev/nodes/2/state/")
        got = await asyncio.gather(*(st.add_event("app", "replica_started", f"{n}:{i}")
                                     for i in range(30) for n, st in (("one", one), ("two", two))))  # fmt: skip
        events = await one.list_events("app")
        assert [e.seq for e in events] == list(range(1, 61)) and sorted(got) == list(range(1, 61))
        assert {e.seq: e.message for e in events} == dict(
            zip(got, [f"{n}:{i}" for i in range(30) for n in ("one", "two")], strict=True)
        )
        for node in ("one", "two"):
            assert [e.message for e in events if e.message.startswith(node)] == [f"{node}:{i}" for i in range(30)]
        assert [e.seq for e in await two.list_events("app", after=45)] == list(range(46, 61))
        assert await two.add_event("app", "deploy_done", "after") == 61
        await client.close()

    asyncio.run(go())


def test_a_nodes_sqlite_state_carries_over_whole_and_once(etcd: EtcdProcess, tmp_path: Path) -> None:
    async def go() -> None:
        sqlite = SqliteStore(tmp_path / "state.db")
        await sqlite.put_deployment("app", "v: 1", {"v": 1}, [ServiceRecord("app", "web", {}, 2)])
        await sqlite.put_deployment("app", "v: 2", {"v": 2}, [ServiceRecord("app", "web", {}, 2)], status="running")
        await sqlite.put_container(ContainerRecord("web-rep-1", "app", "web", 1, state="running", pid=42))
        await sqlite.put_job_execution(JobExecutionRecord("e1", "app", "migrate", status="completed"))
        await sqlite.put_cron(CronRecord("app", "tick", "0 * * * * *"))
        await sqlite.add_event("app", "deploy", "one")
        last = await sqlite.add_event("app", "deploy", "two")
        store = SwitchingStore(sqlite)
        target = _store(etcd, "carry")
        copied = await store.switch(target, target.copy_from)
        assert copied == 1 and store.current is target
        got = await store.get_deployment("app")
        assert got is not None and (got.revision, got.status, got.spec) == (2, "running", {"v": 2})
        assert [r[0] for r in await store.list_revisions("app")] == [1, 2]
        assert [(c.id, c.pid) for c in await store.list_containers()] == [("web-rep-1", 42)]
        assert [e.status for e in await store.list_job_executions()] == ["completed"]
        assert [c.name for c in await store.list_cron()] == ["tick"]
        assert [e.message for e in await store.list_events("app")] == ["one", "two"]
        assert await store.add_event("app", "x", "three") == last + 1  # the counter goes on from SQLite's
        assert await target.copy_from(SqliteStore(tmp_path / "other.db")) == 0  # once only
        await store.close()

    asyncio.run(go())


def test_a_joining_nodes_state_goes_beside_the_clusters_and_its_containers_stay_its_own(
    etcd: EtcdProcess, tmp_path: Path
) -> None:
    async def go() -> None:
        client = EtcdClient([etcd.member.client_url])
        one = EtcdStore(client, "/j/state/", local="/j/nodes/1/state/")
        await one.put_deployment("a", "v: 1", {}, [ServiceRecord("a", "web", {}, 1)])
        await one.add_event("a", "deploy", "a1")
        await one.add_event("a", "deploy", "a2")
        await one.put_container(ContainerRecord("web-rep-1", "a", "web", 1, state="running"))
        sqlite = SqliteStore(tmp_path / "joiner.db")
        await sqlite.put_deployment("b", "v: 1", {}, [ServiceRecord("b", "api", {}, 1)])
        await sqlite.add_event("b", "deploy", "b1")
        await sqlite.put_container(ContainerRecord("api-rep-1", "b", "api", 1, state="running"))
        two = EtcdStore(client, "/j/state/", local="/j/nodes/2/state/")
        assert await two.copy_from(sqlite) == 1
        assert [d.name for d in await one.list_deployments()] == ["a", "b"]  # the cluster's desired state
        assert [e.message for e in await one.list_events("a")] == ["a1", "a2"]  # the cluster's events kept
        assert [(e.seq, e.message) for e in await two.list_events("b")] == [(3, "b1")]  # the joiner's after them
        assert [c.id for c in await one.list_containers()] == ["web-rep-1"]  # each node sees its own
        assert [c.id for c in await two.list_containers()] == ["api-rep-1"]
        every = [(n, c.id) for n, c in await two.all_containers("/j/nodes/")]
        assert every == [("1", "web-rep-1"), ("2", "api-rep-1")]
        await sqlite.close()
        await client.close()

    asyncio.run(go())


def test_a_watch_sees_each_change_with_its_revision(etcd: EtcdProcess) -> None:
    async def go() -> None:
        st = _store(etcd, "watch")
        start = await st.client.revision()
        await st.put_deployment("app", "", {}, [ServiceRecord("app", "web", {}, 1)])
        await st.set_service_desired("app", "web", 3)
        seen: list[tuple[str, str, int]] = []

        async def follow() -> None:
            async for kind, kv in st.watch(start + 1):
                seen.append((kind, kv.key.removeprefix(st.prefix), kv.mod_revision))
                if len(seen) == 4:
                    return

        await asyncio.wait_for(follow(), 10.0)
        keys = [k for _, k, _ in seen]
        assert keys[:3] == ["d/app", "r/app/0000000001", "s/app/web"] and keys[3] == "s/app/web"
        assert seen[0][2] == seen[2][2] < seen[3][2]  # one transaction, one revision; the later change after it
        await st.close()

    asyncio.run(go())


def test_etcd_gone_is_a_clear_error_and_it_comes_back(etcd: EtcdProcess) -> None:
    async def go() -> None:
        st = _store(etcd, "gone")
        await st.put_deployment("app", "", {}, [])
        await etcd.stop()
        with pytest.raises(EtcdError) as err:
            await st.get_deployment("app")
        assert isinstance(err.value, ZLayerError) and err.value.http_status == 503
        assert "etcd does not answer" in str(err.value)
        client = await etcd.start("ignored-on-an-existing-data-dir")
        await client.close()
        assert (await st.get_deployment("app")) is not None  # the data dir kept it
        await st.close()

    asyncio.run(go())


def test_only_the_node_that_won_the_leadership_writes_assignments(etcd: EtcdProcess, tmp_path: Path) -> None:
    """The fencing key: a node that led once and was replaced (it may not know yet) writes nothing over its
    successor's assignments."""
    from zlayer.cluster.membership import ClusterNode, LocalConfig
    from zlayer.cluster.view import Assignment

    async def go() -> None:
        store = SwitchingStore(SqliteStore(tmp_path / "state.db"))

        def node(member: int, node_id: str) -> ClusterNode:
            n = ClusterNode(tmp_path / f"cluster{node_id}", tmp_path / "etcd.log", store, tmp_path, 3669)
            n.local = LocalConfig(node_id, "127.0.0.1", 3669, 9000, 2379, "", "")
            n.client = EtcdClient([etcd.member.client_url])
            n._member_id = member
            return n

        old, new = node(11, "1"), node(12, "2")
        on = {n: [Assignment(deployment="app", service="web", replica=1, node_id=n)] for n in ("1", "2")}
        with pytest.raises(EtcdError, match="no longer leads"):
            await old.assignments().put_assignments({("app", "web"): on["1"]})  # it never won: nothing written
        won = await old.claim_leadership()
        assert await old.claim_leadership() == won  # the same term, the same fencing revision
        await old.assignments().put_assignments({("app", "web"): on["1"]})
        await new.claim_leadership()  # the next term
        with pytest.raises(EtcdError, match="no longer leads"):
            await old.assignments().put_assignments({("app", "web"): []})
        await new.assignments().put_assignments({("app", "web"): on["2"]})
        assert [a.node_id for a in await old.assignments().assignments()] == ["2"]
        for n in (old, new):
            await n.need()[1].close()
        await store.close()

    asyncio.run(go())
