"""Running out of file descriptors pauses accepting instead of spinning, and the proxy recovers afterwards."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.peer

CHILD = """
import resource, signal, sys
from zlayer.proxy._l4 import Listener
resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
lst = Listener("tcp", "127.0.0.1", 0)
lst.set_backends([("127.0.0.1", int(sys.argv[1]))])
lst.start()
print(lst.port, flush=True)
signal.sigwait({signal.SIGTERM})
lst.stop()
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_descriptor_exhaustion_does_not_spin_and_recovers(proxy_l4_tcp_echo) -> None:
    echo = proxy_l4_tcp_echo()
    env = {k: v for k, v in os.environ.items() if k != "ZLAYER_L4_SO"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(echo.port)], stdout=subprocess.PIPE, env=env)
    clients: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        for _ in range(60):  # 2 descriptors each in the proxy: far beyond its limit of 48
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            clients.append(c)
        time.sleep(0.5)
        before = cpu_seconds(proc.pid)
        time.sleep(1.0)
        assert cpu_seconds(proc.pid) - before < 0.5  # a level-triggered accept loop would burn the whole second
        for c in clients:
            c.close()
        clients.clear()
        time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.settimeout(5)
            c.sendall(b"alive")
            assert c.recv(10) == b"alive"
    finally:
        for c in clients:
            c.close()
        proc.terminate()
        proc.wait(timeout=10)
