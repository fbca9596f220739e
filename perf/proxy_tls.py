"""New TLS handshakes per second: zlayer's L7 proxy (TLS termination) vs nginx ``ssl`` (same run, same backend).

Both terminate TLS with the SAME certificate and key (ECDSA P-256, the kind zlayer issues and ACME gives it), TLS 1.2
and 1.3 allowed, default groups, and proxy every request to the same backend nginx (a tiny ``return 200``). One worker
each pinned to core 1 (with the backend); the load generator on core 0.

The load generator is a small C client compiled here (wrk keeps its ``SSL`` object across reconnects, ``SSL_clear``
keeps the session, so it can resume from the server's ticket and would measure resumptions): every
connection is a new TCP connection and a new ``SSL`` from a context with its session cache off and no ticket support,
so each one is a FULL handshake; it then sends ``GET /`` with ``Connection: close`` and reads the response to EOF.
It counts resumed sessions (must be 0) and failures. ``SECONDS`` per round, ``ROUNDS`` interleaved rounds (best kept).

Last line: one JSON object with ``handshakes_per_s_zlayer``, ``handshakes_per_s_nginx`` and ``handshakes_vs_nginx``
(target >= 0.9), plus CPU microseconds per handshake of each proxy and the backend together
(``cpu_per_handshake_vs_nginx``), which a loaded machine disturbs less than the rate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import cpu_seconds, free_port, nginx_conf, stop_all, wait_port

SECONDS = int(os.environ.get("PERF_SECONDS", "6"))
ROUNDS = int(os.environ.get("PERF_ROUNDS", "3"))
CONNS = int(os.environ.get("PERF_CONNS", "32"))
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLIENT_C = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static SSL_CTX *ctx;
static struct sockaddr_in addr;
static atomic_int stop;
static atomic_ulong ok, failed, resumed, tls13;
static const char REQ[] = "GET / HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n";

static void *run(void *arg)
{
    (void)arg;
    char buf[4096];
    while (!atomic_load(&stop)) {
        int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1, good = 0;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        SSL *s = NULL;
        if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0) {
            s = SSL_new(ctx);
            SSL_set_fd(s, fd);
            SSL_set_tlsext_host_name(s, "bench.test");
            if (SSL_connect(s) == 1 && SSL_write(s, REQ, sizeof(REQ) - 1) > 0) {
                size_t got = 0;
                int r;
                while ((r = SSL_read(s, buf, sizeof(buf))) > 0)
                    if (got == 0 && r >= 12 && memcmp(buf, "HTTP/1.1 200", 12) == 0)
                        got = (size_t)r;
                good = got > 0;
                if (SSL_session_reused(s))
                    atomic_fetch_add(&resumed, 1);
                if (SSL_version(s) == TLS1_3_VERSION)
                    atomic_fetch_add(&tls13, 1);
            }
        }
        if (!atomic_load(&stop))
            atomic_fetch_add(good ? &ok : &failed, 1);
        SSL_free(s);
        close(fd);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    int port = atoi(argv[1]), secs = atoi(argv[2]), n = atoi(argv[3]);
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    pthread_t th[256];
    if (n > 256)
        n = 256;
    for (int i = 0; i < n; i++)
        pthread_create(&th[i], NULL, run, NULL);
    sleep(1); /* warm-up, not counted */
    atomic_store(&ok, 0);
    atomic_store(&failed, 0);
    atomic_store(&resumed, 0);
    atomic_store(&tls13, 0);
    sleep((unsigned)secs);
    unsigned long o = atomic_load(&ok), f = atomic_load(&failed), r = atomic_load(&resumed), t = atomic_load(&tls13);
    atomic_store(&stop, 1);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    printf("{\"ok\": %lu, \"failed\": %lu, \"resumed\": %lu, \"tls13\": %lu, \"seconds\": %d}\n", o, f, r, t, secs);
    return 0;
}
"""


def build_client(tmp: Path) -> Path:
    src, exe = tmp / "tls_client.c", tmp / "tls_client"
    src.write_text(CLIENT_C)
    subprocess.run(["cc", "-O2", "-o", str(exe), str(src), "-lssl", "-lcrypto", "-lpthread"], check=True)
    return exe


def handshakes(client: Path, port: int, pids: tuple[int, int]) -> tuple[float, float]:
    """Full handshakes (each followed by one request answered 200) per second through ``port``, and the CPU
    microseconds per handshake of the proxy plus the backend (``pids``; steadier than the rate on a shared machine,
    and it counts what the proxy makes the backend do, e.g. accept a new connection per client connection)."""
    cpu0 = sum(cpu_seconds(p) for p in pids)
    out = subprocess.run(
        ["taskset", "-c", "0", str(client), str(port), str(SECONDS), str(CONNS)],
        capture_output=True,
        text=True,
        timeout=SECONDS + 30,
        check=True,
    ).stdout
    res = json.loads(out.strip().splitlines()[-1])
    if res["resumed"]:
        raise RuntimeError(f"the client resumed {res['resumed']} sessions through port {port}: not full handshakes")
    if res["failed"] > res["ok"] // 100:
        raise RuntimeError(f"{res['failed']} failed connections through port {port} (ok {res['ok']})")
    cpu = (
        sum(cpu_seconds(p) for p in pids) - cpu0
    )  # includes the uncounted warm-up second: a slight overestimate for both
    return float(res["ok"]) / SECONDS, cpu * 1e6 / max(1, res["ok"] + res["failed"])


def main() -> None:
    from zlayer.proxy.certs import self_signed

    tmp = Path(tempfile.mkdtemp(prefix="zlayer-perf-tls-"))
    cert, key = self_signed(["bench.test"])
    (tmp / "cert.pem").write_bytes(cert)
    (tmp / "key.pem").write_bytes(key)
    client = build_client(tmp)
    backend, zport, nport = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str]) -> int:
        procs.append(
            subprocess.Popen(["taskset", "-c", "1", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        return procs[-1].pid

    try:
        (tmp / "backend.conf").write_text(
            nginx_conf(
                tmp,
                "backend",
                f'  server {{ listen 127.0.0.1:{backend}; location / {{ return 200 "hello\\n"; }} }}',
            )
        )
        (tmp / "proxy.conf").write_text(
            nginx_conf(
                tmp,
                "proxy",
                f"""  upstream be {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{ listen 127.0.0.1:{nport} ssl; server_name bench.test;
    ssl_certificate {tmp}/cert.pem; ssl_certificate_key {tmp}/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
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
                            "key": "bench#https",
                            "listen": f"127.0.0.1:{zport}",
                            "tls": True,
                            "backends": [f"127.0.0.1:{backend}"],
                        }
                    ],
                }
            )
        )
        bpid = start(["nginx", "-p", str(tmp), "-c", str(tmp / "backend.conf")])
        npid = start(["nginx", "-p", str(tmp), "-c", str(tmp / "proxy.conf")])
        zpid = start([sys.executable, "-m", "zlayer.proxy.standalone", str(tmp / "zlayer.json")])
        for port in (backend, nport, zport):
            wait_port(port)
        z: list[tuple[float, float]] = []
        n: list[tuple[float, float]] = []
        for _ in range(ROUNDS):  # interleaved so drifting load on the shared machine hits both alike
            z.append(handshakes(client, zport, (zpid, bpid)))
            n.append(handshakes(client, nport, (npid, bpid)))
        zr, nr = max(r for r, _ in z), max(r for r, _ in n)
        zc, nc = min(c for _, c in z), min(c for _, c in n)
        print(
            json.dumps(
                {
                    "handshakes_per_s_zlayer": round(zr),
                    "handshakes_per_s_nginx": round(nr),
                    "handshakes_vs_nginx": round(zr / nr, 3),
                    "cpu_us_per_handshake_zlayer": round(zc, 1),
                    "cpu_us_per_handshake_nginx": round(nc, 1),
                    "cpu_per_handshake_vs_nginx": round(zc / nc, 3),
                    "rounds_zlayer": [round(r) for r, _ in z],
                    "rounds_nginx": [round(r) for r, _ in n],
                    "certificate": "ECDSA P-256",
                    "client_connections": CONNS,
                    "seconds": SECONDS,
                    "rounds": ROUNDS,
                }
            )
        )
    finally:
        stop_all(procs)


if __name__ == "__main__":
    main()
