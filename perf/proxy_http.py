"""wrk keep-alive small responses through zlayer's L7 proxy vs nginx ``proxy_pass`` vs HAProxy (same run).

wrk (1 thread, 50 connections) on core 0; the backend nginx (small static body) and each proxy, one worker/thread
each, on core 1. zlayer runs standalone (``python -m zlayer.proxy.standalone``) from a static route table. nginx
proxies with ``proxy_http_version 1.1``, ``proxy_set_header Connection ""`` and upstream keepalive; HAProxy with
``nbthread 1`` and connection reuse. Last line: one JSON object with ``rps_*``, ``p99_ms_*``, ``rps_vs_nginx``
(target >= 1.0), ``p99_vs_nginx`` (target <= 1.0) and ``rps_vs_haproxy``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import free_port, nginx_conf, stop_all, wait_port

SECONDS = int(os.environ.get("PERF_SECONDS", "8"))
ROUNDS = int(os.environ.get("PERF_ROUNDS", "1"))
ROOT = Path(__file__).resolve().parents[1]


def wrk(port: int) -> tuple[float, float]:
    """(requests/s, p99 latency in ms); fails on socket errors or non-2xx answers."""
    out = subprocess.run(
        ["taskset", "-c", "0", "wrk", "-t1", "-c50", f"-d{SECONDS}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        timeout=SECONDS + 30,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors through port {port}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    assert m, out
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    return rps, p99


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="zlayer-perf-http-"))
    backend, zport, nport, hport = free_port(), free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str]) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(["taskset", "-c", "1", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        return p

    try:
        (tmp / "backend.conf").write_text(
            nginx_conf(
                tmp, "backend", f'  server {{ listen 127.0.0.1:{backend}; location / {{ return 200 "hello\\n"; }} }}'
            )
        )
        (tmp / "proxy.conf").write_text(
            nginx_conf(
                tmp,
                "proxy",
                f"""  upstream be {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{ listen 127.0.0.1:{nport};
    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}""",
            )
        )
        (tmp / "haproxy.cfg").write_text(
            "global\n  nbthread 1\n  maxconn 4000\n"
            "defaults\n  mode http\n  option http-keep-alive\n  http-reuse always\n"
            "  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n"
            f"frontend f\n  bind 127.0.0.1:{hport}\n  default_backend b\n"
            f"backend b\n  server s1 127.0.0.1:{backend}\n"
        )
        (tmp / "zlayer.json").write_text(
            json.dumps(
                {
                    "workers": 1,
                    "routes": [
                        {"key": "bench#http", "listen": f"127.0.0.1:{zport}", "backends": [f"127.0.0.1:{backend}"]}
                    ],
                }
            )
        )
        for name in ("backend", "proxy"):
            start(["nginx", "-p", str(tmp), "-c", str(tmp / f"{name}.conf")])
        start(["haproxy", "-f", str(tmp / "haproxy.cfg")])
        start([sys.executable, "-m", "zlayer.proxy.standalone", str(tmp / "zlayer.json")])
        for port in (backend, nport, hport, zport):
            wait_port(port)
        direct, _ = wrk(backend)
        z: list[tuple[float, float]] = []
        n: list[tuple[float, float]] = []
        h: list[tuple[float, float]] = []
        for _ in range(ROUNDS):  # interleaved so drifting load on the shared machine hits all alike
            z.append(wrk(zport))
            n.append(wrk(nport))
            h.append(wrk(hport))
        zr, nr, hr = (max(r for r, _ in x) for x in (z, n, h))
        zp, np_, hp = (min(p for _, p in x) for x in (z, n, h))
        print(
            json.dumps(
                {
                    "rps_direct": round(direct),
                    "rps_zlayer": round(zr),
                    "rps_nginx": round(nr),
                    "rps_haproxy": round(hr),
                    "p99_ms_zlayer": round(zp, 3),
                    "p99_ms_nginx": round(np_, 3),
                    "p99_ms_haproxy": round(hp, 3),
                    "rps_vs_nginx": round(zr / nr, 3),
                    "p99_vs_nginx": round(zp / np_, 3),
                    "rps_vs_haproxy": round(zr / hr, 3),
                    "seconds": SECONDS,
                    "rounds": ROUNDS,
                }
            )
        )
    finally:
        stop_all(procs)


if __name__ == "__main__":
    main()
