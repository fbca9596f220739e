"""Container lifecycle through zlayer.runtime.linux.shim (create, start, state, kill, wait, delete, exec, logs),
as the Linux runtime backend drives it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.fixtures.runtime_shim import DOCKER_DEFAULT_CAPEFF, BundleFactory
from zlayer.errors import ConflictError, RuntimeFailure
from zlayer.runtime.linux import shim

pytestmark = [pytest.mark.root]

CRI_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) (stdout|stderr) ([FP]) (.*)$")


def cid() -> str:
    return f"c-{uuid.uuid4().hex[:10]}"


async def until_logged(log: Path, text: str) -> None:
    """Wait until the container wrote ``text`` (e.g. after installing a signal trap: pid 1 drops signals it has
    no handler for, so signalling before the trap exists would be lost)."""
    for _ in range(2000):
        if log.exists() and text in log.read_text():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{log} never showed {text!r}")


async def run_to_end(root: Path, bundle: Path, log: Path | None = None) -> tuple[str, shim.ExitStatus]:
    name = cid()
    await shim.create(name, bundle, root, log)
    await shim.start(name, root)
    status = await shim.wait(name, root)
    return name, status


def test_logs_are_cri_lines_with_timestamps_and_streams(
    runtime_shim_binary: Path, runtime_shim_root: Path, runtime_shim_bundle: BundleFactory, tmp_path: Path
) -> None:
    log = tmp_path / "c.log"
    bundle = runtime_shim_bundle(["sh", "-c", "echo one; echo two >&2; printf 'no newline'"])
    name, status = asyncio.run(run_to_end(runtime_shim_root, bundle, log))
    assert status == shim.ExitStatus(0)
    records = [CRI_LINE.match(line) for line in log.read_text().splitlines()]
    assert all(records)
    got = [(m.group(2), m.group(3), m.group(4)) for m in records if m]
    assert sorted(got) == sorted([("stdout", "F", "one"), ("stderr", "F", "two"), ("stdout", "F", "no newline")])
    st = asyncio.run(shim.state(name, runtime_shim_root))
    assert st.status == "stopped" and st.exit_code == 0 and st.started_at and st.finished_at


def test_logs_rotate_by_size_and_count(
    runtime_shim_root: Path, runtime_shim_bundle: BundleFactory, tmp_path: Path
) -> None:
    log = tmp_path / "r.log"
    bundle = runtime_shim_bundle(["sh", "-c", "i=0; while [ $i -lt 400 ]; do echo line-$i; i=$((i+1)); done"])

    async def go() -> None:
        name = cid()
        await shim.create(name, bundle, runtime_shim_root, log, log_max_size=4096, log_max_files=3)
        await shim.start(name, runtime_shim_root)
        await shim.wait(name, runtime_shim_root)

    asyncio.run(go())
    files = sorted(p.name for p in tmp_path.glob("r.log*"))
    assert files == ["r.log", "r.log.1", "r.log.2"]
    assert all((tmp_path / f).stat().st_size <= 4096 for f in files)
    assert log.read_text().splitlines()[-1].endswith("stdout F line-399")


def test_stop_semantics_term_then_kill(
    runtime_shim_root: Path, runtime_shim_bundle: BundleFactory, tmp_path: Path
) -> None:
    trap = runtime_shim_bundle(["sh", "-c", "trap 'exit 3' TERM; echo ready; while true; do sleep 0.05; done"])
    stubborn = runtime_shim_bundle(["sleep", "1000"])  # pid 1 without a TERM handler ignores TERM

    async def go() -> None:
        a, b = cid(), cid()
        await shim.create(a, trap, runtime_shim_root, tmp_path / "a.log")
        await shim.create(b, stubborn, runtime_shim_root, None)
        await shim.start(a, runtime_shim_root)
        await shim.start(b, runtime_shim_root)
        await until_logged(tmp_path / "a.log", "stdout F ready")
        await shim.kill(a, runtime_shim_root, "TERM")
        await shim.kill(b, runtime_shim_root, "SIGTERM")
        assert await asyncio.wait_for(shim.wait(a, runtime_shim_root), 20) == shim.ExitStatus(3)
        await asyncio.sleep(0.3)
        assert (await shim.state(b, runtime_shim_root)).status == "running"
        await shim.kill(b, runtime_shim_root, signal.SIGKILL)
        assert await asyncio.wait_for(shim.wait(b, runtime_shim_root), 20) == shim.ExitStatus(137, 9, False)
        with pytest.raises(ConflictError):
            await shim.kill(b, runtime_shim_root, "KILL")

    asyncio.run(go())


def test_memory_limit_oom_kills_and_is_reported(runtime_shim_root: Path, runtime_shim_bundle: BundleFactory) -> None:
    limit = 32 * 1024 * 1024
    bundle = runtime_shim_bundle(
        ["sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; exec tail /dev/zero"],
        resources={"memory": {"limit": limit, "swap": limit}},
    )
    _, status = asyncio.run(run_to_end(runtime_shim_root, bundle))
    assert status == shim.ExitStatus(137, 9, True)


def test_pids_limit_stops_a_fork_bomb(
    runtime_shim_root: Path, runtime_shim_bundle: BundleFactory, tmp_path: Path
) -> None:
    log = tmp_path / "bomb.log"
    # the inner shell forks until the kernel refuses; the outer one (pid 1) then reads pids.current with builtins
    bomb = (
        "sh -c 'i=0; while [ $i -lt 60 ]; do sleep 30 & i=$((i+1)); done'; "
        "read n < /sys/fs/cgroup/pids/pids.current; echo $n"
    )
    bundle = runtime_shim_bundle(["sh", "-c", bomb], resources={"pids": {"limit": 16}})

    async def go() -> str:
        name = cid()
        await shim.create(name, bundle, runtime_shim_root, log)
        await shim.start(name, runtime_shim_root)
        await asyncio.wait_for(shim.wait(name, runtime_shim_root), 20)
        return name

    asyncio.run(go())
    text = log.read_text()
    assert "can't fork" in text or "Resource temporarily unavailable" in text
    current = [line.split(" F ")[1] for line in text.splitlines() if " stdout F " in line]
    assert current and int(current[-1]) <= 16


def test_exec_joins_the_container_with_its_seccomp_caps_and_exit_code(
    runtime_shim_binary: Path, runtime_shim_root: Path, runtime_shim_bundle: BundleFactory
) -> None:
    bundle = runtime_shim_bundle(["sleep", "1000"], hostname="exec-box")

    async def go() -> None:
        name = cid()
        await shim.create(name, bundle, runtime_shim_root, None)
        await shim.start(name, runtime_shim_root)
        script = "hostname; ps -o pid,comm | grep -c sleep; grep -E '^(Seccomp|CapEff):' /proc/self/status; echo $FOO"
        code, out, err = await shim.exec_output(name, runtime_shim_root, ["sh", "-c", script], env=["FOO=bar"])
        assert code == 0, err
        lines = out.decode().split("\n")
        assert lines[0] == "exec-box"
        assert lines[1] == "1"  # the container's own sleep, and no host process
        assert sorted(lines[2:4]) == [f"CapEff:\t{DOCKER_DEFAULT_CAPEFF}", "Seccomp:\t2"]
        assert lines[4] == "bar"
        code, _, _ = await shim.exec_output(name, runtime_shim_root, ["sh", "-c", "exit 9"])
        assert code == 9
        cgroups_path = json.loads((bundle / "config.json").read_text())["linux"]["cgroupsPath"]
        _, out, _ = await shim.exec_output(name, runtime_shim_root, ["cat", "/proc/self/cgroup"])
        joined = [line for line in out.decode().splitlines() if line.split(":")[1] in ("memory", "pids", "freezer")]
        assert len(joined) == 3 and all(line.endswith(cgroups_path) for line in joined)
        code, out, _ = await shim.exec_output(name, runtime_shim_root, ["id", "-u"], user="65534:65534")
        assert (code, out.strip()) == (0, b"65534")
        with pytest.raises(RuntimeFailure, match="executable file not found in \\$PATH: nosuchcmd"):
            await shim.exec_output(name, runtime_shim_root, ["nosuchcmd"])
        await shim.delete(name, runtime_shim_root, force=True)

    asyncio.run(go())


def test_exec_with_a_tty_sends_the_pty_to_the_console_socket(
    runtime_shim_root: Path, runtime_shim_bundle: BundleFactory, tmp_path: Path
) -> None:
    bundle = runtime_shim_bundle(["sleep", "1000"])
    sock_path = tmp_path / "console.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(1)

    async def go() -> None:
        name = cid()
        await shim.create(name, bundle, runtime_shim_root, None)
        await shim.start(name, runtime_shim_root)
        proc = await shim.exec(
            name, runtime_shim_root, ["sh", "-c", "tty; echo in-tty"], tty=True, console_socket=sock_path
        )
        conn, _ = await asyncio.get_running_loop().run_in_executor(None, server.accept)
        _, fds, _, _ = socket.recv_fds(conn, 16, 1)
        conn.close()
        master = fds[0]
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        out = b""
        os.set_blocking(master, False)
        try:
            while chunk := os.read(master, 4096):
                out += chunk
        except (BlockingIOError, OSError):
            pass
        os.close(master)
        text = out.decode()
        assert re.search(r"/dev/pts/\d+", text) and "in-tty" in text
        await shim.delete(name, runtime_shim_root, force=True)

    asyncio.run(go())
    server.close()


def test_shim_survives_its_parent_and_a_new_process_adopts_it(
    runtime_shim_root: Path, runtime_shim_bundle: BundleFactory, tmp_path: Path
) -> None:
    bundle = runtime_shim_bundle(["sh", "-c", "trap 'exit 5' TERM; echo ready; while true; do sleep 0.05; done"])
    name = cid()
    log = tmp_path / "adopted.log"
    parent = tmp_path / "parent.py"
    parent.write_text(
        "import asyncio, sys, time\n"
        "from pathlib import Path\n"
        "from zlayer.runtime.linux import shim\n"
        "async def main():\n"
        f"    root, log = Path({str(runtime_shim_root)!r}), Path({str(log)!r})\n"
        f"    await shim.create({name!r}, Path({str(bundle)!r}), root, log)\n"
        f"    await shim.start({name!r}, Path({str(runtime_shim_root)!r}))\n"
        "    print('started', flush=True)\n"
        "    time.sleep(1000)\n"
        "asyncio.run(main())\n"
    )
    daemon = subprocess.Popen([sys.executable, str(parent)], stdout=subprocess.PIPE, cwd=Path(__file__).parents[3])
    assert daemon.stdout is not None
    assert daemon.stdout.readline().strip() == b"started"
    daemon.kill()  # the "daemon" dies with -9
    daemon.wait()

    async def adopt() -> None:
        st = await shim.state(name, runtime_shim_root)
        assert st.status == "running"
        assert os.path.exists(f"/proc/{st.shim_pid}") and os.path.exists(f"/proc/{st.pid}")
        listed = [s.id for s in await shim.list_containers(runtime_shim_root)]
        assert name in listed
        await until_logged(log, "stdout F ready")
        await shim.kill(name, runtime_shim_root, "TERM")
        assert await asyncio.wait_for(shim.wait(name, runtime_shim_root), 20) == shim.ExitStatus(5)

    asyncio.run(adopt())


def test_pause_and_unpause_freeze_the_container(runtime_shim_root: Path, runtime_shim_bundle: BundleFactory) -> None:
    bundle = runtime_shim_bundle(["sleep", "1000"])

    async def go() -> None:
        name = cid()
        await shim.create(name, bundle, runtime_shim_root, None)
        st = await shim.start(name, runtime_shim_root)
        await shim.pause(name, runtime_shim_root)
        assert (await shim.state(name, runtime_shim_root)).status == "paused"
        stat = Path(f"/proc/{st.pid}/stat").read_text()
        assert stat[stat.rindex(")") + 2] in "DS"  # frozen tasks sleep in the freezer
        await shim.unpause(name, runtime_shim_root)
        assert (await shim.state(name, runtime_shim_root)).status == "running"
        await shim.delete(name, runtime_shim_root, force=True)

    asyncio.run(go())


def _gone_or_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _mounts_mentioning(text: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if text in line]


def test_delete_leaves_no_process_cgroup_mount_or_state(
    runtime_shim_binary: Path, runtime_shim_root: Path, runtime_shim_bundle: BundleFactory
) -> None:
    bundle = runtime_shim_bundle(["sh", "-c", "sleep 1000 & sleep 1000; true"])
    cgroups_path = json.loads((bundle / "config.json").read_text())["linux"]["cgroupsPath"]

    async def go() -> None:
        name = cid()
        await shim.create(name, bundle, runtime_shim_root, None)
        st = await shim.start(name, runtime_shim_root)
        assert st.cgroup_paths and all(p.is_dir() for p in st.cgroup_paths)
        assert str(st.cgroup_paths[0]).endswith(cgroups_path)
        procs: set[int] = set()
        for _ in range(200):  # sh, and its two sleeps once forked
            procs = {int(p) for p in (st.cgroup_paths[0] / "cgroup.procs").read_text().split()}
            if len(procs) == 3:
                break
            await asyncio.sleep(0.01)
        assert len(procs) == 3
        with pytest.raises(ConflictError):
            await shim.delete(name, runtime_shim_root)
        await shim.delete(name, runtime_shim_root, force=True)
        assert not (runtime_shim_root / name).exists()
        assert not any(p.exists() for p in st.cgroup_paths)
        for pid in [*procs, st.shim_pid]:  # gone, or a zombie, or still inside exit() for a moment
            for _ in range(100):
                if _gone_or_zombie(pid):
                    break
                await asyncio.sleep(0.02)
            assert _gone_or_zombie(pid), f"pid {pid} still runs after delete --force"
        assert not _mounts_mentioning(str(bundle))

    asyncio.run(go())


def test_delete_of_a_created_container(runtime_shim_root: Path, runtime_shim_bundle: BundleFactory) -> None:
    bundle = runtime_shim_bundle(["true"])

    async def go() -> None:
        name = cid()
        st = await shim.create(name, bundle, runtime_shim_root, None)
        assert st.status == "created"
        await shim.delete(name, runtime_shim_root)
        assert not (runtime_shim_root / name).exists()
        assert not any(p.exists() for p in st.cgroup_paths)
        time.sleep(0.05)
        assert not Path(f"/proc/{st.pid}").exists()

    asyncio.run(go())


def test_a_tty_container_gets_a_pty_of_its_own_and_its_output_is_logged(
    runtime_shim_binary: Path, runtime_shim_root: Path, runtime_shim_bundle: BundleFactory, tmp_path: Path
) -> None:
    log = tmp_path / "tty.log"
    bundle = runtime_shim_bundle(["sh", "-c", "tty; test -c /dev/console && echo console-ok"])

    async def go() -> None:
        name = cid()
        await shim.create(name, bundle, runtime_shim_root, log, tty=True)
        await shim.start(name, runtime_shim_root)
        assert await shim.wait(name, runtime_shim_root) == shim.ExitStatus(0)

    asyncio.run(go())
    texts = [m.group(4) for m in map(CRI_LINE.match, log.read_text().splitlines()) if m and m.group(2) == "stdout"]
    assert texts == ["/dev/pts/0", "console-ok"]


def test_create_returns_under_uvloop_whose_pipes_leak_into_children(
    runtime_shim_root: Path, runtime_shim_bundle: BundleFactory
) -> None:
    import uvloop

    bundle = runtime_shim_bundle(["sh", "-c", "exit 4"])

    async def go() -> shim.ExitStatus:
        name = cid()
        await asyncio.wait_for(shim.create(name, bundle, runtime_shim_root, None), 10)
        await shim.start(name, runtime_shim_root)
        status = await asyncio.wait_for(shim.wait(name, runtime_shim_root), 10)
        await shim.delete(name, runtime_shim_root)
        return status

    assert uvloop.run(go()) == shim.ExitStatus(4)


def test_exec_tty_has_the_asked_size_before_the_process_starts(
    runtime_shim_binary: Path, runtime_shim_root: Path, runtime_shim_bundle: BundleFactory, tmp_path: Path
) -> None:
    bundle = runtime_shim_bundle(["sleep", "1000"])
    sock_path = tmp_path / "console.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(1)

    async def go() -> str:
        name = cid()
        await shim.create(name, bundle, runtime_shim_root, None)
        await shim.start(name, runtime_shim_root)
        proc = await shim.exec(name, runtime_shim_root, ["stty", "size"], tty=True, console_socket=sock_path,
                               console_size=(41, 133))  # fmt: skip
        conn, _ = await asyncio.get_running_loop().run_in_executor(None, server.accept)
        _, fds, _, _ = socket.recv_fds(conn, 16, 1)
        conn.close()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        out = b""
        os.set_blocking(fds[0], False)
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(fds[0], 4096):
                out += chunk
        os.close(fds[0])
        bad = subprocess.run([str(runtime_shim_binary), "exec", "--root", str(runtime_shim_root), "--tty",
                              "--console-socket", str(sock_path), "--console-size", "0,80", name, "--", "true"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        assert bad.returncode == 2 and "--console-size must be ROWS,COLS" in bad.stderr, bad.stderr
        await shim.delete(name, runtime_shim_root, force=True)
        return out.decode()

    assert asyncio.run(go()).split() == ["41", "133"]
    server.close()
