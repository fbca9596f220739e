"""iperf3 through zlayer's L4 proxy vs HAProxy `mode tcp` (same run, same backend, same pinning).

iperf3 client on core 0; the proxy under test and the iperf3 server on core 1; one proxy thread each. The zlayer
proxy runs standalone in a child process from a static backend (no daemon). Last line: one JSON object with
``gbps_direct``, ``gbps_zlayer``, ``gbps_haproxy`` and ``gbps_vs_haproxy`` (target >= 1.0).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import cpu_seconds, free_port, stop_all, wait_port

SECONDS = int(os.environ.get("PERF_SECONDS", "8"))
ROUNDS = int(os.environ.get("PERF_ROUNDS", "2"))


def iperf(port: int) -> float:
    out = subprocess.run(
        ["taskset", "-c", "0", "iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(SECONDS), "-J"],
        capture_output=True,
        text=True,
        timeout=SECONDS + 30,
        check=True,
    )
    return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9


def serve_zlayer(listen_port: int, backend_port: int) -> None:
    """Child process: the zlayer L4 proxy with one worker thread until SIGTERM."""
    from zlayer.proxy._l4 import Listener

    listener = Listener("tcp", "127.0.0.1", listen_port, workers=1)
    listener.set_backends([("127.0.0.1", backend_port)])
    listener.start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    listener.stop()


def main() -> None:
    backend = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="zlayer-perf-tcp-"))
    try:
        procs.append(
            subprocess.Popen(["taskset", "-c", "1", "iperf3", "-s", "-p", str(backend)], stdout=subprocess.DEVNULL)
        )
        wait_port(backend)
        zport, hport = free_port(), free_port()
        procs.append(
            subprocess.Popen(
                ["taskset", "-c", "1", sys.executable, __file__, "--serve-zlayer", str(zport), str(backend)]
            )
        )
        cfg = tmp / "haproxy.cfg"
        cfg.write_text(
            "global\n  nbthread 1\n  maxconn 4000\n"
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n"
            f"listen l4\n  bind 127.0.0.1:{hport}\n  server s1 127.0.0.1:{backend}\n"
        )
        procs.append(subprocess.Popen(["taskset", "-c", "1", "haproxy", "-f", str(cfg)], stderr=subprocess.DEVNULL))
        wait_port(zport)
        wait_port(hport)
        direct = max(iperf(backend) for _ in range(1))
        zpid, hpid = procs[1].pid, procs[2].pid
        zl, hp, zcpu, hcpu = [], [], 0.0, 0.0
        for _ in range(ROUNDS):  # interleaved so drifting load on the shared machine hits both alike
            c0 = cpu_seconds(zpid)
            zl.append(iperf(zport))
            zcpu += cpu_seconds(zpid) - c0
            c0 = cpu_seconds(hpid)
            hp.append(iperf(hport))
            hcpu += cpu_seconds(hpid) - c0
        # Bytes moved per CPU-second: steadier than raw throughput when other work shares the cores.
        zeff = sum(zl) * SECONDS / max(zcpu, 1e-9)
        heff = sum(hp) * SECONDS / max(hcpu, 1e-9)
        result = {
            "gbps_direct": round(direct, 2),
            "gbps_zlayer": round(max(zl), 2),
            "gbps_haproxy": round(max(hp), 2),
            "cpu_seconds_zlayer": round(zcpu, 2),
            "cpu_seconds_haproxy": round(hcpu, 2),
            "gbit_per_cpu_second_vs_haproxy": round(zeff / heff, 3),
            "gbps_vs_haproxy": round(max(zl) / max(hp), 3),
            "seconds": SECONDS,
            "rounds": ROUNDS,
        }
        print(json.dumps(result))
    finally:
        stop_all(procs)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-zlayer":
        serve_zlayer(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
