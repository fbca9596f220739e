"""The daemon's life on a real node (issue 5, item 1 and 3): the root-only unix socket, the token-guarded TCP
listener, ``serve --daemon``, two daemons side by side, SIGTERM leaving containers running for the next daemon to
re-adopt (no duplicates, no orphans), and SIGKILL in the middle of a deploy followed by a restart that converges."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.fixtures.daemon_live import live_node, web_spec
from tests.fixtures.daemon_node import unique

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _jwt(secret: str, sub: str = "ci", exp_in: int = 3600, iss: str = "zlayer") -> str:
    """An HS256 JWT as ZLayer's ``zlayer token create`` mints it (sub, exp, iat, iss=zlayer, roles)."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    now = int(time.time())
    head = b64(json.dumps({"typ": "JWT", "alg": "HS256"}).encode())
    body = b64(json.dumps({"sub": sub, "exp": now + exp_in, "iat": now, "iss": iss, "roles": ["admin"]}).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def _connect_as_nobody(sock: Path) -> subprocess.CompletedProcess[str]:
    code = (
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
        f"try:\n s.connect({str(sock)!r}); print('connected')\nexcept OSError as e:\n print(e.errno, e.strerror)"
    )
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c",
                           code], capture_output=True, text=True, timeout=30)  # fmt: skip


def test_socket_is_root_only_and_tcp_wants_a_valid_token(tmp_path: Path) -> None:
    sockdir = Path(f"/tmp/zl-sock-{uuid.uuid4().hex[:8]}")
    sockdir.mkdir(mode=0o755)
    sockdir.chmod(0o755)  # world-traversable: only the socket's own mode may keep others out
    secret = "s3cret-" + uuid.uuid4().hex
    try:
        with live_node(tmp_path / "n", serve_args=None) as node:  # default args (TCP + metrics), restarted below
            port = node.api_port
            node.signal_and_wait(signal.SIGTERM)
            node.serve_args = ["--bind", f"127.0.0.1:{port}", "--socket", str(sockdir / "api.sock"),
                               "--jwt-secret", secret, "--metrics-bind", f"127.0.0.1:{node.metrics_port}"]  # fmt: skip
            node.start()
            sock = sockdir / "api.sock"
            st = sock.stat()
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and st.st_uid == 0, oct(st.st_mode)
            assert json.loads((node.data / "daemon.json").read_text())["socket_path"] == str(sock)
            # root can talk to it; nobody (not in the socket's group) is refused by the kernel
            r = node.zl("--socket", str(sock), "ps", "--format", "json")
            assert r.returncode == 0 and json.loads(r.stdout) == {"services": [], "containers": []}, r.stderr
            # a second daemon (own data dir) told to use the same socket refuses to take it over
            other = subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(tmp_path / "other"), "serve",
                                    "--bind", "none", "--socket", str(sock)], env={**node.env, "ZLAYER_NODE_NETWORK":
                                   "off"}, capture_output=True, text=True, timeout=60)  # fmt: skip
            assert other.returncode != 0 and f"another zlayer daemon already answers on {sock}" in other.stderr
            assert node.zl("--socket", str(sock), "ps").returncode == 0
            nobody = _connect_as_nobody(sock)
            assert nobody.stdout.strip() == "13 Permission denied", nobody.stdout + nobody.stderr

            # TCP: health and the OpenAPI document are public; everything else wants a bearer token
            status, _, body = node.tcp("GET", "/health/live")
            assert status == 200 and body["status"] == "ok"
            status, _, doc = node.tcp("GET", "/api-docs/openapi.json")
            assert status == 200 and "/api/v1/deployments" in doc["paths"]
            status, hdrs, body = node.tcp("GET", "/api/v1/deployments")
            assert status == 401 and hdrs["content-type"].startswith("application/json"), (status, body)
            assert body["code"] == body["error"] == "unauthorized" and "missing" in body["message"]
            for wrong in ("nope", _jwt("another-secret"), _jwt(secret, exp_in=-60), _jwt(secret, iss="other")):
                status, _, body = node.tcp("GET", "/api/v1/deployments", token=wrong)
                assert status == 401 and body["code"] == "unauthorized", (wrong, status, body)
            # a JWT signed with --jwt-secret (as `zlayer token create` mints it) and the persisted admin bearer pass
            status, _, body = node.tcp("GET", "/api/v1/deployments", token=_jwt(secret))
            assert (status, body) == (200, [])
            bearer = (node.data / "admin_bearer.token").read_text().strip()
            assert stat.S_IMODE((node.data / "admin_bearer.token").stat().st_mode) == 0o600
            status, _, body = node.tcp("GET", "/api/v1/deployments", token=bearer)
            assert (status, body) == (200, [])
            # the CLI over TCP with --host/--token
            r = node.zl_ns("--host", f"http://127.0.0.1:{port}", "--token", _jwt(secret), "ps", "--format", "json")
            assert r.returncode == 0 and json.loads(r.stdout)["services"] == [], r.stdout + r.stderr
            r = node.zl_ns("--host", f"http://127.0.0.1:{port}", "--token", "bad", "ps")
            assert r.returncode != 0 and "Traceback" not in r.stderr and "token" in r.stderr.lower(), r.stderr
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def test_serve_daemon_detaches_and_sigterm_shuts_down_cleanly(tmp_path: Path) -> None:
    ns = f"zldm-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    pid = 0
    try:
        t0 = time.monotonic()
        secret = uuid.uuid4().hex
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        r = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "zlayer", "--data-dir",
                            str(data), "serve", "--daemon", "--bind", "127.0.0.1:3669", "--jwt-secret", secret],
                           env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert "started (pid" in r.stdout and time.monotonic() - t0 < 60
        pid = int(r.stdout.split("pid ")[1].split(")")[0])
        assert _alive(pid)
        # detached: its own session, not our child, and the socket answers
        assert os.getsid(pid) == pid and os.getsid(pid) != os.getsid(0)
        info = json.loads((data / "daemon.json").read_text())
        assert info["pid"] == pid and info["socket_path"] == str(data / "run" / "zlayer.sock")
        # the detached daemon signs with the --jwt-secret it was given (passed on through its environment)
        assert secret not in Path(f"/proc/{pid}/cmdline").read_text()
        tcp = [sys.executable, "-m", "zlayer", "--host", "http://127.0.0.1:3669", "ps", "--format", "json"]
        r = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", *tcp[:3], "--token", _jwt(secret), *tcp[3:]],
                           env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0 and json.loads(r.stdout)["services"] == [], r.stdout + r.stderr
        r = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", *tcp[:3], "--token", _jwt("other"), *tcp[3:]],
                           env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        # issue 16: a forged token is refused in words that do not help guessing (not "bad signature")
        assert r.returncode != 0 and "invalid or expired token" in r.stderr, r.stderr
        st = subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(data), "status"], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
        assert st.returncode == 0 and f"running (pid {pid}" in st.stdout, st.stdout + st.stderr
        # a second daemon on the same data dir is refused with a clear message
        again = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "zlayer", "--data-dir",
                                str(data), "serve", "--bind", "none"],
                               env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert again.returncode != 0 and "already uses" in again.stderr and "Traceback" not in again.stderr
        again = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "zlayer", "--data-dir",
                                str(data), "serve", "--daemon", "--bind", "none"],
                               env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert again.returncode != 0 and "exited with code 1: another zlayer daemon already uses" in again.stderr, (
            again.stderr
        )
        assert _alive(pid) and (data / "run" / "zlayer.sock").exists()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
        assert not (data / "run" / "zlayer.sock").exists() and not (data / "daemon.json").exists()
        log = (data / "logs" / "daemon.log").read_text()
        assert "Traceback" not in log, log[-3000:]
        st = subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(data), "status"], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
        assert st.returncode == 1 and "not running" in st.stdout
    finally:
        if pid and _alive(pid):
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_two_daemons_side_by_side_and_sigterm_then_restart_readopts(tmp_path: Path) -> None:
    with live_node(tmp_path / "a") as a, live_node(tmp_path / "b", ns=a.ns) as b:
        pa, pb = a.free_port(), b.free_port()
        na, nb = unique("sidea"), unique("sideb")
        a.deploy(web_spec(na, 2, pa))
        b.deploy(web_spec(nb, 1, pb))
        a.expect(na)
        b.expect(nb)
        reps_a = a.containers(na, "web")
        reps_b = b.containers(nb, "web")
        subnet = {r["ipv4"].rsplit(".", 1)[0] for r in reps_a}, {r["ipv4"].rsplit(".", 1)[0] for r in reps_b}
        assert len(subnet[0]) == 1 and subnet[0] != subnet[1], subnet  # each daemon its own /24
        assert a.get(pa)[0] == 200 and b.get(pb)[0] == 200
        assert a.data / "run" / "zlayer.sock" != b.data / "run" / "zlayer.sock"

        # SIGTERM: the daemon exits 0, its replicas keep running and keep serving (not its proxy though)
        before = {r["id"]: r["pid"] for r in reps_a}
        # open follow streams (logs -f, events) end cleanly with the daemon, they do not hold its shutdown up
        follow = subprocess.Popen([sys.executable, "-m", "zlayer", "--data-dir", str(a.data), "logs", "-s", "web",
                                   "--deployment", na, "-f"], env=a.env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)  # fmt: skip
        sse = f"http://localhost/api/v1/deployments/{na}/events"
        events = subprocess.Popen(["curl", "-sN", "--unix-socket", str(a.data / "run" / "zlayer.sock"), sse],
                                  stdout=subprocess.DEVNULL)  # fmt: skip
        time.sleep(1.5)
        t0 = time.monotonic()
        assert a.signal_and_wait(signal.SIGTERM) == 0
        assert time.monotonic() - t0 < 4.5, time.monotonic() - t0
        assert follow.wait(10) == 0 and events.wait(10) == 0
        assert follow.stderr is not None and "Traceback" not in follow.stderr.read()
        assert "Traceback" not in a.log_tail(20000), a.log_tail(20000)
        assert all(_alive(p) for p in before.values()), before
        assert b.get(pb)[0] == 200  # the neighbour is untouched
        # restart: the same containers are adopted (same pids), nothing duplicated, nothing left over
        a.start()
        d = a.expect(na)
        again = a.containers(na, "web")
        assert {r["id"]: r["pid"] for r in again} == before, (again, before)
        assert a.runtime_containers() == sorted(before)
        assert [x["replicas_running"] for x in d["service_health"]] == [2]
        a.wait_for(lambda: a.get(pa)[0] == 200, 20, "endpoint served again after restart")
        assert {a.get(pa)[1] for _ in range(4)} == {"v1\n"}
        ev = [e["message"] for e in a.events(na)]
        assert not any("created" in m and "web-rep-3" in m for m in ev), ev


@pytest.mark.parametrize("seed", [int(s) for s in os.environ.get("ZLAYER_TEST_SEEDS", "1,2,3").split(",")])
def test_killed_during_a_deploy_then_restart_converges(tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    with live_node(tmp_path / "k") as node:
        port, name = node.free_port(), unique("crash")
        status, body = node.request("POST", "/api/v1/deployments", {"spec": web_spec(name, 3, port)})
        assert status == 201, body
        time.sleep(rnd.uniform(0.0, 1.2))  # somewhere inside the converge: pulls, creates, starts, health
        if seed % 3 == 0:  # SIGTERM mid-deploy: a prompt clean exit, the converge resumes after the restart
            t0 = time.monotonic()
            assert node.signal_and_wait(signal.SIGTERM) == 0
            assert time.monotonic() - t0 < 15 and "Traceback" not in node.log_tail(20000), node.log_tail()
        else:
            assert node.signal_and_wait(signal.SIGKILL) == -signal.SIGKILL
        node.start()
        node.expect(name, timeout=90)
        reps = node.containers(name, "web")
        ids = sorted(r["id"] for r in reps)
        assert ids == ["web-rep-1", "web-rep-2", "web-rep-3"], reps
        assert all(r["state"] == "running" and _alive(r["pid"]) for r in reps), reps
        assert node.runtime_containers() == ids  # no orphan the killed daemon half-made
        node.wait_for(lambda: node.get(port)[0] == 200, 20, "endpoint answers")
        # every replica has its own address; no address leased to something that no longer exists
        ipam = json.loads((node.data / "agent_ipam.json").read_text())["leases"]
        assert sorted(ipam) == ids and len(set(ipam.values())) == 3, ipam
        db = sqlite3.connect(node.data / "state.db")
        try:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            db.close()
        node.delete(name)
        assert node.runtime_containers() == []


def test_sigkill_during_a_rollout_and_during_a_delete_then_restart_is_consistent(tmp_path: Path) -> None:
    rnd = random.Random()
    with live_node(tmp_path / "r") as node:
        port, name = node.free_port(), unique("roll")
        node.deploy(web_spec(name, 3, port))
        node.expect(name)
        # a rollout to v2 killed half-way
        status, body = node.request(
            "POST", "/api/v1/deployments", {"spec": web_spec(name, 3, port).replace(":v1", ":v2")}
        )
        assert status == 201, body
        delay = rnd.uniform(0.2, 2.5)
        time.sleep(delay)
        assert node.signal_and_wait(signal.SIGKILL) == -signal.SIGKILL
        node.start()
        node.expect(name, timeout=90)
        node.wait_for(
            lambda: (
                sorted((c["image"], c["state"]) for c in node.containers(name, "web"))
                == [("zlayer-svc/httpd:v2", "running")] * 3
            ),
            60,
            f"3 replicas of v2 after a kill {delay:.2f}s into the rollout",
        )
        ids = sorted(c["id"] for c in node.containers(name, "web"))
        assert node.runtime_containers() == ids, (delay, node.runtime_containers(), ids)
        node.wait_for(lambda: node.get(port) == (200, "v2\n"), 20, "v2 served")
        # a delete killed half-way: after the restart, down finishes it and nothing is left
        pids = [c["pid"] for c in node.containers(name, "web")]
        import threading

        def delete() -> None:
            with contextlib.suppress(OSError, http.client.HTTPException):  # the daemon dies under the request
                node.request("DELETE", f"/api/v1/deployments/{name}")

        t = threading.Thread(target=delete, daemon=True)
        t.start()
        time.sleep(rnd.uniform(0.0, 0.8))
        assert node.signal_and_wait(signal.SIGKILL) == -signal.SIGKILL
        node.start()
        status, _ = node.request("DELETE", f"/api/v1/deployments/{name}")
        assert status in (204, 404)
        assert node.request("GET", f"/api/v1/deployments/{name}")[0] == 404
        assert node.runtime_containers() == []
        assert not any(_alive(p) for p in pids)
        leases = json.loads((node.data / "agent_ipam.json").read_text())["leases"]
        assert leases == {}, leases
