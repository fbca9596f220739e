"""Service-manager rules found on a real node, checked here without root (host-process runtime)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.fixtures.daemon import HostProcessRuntime, free_port, httpd_service
from tests.unit.agent.test_service_manager import run_manager, settled, spec
from zlayer.agent import ServiceManager
from zlayer.state import SqliteStore


def test_same_service_name_in_two_deployments_gets_distinct_replica_ids(tmp_path: Path) -> None:
    async def body(mgr: ServiceManager, rt: HostProcessRuntime, store: SqliteStore) -> None:
        # (one replica each: host-process replicas share the host network, two would fight over the port)
        await mgr.deploy(spec("one", "  web:\n" + httpd_service(free_port(), 1)))
        assert await settled(mgr, store, "one") == "running"
        pids = {c.id: c.pid for c in await store.list_containers("one")}
        await mgr.deploy(spec("two", "  web:\n" + httpd_service(free_port(), 1)))
        assert await settled(mgr, store, "two") == "running"
        assert sorted(c.id for c in await store.list_containers("two")) == ["web-rep-2"]
        assert {c.id: c.pid for c in await store.list_containers("one")} == pids  # untouched
        assert all(rt.procs[i].returncode is None for i in pids)

    run_manager(tmp_path, body)


def test_a_service_waits_only_for_its_own_dependencies(tmp_path: Path) -> None:
    slow_db = (
        "  db:\n    image: {name: busybox}\n    command: {entrypoint: [sleep, '60']}\n"
        "    scale: {mode: fixed, replicas: 1}\n"
        "    health: {start_grace: 0s, interval: 1s, check: {type: command, command: 'false'}}\n"
    )
    api = "    depends: [{service: db, condition: healthy, timeout: 3s, on_timeout: continue}]\n"

    async def body(mgr: ServiceManager, rt: HostProcessRuntime, store: SqliteStore) -> None:
        t0 = time.monotonic()
        await mgr.deploy(
            spec(
                "own",
                slow_db
                + "  api:\n"
                + httpd_service(free_port(), 1, extra=api)
                + "  zzz:\n"
                + httpd_service(free_port(), 1),
            )
        )
        # zzz has no depends: it is up long before api's wait on db ends (the order puts it after api)
        while not [c for c in await store.list_containers("own", "zzz") if c.health == "healthy"]:
            assert time.monotonic() - t0 < 2.5, "zzz was held back behind api's dependency wait"
            await asyncio.sleep(0.05)
        assert await store.list_containers("own", "api") == []
        await settled(mgr, store, "own")
        assert [c.service for c in await store.list_containers("own", "api")] == ["api"]

    run_manager(tmp_path, body)


def test_wait_tcp_keeps_trying_until_its_timeout(tmp_path: Path) -> None:
    closed = free_port()
    wait = (
        "    init: {steps: [{id: w, uses: init.wait_tcp, with: {host: 127.0.0.1, port: " + str(closed) + ", "
        "timeout: 3}}]}\n"
    )

    async def body(mgr: ServiceManager, rt: HostProcessRuntime, store: SqliteStore) -> None:
        t0 = time.monotonic()
        await mgr.deploy(spec("waitlong", "  web:\n" + httpd_service(free_port(), 1, extra=wait)))
        status = await settled(mgr, store, "waitlong")
        assert time.monotonic() - t0 >= 3.0  # tried until the deadline, not given up after the first refusal
        assert f"init step 'w' (init.wait_tcp): 127.0.0.1:{closed} not ready after 3s" in status, status

    run_manager(tmp_path, body)
