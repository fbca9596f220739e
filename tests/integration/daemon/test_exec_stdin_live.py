"""``zlayer exec`` with its stdio attached (issue 11: exec did not pass stdin), against a live daemon: piped input
reaches the command, byte for byte, while its output streams back; ``-t`` runs it on a terminal of the container's
own with the caller's size; a reader token is refused the attached exec over TCP as it is the POST, and a token is
required at all; a client that goes away hangs the command up instead of leaving it behind."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fixtures.daemon_live import LiveNode, web_spec
from tests.fixtures.daemon_node import unique

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def deployed(daemon_live: LiveNode) -> str:
    name = unique("stdin")
    daemon_live.deploy(web_spec(name, 1))
    daemon_live.expect(name)
    return name


def test_piped_stdin_reaches_the_command(daemon_live: LiveNode, deployed: str) -> None:
    r = subprocess.run(f"echo hi | {sys.executable} -m zlayer --data-dir {daemon_live.data} exec --deployment "
                       f"{deployed} web -- cat", shell=True, capture_output=True, env=daemon_live.env,
                       timeout=120)  # fmt: skip
    assert (r.returncode, r.stdout, r.stderr) == (0, b"hi\n", b"")


def test_binary_input_comes_back_whole_and_output_streams_are_kept_apart(daemon_live: LiveNode, deployed: str) -> None:
    blob = os.urandom(3 * 1024 * 1024 + 17)
    argv = ["web", "--", "/bin/sh", "-c", "cat; echo done >&2; exit 5"]
    r = subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(daemon_live.data), "exec", "--deployment",
                        deployed, *argv], input=blob, capture_output=True, env=daemon_live.env,
                       timeout=120)  # fmt: skip
    assert r.returncode == 5 and r.stderr == b"done\n"
    assert r.stdout == blob


def test_without_input_the_command_reads_eof(daemon_live: LiveNode, deployed: str) -> None:
    r = subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(daemon_live.data), "exec", "--deployment",
                        deployed, "web", "--", "/bin/sh", "-c", "wc -c; echo end"], stdin=subprocess.DEVNULL,
                       capture_output=True, env=daemon_live.env, timeout=120)  # fmt: skip
    assert r.returncode == 0 and r.stdout.split() == [b"0", b"end"], r


def test_tty_gives_the_command_a_terminal_of_the_callers_size(daemon_live: LiveNode, deployed: str) -> None:
    script = "[ -t 0 ] && [ -t 1 ] && echo on-a-terminal; /bin/busybox stty size; /bin/busybox tty; exit 4"
    r = subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(daemon_live.data), "exec", "-t",
                        "--deployment", deployed, "web", "--", "/bin/sh", "-c", script], stdin=subprocess.DEVNULL,
                       capture_output=True, env={**daemon_live.env, "LINES": "37", "COLUMNS": "101"},
                       timeout=120)  # fmt: skip
    lines = r.stdout.decode().split("\r\n")
    assert r.returncode == 4, r
    assert lines[:2] == ["on-a-terminal", "37 101"] and lines[2].startswith("/dev/pts/"), lines


def test_a_reader_token_is_refused_and_a_token_is_required(daemon_live: LiveNode, deployed: str) -> None:
    node = daemon_live
    host = f"http://127.0.0.1:{node.api_port}"
    reader = node.zl("token", "create", "--roles", "reader", "--quiet").stdout.strip()
    operator = node.zl("token", "create", "--roles", "operator", "--quiet").stdout.strip()

    def via_tcp(*token: str) -> subprocess.CompletedProcess[str]:
        return node.zl_ns("--host", host, *token, "exec", "--deployment", deployed, "web", "--", "/bin/sh", "-c",
                          "cat > /attached-pwned", input="x")  # fmt: skip

    r = via_tcp("--token", reader)
    assert r.returncode != 0 and "needs admin or operator" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = node.zl_ns("--host", host, "exec", "--deployment", deployed, "web", "--", "true", input="")
    assert r.returncode != 0 and "missing bearer token" in r.stderr and "Traceback" not in r.stderr, r.stderr
    probe = node.api("POST", "/api/v1/containers/web-rep-1/exec", {"command": ["cat", "/attached-pwned"]})
    assert probe["exit_code"] != 0, probe
    r = node.zl_ns("--host", host, "--token", operator, "exec", "--deployment", deployed, "web", "--", "cat",
                   input="over tcp\n")  # fmt: skip
    assert (r.returncode, r.stdout) == (0, "over tcp\n"), r.stderr


def test_a_client_that_goes_away_hangs_the_command_up(daemon_live: LiveNode, deployed: str) -> None:
    node = daemon_live
    cli = subprocess.Popen([sys.executable, "-m", "zlayer", "--data-dir", str(node.data), "exec", "--deployment",
                            deployed, "web", "--", "/bin/sh", "-c", "echo $$; exec sleep 1000"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=node.env)  # fmt: skip
    assert cli.stdout is not None
    pid = cli.stdout.readline().strip().decode()

    def running() -> bool:
        ps = node.api(
            "POST", "/api/v1/containers/web-rep-1/exec", {"command": ["/bin/busybox", "ps", "-o", "pid,args"]}
        )
        return any(line.split()[:2] == [pid, "sleep"] for line in ps["stdout"].splitlines())

    assert pid.isdigit() and running()
    cli.kill()
    cli.wait()
    node.wait_for(lambda: not running(), 30, "the command to be hung up")


def test_the_terminal_follows_the_callers_resizes(daemon_live: LiveNode, deployed: str) -> None:
    from zlayer.client import Client

    out: list[bytes] = []
    first_size_shown, resized = asyncio.Event(), asyncio.Event()

    def output(_: str, data: bytes) -> None:
        out.append(data)
        if b"20 30" in b"".join(out):
            first_size_shown.set()

    async def sizes() -> AsyncIterator[tuple[int, int]]:
        await first_size_shown.wait()
        yield 50, 90
        resized.set()  # the frame has been sent: what is typed next arrives after it
        await asyncio.Event().wait()

    async def typed() -> AsyncIterator[bytes]:
        yield b"1\n"
        await resized.wait()
        yield b"2\n"

    async def go() -> dict[str, Any]:
        script = "read a; /bin/busybox stty size; read b; /bin/busybox stty size"
        async with Client(data_dir=daemon_live.data, auto_start=False) as client:
            res: dict[str, Any] = await client.exec_attached(
                deployed, "web", ["/bin/sh", "-c", script], output, stdin=typed(), tty=True, size=(20, 30),
                resizes=sizes(),
            )  # fmt: skip
            return res

    assert asyncio.run(go()) == {"exit_code": 0, "oom_killed": False}
    text = b"".join(out).decode()
    assert text.split("\r\n") == ["1", "20 30", "2", "50 90", ""], text
