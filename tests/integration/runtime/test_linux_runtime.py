"""LinuxRuntime end to end over zlayer-shim: what a user of the agent sees."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.runtime import LinuxRuntimeHarness
from zlayer.errors import RuntimeFailure
from zlayer.runtime import Runtime
from zlayer.spec.models import ServiceSpec

pytestmark = [pytest.mark.root]


def spec(script: str, **extra: Any) -> ServiceSpec:
    return ServiceSpec.model_validate(
        {"image": {"name": "busybox"}, "command": {"entrypoint": ["sh", "-c", script]}, **extra}
    )


def mounted(path: Path) -> bool:
    return str(path) in Path("/proc/self/mountinfo").read_text()


def test_linux_runtime_satisfies_the_protocol(runtime_linux: LinuxRuntimeHarness) -> None:
    assert isinstance(runtime_linux.runtime, Runtime)


def test_lifecycle_exec_logs_stats_stop_remove_leaves_nothing(runtime_linux: LinuxRuntimeHarness) -> None:
    rt, cid = runtime_linux.runtime, runtime_linux.new_id()

    async def go() -> None:
        storage = [{"type": "anonymous", "target": "/anon"}]
        await rt.create(cid, spec("echo started; echo oops >&2; exec sleep 300", resources={"memory": "64Mi"},
                                  storage=storage))  # fmt: skip
        [anon] = list((runtime_linux.data_dir / "volumes" / "_anon").iterdir())
        assert (await rt.state(cid)).status == "pending"
        await rt.start(cid)
        st = await rt.state(cid)
        assert st.status == "running" and st.pid > 0
        res = await rt.exec(cid, ["sh", "-c", "echo $$ ; cat /etc/hostname; ps -o pid,args | grep -c sleep"])
        assert res.exit_code == 0
        assert res.stdout.decode().split()[1] == str(cid)
        for _ in range(50):
            lines = [str(x) async for x in rt.logs(cid)]
            if len(lines) == 2:
                break
            await asyncio.sleep(0.02)
        assert sorted(lines) == ["[stderr] oops", "[stdout] started"]
        assert [str(x) async for x in rt.logs(cid, tail=1)] in (["[stdout] started"], ["[stderr] oops"])
        stats = await rt.stats(cid)
        assert stats.memory_limit_bytes == 64 << 20 and stats.pids_current >= 1 and stats.cpu_usage_ns > 0
        fds = len(os.listdir("/proc/self/fd"))
        use = await rt.usage(cid)  # the autoscaler's read: the same figures from the files it holds open
        assert use.memory_limit_bytes == 64 << 20 and use.cpu_usage_ns >= stats.cpu_usage_ns > 0
        assert (await rt.usage(cid)).memory_usage_bytes > 0
        top = await rt.top(cid)
        assert [p.cmd for p in top] == ["sleep 300"] and top[0].pid == st.pid
        info = await rt.inspect(cid)
        assert info.image == "busybox"
        final = await rt.stop(cid, timeout=0.5)  # sleep as pid 1 ignores SIGTERM: SIGKILL after the grace period
        assert (final.status, final.exit_code, final.signal) == ("exited", 137, 9)
        await rt.remove(cid)
        assert len(os.listdir("/proc/self/fd")) <= fds  # the usage files are closed with the container
        bundle = runtime_linux.data_dir / "bundles" / str(cid)
        assert not bundle.exists() and not mounted(bundle) and not anon.exists()
        assert not any(Path(p).exists() for p in info.cgroup_paths)
        assert not os.path.exists(f"/proc/{st.pid}")
        assert await rt.list() == []
        assert runtime_linux.data_dir.joinpath("logs", f"{cid}.log").exists()  # logs outlive the container
        await rt.remove(cid)  # idempotent

    asyncio.run(go())


def test_containers_start_with_default_signals_whatever_the_caller_ignores(runtime_linux: LinuxRuntimeHarness) -> None:
    """A daemon under nohup ignores SIGHUP (zlayer serve does too) and may block signals; none of it reaches the
    container: its processes start with no signal ignored or blocked, so a HUP trap (or nginx's reload) works."""
    import signal

    rt = runtime_linux.runtime
    a, b = runtime_linux.new_id(1), runtime_linux.new_id(2)

    async def go() -> None:
        # (a compound command: busybox sh exec'ing a lone command leaves SIGQUIT ignored in it by itself)
        await rt.create(a, spec("grep -E '^Sig(Ign|Blk)' /proc/self/status; sleep 0.3"))
        await rt.start(a)
        await rt.wait(a)
        assert sorted(str(x) for x in [y async for y in rt.logs(a)]) == [
            "[stdout] SigBlk:\t0000000000000000",
            "[stdout] SigIgn:\t0000000000000000",
        ]
        await rt.create(
            b, spec("trap 'exit 42' HUP; echo trapped; while true; do sleep 0.05; done", stop_signal="SIGHUP")
        )
        await rt.start(b)
        for _ in range(200):
            if [str(x) async for x in rt.logs(b)] == ["[stdout] trapped"]:
                break
            await asyncio.sleep(0.025)
        final = await rt.stop(b, timeout=10)
        assert (final.exit_code, final.reason) == (42, "exited")

    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    try:
        asyncio.run(go())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        signal.signal(signal.SIGHUP, old)


def test_stop_signal_then_exit_code_and_wait(runtime_linux: LinuxRuntimeHarness) -> None:
    rt = runtime_linux.runtime
    a, b = runtime_linux.new_id(1), runtime_linux.new_id(2)

    async def go() -> None:
        await rt.create(
            a, spec("trap 'exit 42' HUP; echo trapped; while true; do sleep 0.05; done", stop_signal="SIGHUP")
        )
        await rt.start(a)
        # PID 1 of a PID namespace ignores a signal it has no handler for yet: stop once the trap is set
        for _ in range(200):
            if [str(x) async for x in rt.logs(a)] == ["[stdout] trapped"]:
                break
            await asyncio.sleep(0.025)
        final = await rt.stop(a, timeout=10)
        assert (final.exit_code, final.reason) == (42, "exited")
        await rt.create(b, spec("sleep 0.3; exit 3"))
        await rt.start(b)
        done = await rt.wait(b)
        assert (done.status, done.exit_code) == ("exited", 3)

    asyncio.run(go())


def test_container_that_exits_at_once_reports_code_and_output(runtime_linux: LinuxRuntimeHarness) -> None:
    from zlayer.runtime.linux.backend import LinuxRuntime

    # the default watch is 50 ms; a loaded machine may take longer than that just to run `echo`
    rt = LinuxRuntime(runtime_linux.data_dir, runtime_linux.images, early_exit_window=5.0)
    cid = runtime_linux.new_id()

    async def go() -> None:
        await rt.create(cid, spec("echo cannot-connect-to-db; exit 7"))
        with pytest.raises(RuntimeFailure) as err:
            await rt.start(cid)
        assert f"container {cid} exited at once with code 7" in str(err.value)
        assert "cannot-connect-to-db" in str(err.value)

    asyncio.run(go())


def test_missing_executable_and_unknown_user_roll_back(runtime_linux: LinuxRuntimeHarness) -> None:
    rt, cid = runtime_linux.runtime, runtime_linux.new_id()
    bundle = runtime_linux.data_dir / "bundles" / str(cid)

    async def go() -> None:
        with pytest.raises(RuntimeFailure, match="executable file not found: /bin/foo in image busybox"):
            await rt.create(
                cid, ServiceSpec.model_validate({"image": {"name": "busybox"}, "command": {"entrypoint": ["/bin/foo"]}})
            )
        assert not bundle.exists() and not mounted(bundle)
        with pytest.raises(RuntimeFailure, match=r"unable to find user nginx: .* of image busybox"):
            await rt.create(cid, spec("true", user="nginx", storage=[{"type": "anonymous", "target": "/a"}]))
        assert not bundle.exists() and not mounted(bundle)
        assert not list((runtime_linux.data_dir / "volumes" / "_anon").glob("*"))
        assert await rt.list() == []

    asyncio.run(go())


def test_memory_limit_oom_kill_is_reported(runtime_linux: LinuxRuntimeHarness) -> None:
    rt, cid = runtime_linux.runtime, runtime_linux.new_id()

    async def go() -> None:
        await rt.create(cid, spec("sleep 0.2; x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived",
                                  resources={"memory": "16Mi", "memory_swap": "16Mi"}))  # fmt: skip
        await rt.start(cid)
        done = await rt.wait(cid)
        assert done.oom_killed and done.reason == "oom_killed" and done.exit_code == 137

    asyncio.run(go())


def test_pids_limit_stops_a_fork_bomb(runtime_linux: LinuxRuntimeHarness) -> None:
    rt, cid = runtime_linux.runtime, runtime_linux.new_id()

    async def go() -> None:
        await rt.create(cid, spec("sleep 300", resources={"pids_limit": 10}))
        await rt.start(cid)
        res = await rt.exec(cid, ["sh", "-c", "for i in $(seq 30); do sleep 1 & done; echo spawned"])
        stats = await rt.stats(cid)
        assert stats.pids_limit == 10 and stats.pids_current <= 10
        assert b"fork" in res.stderr.lower(), res.stderr

    asyncio.run(go())


def test_pause_unpause_and_readoption_by_a_new_runtime(runtime_linux: LinuxRuntimeHarness) -> None:
    rt, cid = runtime_linux.runtime, runtime_linux.new_id()

    async def go() -> None:
        await rt.create(cid, spec("exec sleep 300"))
        await rt.start(cid)
        await rt.pause(cid)
        assert (await rt.state(cid)).status == "paused"
        await rt.unpause(cid)
        assert (await rt.state(cid)).status == "running"
        # A restarted daemon: a new LinuxRuntime on the same data dir finds, controls and removes the container.
        fresh = runtime_linux.fresh_runtime()
        [info] = await fresh.list()
        assert info.id == str(cid) and info.state.status == "running" and info.image == "busybox"
        assert (await fresh.exec(cid, ["echo", "adopted"])).stdout == b"adopted\n"
        final = await fresh.stop(cid, timeout=0.3)
        assert final.exit_code == 137
        await fresh.remove(cid)
        assert await rt.list() == []

    asyncio.run(go())


def test_rootfs_that_fails_to_mount_is_a_clear_error(runtime_linux: LinuxRuntimeHarness, tmp_path: Path) -> None:
    rt, cid = runtime_linux.runtime, runtime_linux.new_id()
    runtime_linux.images.images["broken"] = ({"config": {"Cmd": ["sh"]}}, [tmp_path / "no-such-layer"])

    async def go() -> None:
        with pytest.raises(RuntimeFailure, match=f"container {cid}: cannot mount the rootfs of image broken"):
            await rt.create(cid, ServiceSpec.model_validate({"image": {"name": "broken"}}))
        assert not (runtime_linux.data_dir / "bundles" / str(cid)).exists()

    asyncio.run(go())


def test_security_defaults_seen_inside_a_shim_container(runtime_linux: LinuxRuntimeHarness) -> None:
    rt, cid = runtime_linux.runtime, runtime_linux.new_id()

    async def go() -> None:
        await rt.create(cid, spec("exec sleep 300", user="app", read_only_root_fs=True))
        await rt.start(cid)
        script = (
            "grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/1/status; id -u; echo pid1=$(cat /proc/1/cmdline); "
            "echo kcore=$(head -c 64 /proc/kcore 2>/dev/null | wc -c); mount -t tmpfs none /tmp 2>/dev/null; "
            "echo mount=$?; touch /x 2>/dev/null; echo rootwrite=$?; ps -o pid | wc -l; cat /etc/hostname"
        )
        out = (await rt.exec(cid, ["sh", "-c", script], user="0:0")).stdout.decode()
        assert "CapEff:\t0000000000000000" in out  # uid 1000 holds no effective caps, as under Docker
        assert "Seccomp:\t2" in out and "NoNewPrivs:\t1" in out
        lines = out.splitlines()
        assert "pid1=sleep300" in out.replace(" ", "").replace("\0", "")
        assert "kcore=0" in lines and "mount=1" in lines and "rootwrite=1" in lines
        assert int(lines[-2]) <= 5  # header + sleep + sh + ps + wc: host processes are invisible
        assert lines[-1] == str(cid)

    asyncio.run(go())


def test_logs_follow_streams_until_the_container_exits(runtime_linux: LinuxRuntimeHarness) -> None:
    rt, cid = runtime_linux.runtime, runtime_linux.new_id()

    async def go() -> None:
        await rt.create(cid, spec("for i in 1 2 3 4 5; do echo line$i; sleep 0.1; done"))
        await rt.start(cid)
        got = [x async for x in rt.logs(cid, follow=True)]
        assert [x.message for x in got] == [f"line{i}" for i in range(1, 6)]
        assert all(x.stream == "stdout" and x.timestamp.endswith("Z") for x in got)

    asyncio.run(go())
