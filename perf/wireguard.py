"""iperf3 through two zlayer WireGuard interfaces vs two wireguard-go interfaces vs the raw veth, in one run.

Two network namespaces on one veth (made here, removed at the end even on failure). In each namespace one zlayer
interface (``python -m zlayer.overlay``, its own process) and one wireguard-go interface, both configured with
``wg set`` over their UAPI sockets; the iperf3 server sits in namespace b, the client in a. Rounds alternate zlayer,
wireguard-go and the raw veth (the order turns each round) so drifting load on the shared machine hits all alike; each
round gives a ratio of the two tunnels side by side, and the median over rounds is the figure.

Also: CPU seconds per Gbit moved (the two tunnel processes together, both ends), the latency a tunnel adds (ping
through it vs the raw veth), and the responder's handshakes/s: a generator in namespace a holds 256 peers configured
on both responders and keeps 32 valid initiations in flight (closed loop: the responder's capacity), then floods
initiations open loop (counting the responses and the cookie replies that the protocol's DoS defence sends instead).

Last line: one JSON object with ``gbps_vs_wireguard_go`` (target >= 4.0), ``gbps_zlayer``, ``gbps_wireguard_go``,
``gbps_raw``, ``cpu_s_per_gbit_zlayer`` / ``_wireguard_go``, ``handshakes_per_s_zlayer`` / ``_wireguard_go``,
``flood_*`` and ``added_latency_ms_zlayer`` / ``_wireguard_go`` (average round trip through the tunnel minus the
raw veth's; ``added_latency_min_ms_*`` from the minimums), with every round's figures.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import cpu_seconds, stop_all

SECONDS = int(os.environ.get("PERF_SECONDS", "3"))
ROUNDS = int(os.environ.get("PERF_ROUNDS", "5"))
NS_A, NS_B = "zlo-pf-a", "zlo-pf-b"
RAW = ("192.168.95.1", "192.168.95.2")
TUNNELS = {  # name: (ifname a, ifname b, port a, port b, address a, address b)
    "zlayer": ("zlo-pza", "zlo-pzb", 51870, 51871, "10.95.1.1", "10.95.1.2"),
    "wireguard_go": ("zlo-pga", "zlo-pgb", 51880, 51881, "10.95.2.1", "10.95.2.2"),
}
IPERF_PORT = 5299
FLOOD_PEERS = 256
WINDOW = 32
UAPI = Path("/var/run/wireguard")


def sh(*argv: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    r = subprocess.run(full, capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: {r.stderr.strip()}")
    return r


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def setup_netns() -> None:
    for ns in (NS_A, NS_B):
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", "zlo-pfa", "netns", NS_A, "type", "veth", "peer", "name", "zlo-pfb", "netns", NS_B)
    for ns, dev, addr in ((NS_A, "zlo-pfa", RAW[0]), (NS_B, "zlo-pfb", RAW[1])):
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")


def start_tunnel(name: str, tmp: Path, procs: list[subprocess.Popen[bytes]]) -> list[int]:
    from zlayer.overlay import noise

    if_a, if_b, port_a, port_b, addr_a, addr_b = TUNNELS[name]
    pids = []
    for ns, ifname in ((NS_A, if_a), (NS_B, if_b)):
        if name == "zlayer":
            argv = [sys.executable, "-m", "zlayer.overlay", ifname]
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        else:
            argv = ["wireguard-go", "-f", ifname]
            env = {**os.environ, "WG_PROCESS_FOREGROUND": "1"}
        with open(tmp / f"{ifname}.log", "wb") as log:
            p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], env=env, stdout=subprocess.DEVNULL, stderr=log)
        procs.append(p)
        pids.append(p.pid)
        deadline = time.monotonic() + 15
        while not (UAPI / f"{ifname}.sock").exists():
            if time.monotonic() > deadline or p.poll() is not None:
                raise RuntimeError(f"{name} interface {ifname} did not come up (see {tmp / (ifname + '.log')})")
            time.sleep(0.05)
    keys = [noise.generate_private_key() for _ in range(2)]
    files = []
    for i, key in enumerate(keys):
        path = tmp / f"{name}-{i}.key"
        path.write_text(b64(key) + "\n")
        path.chmod(0o600)
        files.append(str(path))
    pubs = [b64(noise.public_key_of(k)) for k in keys]
    sh("wg", "set", if_a, "private-key", files[0], "listen-port", str(port_a), "peer", pubs[1],
       "endpoint", f"{RAW[1]}:{port_b}", "allowed-ips", f"{addr_b}/32", ns=NS_A)  # fmt: skip
    sh("wg", "set", if_b, "private-key", files[1], "listen-port", str(port_b), "peer", pubs[0],
       "endpoint", f"{RAW[0]}:{port_a}", "allowed-ips", f"{addr_a}/32", ns=NS_B)  # fmt: skip
    for ns, ifname, addr in ((NS_A, if_a, addr_a), (NS_B, if_b, addr_b)):
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
        sh("ip", "-n", ns, "link", "set", ifname, "up")
    if sh("busybox", "ping", "-c", "3", "-W", "3", addr_b, ns=NS_A, check=False).returncode != 0:
        raise RuntimeError(f"no ping through the {name} tunnel")
    return pids


def iperf(dst: str) -> float:
    for attempt in range(2):
        time.sleep(0.3)
        r = sh("iperf3", "-c", dst, "-p", str(IPERF_PORT), "-t", str(SECONDS), "-J", ns=NS_A, check=False)
        report = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
        if r.returncode == 0 and "error" not in report:
            return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9
        print(f"iperf3 to {dst} failed (try {attempt + 1}): {report.get('error', r.stderr)}", file=sys.stderr)
    raise RuntimeError(f"iperf3 to {dst} failed twice")


def ping_ms(dst: str) -> tuple[float, float]:
    """(min, avg) round trip in ms of 40 pings; the min is what the path adds, the avg what the load adds to it."""
    out = sh("busybox", "ping", "-c", "40", "-i", "0.05", "-q", dst, ns=NS_A).stdout
    low, avg = out.rsplit("=", 1)[1].split("/")[:2]
    return float(low), float(avg)


def add_flood_peers(tmp: Path) -> dict[str, object]:
    """256 peers configured on both responders (side b); their private keys go to the generator."""
    from zlayer.overlay import noise

    privs = [noise.generate_private_key() for _ in range(FLOOD_PEERS)]
    conf = "".join(
        f"[Peer]\nPublicKey = {b64(noise.public_key_of(k))}\nAllowedIPs = 10.96.{i // 250}.{i % 250 + 1}/32\n"
        for i, k in enumerate(privs)
    )
    (tmp / "flood.conf").write_text(conf)
    (tmp / "flood.keys").write_text("\n".join(k.hex() for k in privs))
    out: dict[str, object] = {}
    for name, (_, if_b, _, port_b, _, _) in TUNNELS.items():
        sh("wg", "addconf", if_b, str(tmp / "flood.conf"), ns=NS_B)
        pub = sh("wg", "show", if_b, "public-key", ns=NS_B).stdout.strip()
        out[name] = (port_b, base64.b64decode(pub).hex())
    return out


def flood(port: int, responder_hex: str, keys_file: str) -> None:
    """Generator (runs in namespace a): closed-loop handshakes/s, then an open-loop flood."""
    from zlayer.overlay import noise

    responder = bytes.fromhex(responder_hex)
    idents = [noise.Identity(bytes.fromhex(h)) for h in Path(keys_file).read_text().split()]
    dhs = [noise._dh(i.key, responder) for i in idents]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("0.0.0.0", 0))
    to = (RAW[1], port)
    counter = iter(range(1, 1 << 30))

    def batch() -> list[bytes]:
        pairs = zip(idents, dhs, strict=True)
        return [noise.create_initiation(i, responder, d, next(counter), None)[0] for i, d in pairs]

    pool = [m for _ in range(3) for m in batch()]
    sock.settimeout(1.0)
    done = sent = 0
    t0 = time.monotonic()
    in_flight = 0
    while time.monotonic() - t0 < SECONDS and pool:
        while in_flight < WINDOW and pool:
            sock.sendto(pool.pop(0), to)
            sent += 1
            in_flight += 1
        try:
            data = sock.recv(256)
        except TimeoutError:
            in_flight = 0  # lost ones: the window refills
            continue
        in_flight -= 1
        if data[0] == noise.MSG_RESPONSE:
            done += 1
        if len(pool) < WINDOW:
            pool += batch()
    closed = done / (time.monotonic() - t0)
    # open loop: everything at once
    time.sleep(0.5)
    flood_msgs = [m for _ in range(4) for m in batch()]
    sock.settimeout(0.2)
    t0 = time.monotonic()
    for m in flood_msgs:
        sock.sendto(m, to)
    responses = cookies = 0
    while True:
        try:
            data = sock.recv(256)
        except TimeoutError:
            break
        responses += data[0] == noise.MSG_RESPONSE
        cookies += data[0] == noise.MSG_COOKIE
    elapsed = time.monotonic() - t0
    print(json.dumps({"handshakes_per_s": closed, "flood_sent": len(flood_msgs), "flood_responses": responses,
                      "flood_cookie_replies": cookies, "flood_seconds": elapsed}))  # fmt: skip


def main() -> None:
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="zlayer-perf-wg-"))
    try:
        setup_netns()
        pids = {name: start_tunnel(name, tmp, procs) for name in TUNNELS}
        server = subprocess.Popen(["ip", "netns", "exec", NS_B, "iperf3", "-s", "-p", str(IPERF_PORT)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        procs.append(server)
        time.sleep(0.5)
        rounds = []
        order = ["zlayer", "wireguard_go", "raw"]
        for r in range(ROUNDS):
            row: dict[str, float] = {}
            for name in order if r % 2 == 0 else order[::-1]:
                if name == "raw":
                    row["gbps_raw"] = iperf(RAW[1])
                    continue
                before = sum(cpu_seconds(p) for p in pids[name])
                gbps = iperf(TUNNELS[name][5])
                cpu = sum(cpu_seconds(p) for p in pids[name]) - before
                row[f"gbps_{name}"] = gbps
                row[f"cpu_s_per_gbit_{name}"] = cpu / (gbps * SECONDS) if gbps else 0.0
            row["ratio"] = row["gbps_zlayer"] / row["gbps_wireguard_go"]
            rounds.append(row)
            print(json.dumps(row), file=sys.stderr)
        result: dict[str, object] = {
            "gbps_vs_wireguard_go": statistics.median(r["ratio"] for r in rounds),
            **{k: statistics.median(r[k] for r in rounds) for k in rounds[0] if k != "ratio"},
        }
        raw_min, raw_avg = ping_ms(RAW[1])
        result["ping_ms_raw"] = raw_avg
        for name in TUNNELS:
            low, avg = ping_ms(TUNNELS[name][5])
            result[f"ping_ms_{name}"] = avg
            result[f"added_latency_ms_{name}"] = avg - raw_avg
            result[f"added_latency_min_ms_{name}"] = low - raw_min
        targets = add_flood_peers(tmp)
        for name, (port, pub) in targets.items():  # type: ignore[misc]
            r = sh(sys.executable, __file__, "flood", str(port), pub, str(tmp / "flood.keys"), ns=NS_A)
            got = json.loads(r.stdout.strip().splitlines()[-1])
            result[f"handshakes_per_s_{name}"] = got["handshakes_per_s"]
            result[f"flood_responses_{name}"] = got["flood_responses"]
            result[f"flood_cookie_replies_{name}"] = got["flood_cookie_replies"]
            result["flood_sent"] = got["flood_sent"]
            alive = sh("busybox", "ping", "-c", "2", "-W", "3", TUNNELS[name][5], ns=NS_A, check=False)
            result[f"tunnel_up_after_flood_{name}"] = alive.returncode == 0
        result["rounds"] = rounds
        result["seconds_per_run"] = SECONDS
        result["cores"] = os.cpu_count()
        print(json.dumps(result))
    finally:
        stop_all(procs)
        for ns in (NS_A, NS_B):
            sh("ip", "netns", "del", ns, check=False)
        for name in TUNNELS:
            for ifname in TUNNELS[name][:2]:
                (UAPI / f"{ifname}.sock").unlink(missing_ok=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "flood":
        flood(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        main()
