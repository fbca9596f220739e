"""Small helpers every benchmark under perf/ uses: free ports, waiting for a listener, CPU time of a process.

Benchmarks run standalone (``python perf/NAME.py``), so this package is imported as ``benchlib`` from perf/; it
is a package and not ``perf/NAME.py`` so that every ``perf/*.py`` is a benchmark.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Return once 127.0.0.1:port accepts a connection; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def wait_listening(port: int, timeout: float = 10.0) -> None:
    """Return once something listens on TCP ``port`` (IPv4 or IPv6), found in /proc/net without connecting: a probe
    connection would count as a client to a server that takes one at a time, such as iperf3's."""
    want = f":{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[1].endswith(want) and fields[3] == "0A":  # local address, state LISTEN
                    return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def cpu_seconds(pid: int) -> float:
    """User+system CPU of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nginx_conf(tmp: Path, name: str, body: str) -> str:
    """A one-worker, foreground nginx configuration whose ``http`` block holds ``body`` (servers, upstreams)."""
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
{body}
}}
"""


def stop_all(procs: list[subprocess.Popen[bytes]] | list[subprocess.Popen[str]]) -> None:
    """SIGTERM every process, then SIGKILL whichever has not gone within 5 s."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
