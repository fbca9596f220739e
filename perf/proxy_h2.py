"""h2load (HTTP/2 over TLS, ALPN h2) through zlayer's L7 proxy vs nginx ``listen ... ssl http2`` + ``proxy_pass``.

Same run, same backend (nginx, small static body), same certificate; h2load (1 thread, 10 connections x 10
concurrent streams, duration mode) on core 0; the backend and each proxy, one worker each, on core 1. zlayer runs
standalone (``python -m zlayer.proxy.standalone``) from a static route table and relays every stream as an HTTP/1.1
request over pooled keep-alive upstream connections, as nginx does. Last line: one JSON object with ``rps_*``,
``rps_vs_nginx`` and ``mean_ms_*``.
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


def h2load(port: int) -> tuple[float, float]:
    """(requests/s, mean request time in ms); fails unless every request succeeded over h2 with a 2xx."""
    out = subprocess.run(
        ["taskset", "-c", "0", "h2load", "-t1", "-c10", "-m10", "-D", str(SECONDS), "--warm-up-time=1",
         f"https://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        timeout=SECONDS + 60,
        check=True,
    ).stdout  # fmt: skip
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if not m or "Application protocol: h2" not in out or int(m.group(4)) or int(m.group(5)) or m.group(3) == "0":
        raise RuntimeError(f"h2load saw failures through port {port}:\n{out}")
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\b", out)
    assert mean, out
    return rps, float(mean.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[mean.group(2)]


def main() -> None:
    from zlayer.proxy.certs import self_signed

    tmp = Path(tempfile.mkdtemp(prefix="zlayer-perf-h2-"))
    cert, key = self_signed(["bench.test"])
    (tmp / "cert.pem").write_bytes(cert)
    (tmp / "key.pem").write_bytes(key)
    backend, zport, nport = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str]) -> None:
        procs.append(
            subprocess.Popen(["taskset", "-c", "1", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )

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
  server {{ listen 127.0.0.1:{nport} ssl http2; server_name bench.test;
    ssl_certificate {tmp}/cert.pem; ssl_certificate_key {tmp}/key.pem;
    http2_max_concurrent_streams 128; http2_max_requests 1000000;
    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}""",
            )
        )
        (tmp / "zlayer.json").write_text(
            json.dumps(
                {
                    "workers": 1,
                    "certificates": [{"domain": "bench.test", "cert": "cert.pem", "key": "key.pem"}],
                    "routes": [
                        {
                            "key": "bench#h2",
                            "listen": f"127.0.0.1:{zport}",
                            "tls": True,
                            "backends": [f"127.0.0.1:{backend}"],
                        }
                    ],
                }
            )
        )
        start(["nginx", "-p", str(tmp), "-c", str(tmp / "backend.conf")])
        start(["nginx", "-p", str(tmp), "-c", str(tmp / "proxy.conf")])
        start([sys.executable, "-m", "zlayer.proxy.standalone", str(tmp / "zlayer.json")])
        for port in (backend, nport, zport):
            wait_port(port)
        z: list[tuple[float, float]] = []
        n: list[tuple[float, float]] = []
        for _ in range(ROUNDS):  # interleaved so drifting load on the shared machine hits both alike
            z.append(h2load(zport))
            n.append(h2load(nport))
        zr, nr = max(r for r, _ in z), max(r for r, _ in n)
        zm, nm = min(m for _, m in z), min(m for _, m in n)
        print(
            json.dumps(
                {
                    "rps_zlayer": round(zr),
                    "rps_nginx": round(nr),
                    "rps_vs_nginx": round(zr / nr, 3),
                    "mean_ms_zlayer": round(zm, 3),
                    "mean_ms_nginx": round(nm, 3),
                    "mean_vs_nginx": round(zm / nm, 3),
                    "connections": 10,
                    "streams_per_connection": 10,
                    "seconds": SECONDS,
                    "rounds": ROUNDS,
                }
            )
        )
    finally:
        stop_all(procs)


if __name__ == "__main__":
    main()
