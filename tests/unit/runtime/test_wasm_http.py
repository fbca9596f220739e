"""``wasi:http/incoming-handler`` components: the host's wasi:http (zlayer/runtime/wasm/wasihttp.py) driving the
handler built from WAT at test time (tests/fixtures/wasm.py), first in process through :class:`P2Http`, then as a
replica of :class:`WasmRuntime` serving HTTP on its own loopback address (no root needed)."""

from __future__ import annotations

import asyncio
import http.client
import http.server
import json
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.wasm import WasmPrograms
from zlayer.agent.probes import run_health_check
from zlayer.errors import RuntimeFailure
from zlayer.images import ImageStore
from zlayer.runtime import ContainerId
from zlayer.runtime.wasm.artifact import export_artifact
from zlayer.runtime.wasm.binary import inspect_wasm
from zlayer.runtime.wasm.driver import WasmRuntime
from zlayer.runtime.wasm.engine import EpochTicker, Limits, P2Http, digest_of_file, load_program
from zlayer.runtime.wasm.wasihttp import Guest
from zlayer.spec.models import HealthSpec, ServiceSpec


def test_handler_instances_are_reused_and_a_trap_fails_only_its_request(
    wasm_programs: WasmPrograms, tmp_path: Path
) -> None:
    path = wasm_programs.http_handler
    assert inspect_wasm(path).world == "wasi:http/proxy"
    prog = load_program(path, digest_of_file(path), tmp_path / "compiled", fuel=False, where=path.name)
    assert isinstance(prog, P2Http)
    prog.configure(limits=Limits(deadline_s=5.0), max_instances=2)
    ticker = EpochTicker(prog.engine)
    try:
        prog.warm(1)

        def get(p: str) -> tuple[int, bytes, str]:
            status, _headers, body, error = prog.call("GET", p, "http", "example", [("accept", b"*/*")], b"")
            return status, body, error

        # one instance serves request after request: its call counter goes on
        assert get("/hello") == (200, b"hello from wasm /hello #1\n", "")
        assert get("/a?b=c") == (200, b"hello from wasm /a?b=c #2\n", "")
        assert get("/missing") == (404, b"hello from wasm /missing #3\n", "")
        # a trap mid-request: that request is a 500 saying why; the instance is thrown away, the next is fresh
        status, body, error = get("/trap")
        assert (status, body) == (500, b"") and "unreachable" in error, error
        assert get("/after") == (200, b"hello from wasm /after #1\n", "")
        st = prog.stats
        assert (st.calls, st.errors, st.instantiated, st.alive) == (5, 1, 2, 1), st
        assert prog.host.table.objs == {}, "a request left host resources behind"
    finally:
        ticker.close()


def test_idle_instances_go_after_idle_timeout_down_to_min_instances(
    wasm_programs: WasmPrograms, tmp_path: Path
) -> None:
    path = wasm_programs.http_handler
    prog = load_program(path, digest_of_file(path), tmp_path / "compiled", fuel=False, where=path.name)
    assert isinstance(prog, P2Http)
    prog.configure(limits=Limits(), max_instances=3, min_instances=1, idle_timeout=60.0)
    prog.warm(3)
    assert prog.call("GET", "/a", "http", "x", [], b"")[2] == b"hello from wasm /a #1\n"
    assert prog.shrink() == 0  # none idle for 60 s yet
    assert prog.shrink(time.monotonic() + 61) == 2  # two went; the one used last stays (min_instances)
    assert (prog.stats.alive, prog.stats.instantiated) == (1, 3)
    assert prog.call("GET", "/b", "http", "x", [], b"")[2] == b"hello from wasm /b #2\n"
    assert prog.shrink(time.monotonic() + 61) == 0
    prog.configure(limits=Limits(), max_instances=3, min_instances=0, idle_timeout=60.0)
    assert prog.shrink(time.monotonic() + 61) == 1 and prog.stats.alive == 0  # min_instances 0: none left
    assert prog.call("GET", "/c", "http", "x", [], b"")[2] == b"hello from wasm /c #1\n"  # a new one when needed
    assert prog.stats.instantiated == 4 and prog.host.table.objs == {}


def test_a_loop_and_a_memory_grab_fail_their_request_at_the_limits(wasm_programs: WasmPrograms, tmp_path: Path) -> None:
    path = wasm_programs.http_handler
    prog = load_program(path, digest_of_file(path), tmp_path / "compiled", fuel=False, where=path.name)
    assert isinstance(prog, P2Http)
    prog.configure(limits=Limits(deadline_s=0.2, memory_bytes=4 << 20), max_instances=1)
    ticker = EpochTicker(prog.engine)
    try:
        status, _, _, error = prog.call("GET", "/spin", "http", "x", [], b"")
        assert (status, error) == (500, "deadline: ran past its 0.2 s limit")
        status, _, _, error = prog.call("GET", "/grab", "http", "x", [], b"")
        assert status == 500 and "unreachable" in error, error  # memory.grow refused at 4 MiB, then its trap
        status, _, body, _ = prog.call("GET", "/ok", "http", "x", [], b"")
        assert (status, body) == (200, b"hello from wasm /ok #1\n")
        assert (prog.stats.errors, prog.stats.instantiated) == (2, 3)
    finally:
        ticker.close()


class _Upstream(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"upstream saw {self.path} host={self.headers.get('Host')}\n".encode()
        self.send_response(203)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_outgoing_requests_as_the_spec_allows(wasm_programs: WasmPrograms, tmp_path: Path) -> None:
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = upstream.server_address[1]
    path = wasm_programs.http_client

    def fetch(guest: Guest, where: str) -> tuple[int, bytes, str]:
        prog = load_program(path, digest_of_file(path), tmp_path / "compiled", fuel=False, where="c", guest=guest)
        assert isinstance(prog, P2Http)
        status, _, body, error = prog.call("GET", f"/fetch/{where}", "http", "x", [], b"")
        assert prog.host.table.objs == {}
        return status, body, error

    try:
        # allowed: the upstream's status and body come back through the component
        got = fetch(Guest(outgoing=True), f"127.0.0.1:{port}")
        assert got == (203, f"fetched: upstream saw /upstream host=127.0.0.1:{port}\n".encode(), ""), got
        assert fetch(Guest(outgoing=True, allowed_hosts=["127.0.0.1"]), f"127.0.0.1:{port}")[0] == 203
        # refused by the spec (no http_client capability, or a host not allowed): HTTP-request-denied, its 502
        assert fetch(Guest(outgoing=False), f"127.0.0.1:{port}")[:2] == (502, b"refused: ")
        assert fetch(Guest(outgoing=True, allowed_hosts=["*.example.com"]), f"127.0.0.1:{port}")[:2] == (
            502,
            b"refused: ",
        )
        # allowed but nothing listens: connection-refused in the future, on which this component traps
        status, _, error = fetch(Guest(outgoing=True), "127.0.0.1:1")
        assert status == 500 and "unreachable" in error, error
    finally:
        upstream.shutdown()
        upstream.server_close()


async def _no_exec(argv: list[str]) -> tuple[int, str]:
    raise AssertionError("no command check here")


def _runtime(root: Path, component: Path, ref: str) -> WasmRuntime:
    """A WASM driver whose image store holds ``component`` as ``ref``."""
    store = ImageStore(root / "images")
    export_artifact(store, component, ref)

    class Images:
        async def pull(self, image: str, policy: str = "if_not_present") -> None:
            return None

        async def wasm_artifact(self, image: str) -> tuple[Path, str]:
            local = store.get(image)
            desc = local.manifest["layers"][0]
            p = local.wasm_layer_path(desc)
            assert p is not None
            return p, str(desc["digest"])

    return WasmRuntime(root, Images())


def _get(ip: str, port: int, p: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(ip, port, timeout=10)
    try:
        conn.request("GET", p)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


async def _serve_two_replicas(root: Path, handler: Path) -> None:
    rt = _runtime(root, handler, "test/http:v1")
    spec = ServiceSpec.model_validate(
        {
            "image": {"name": "test/http:v1"},
            "endpoints": [{"name": "http", "protocol": "http", "port": 80, "target_port": 18181}],
            "wasm": {"max_instances": 2, "request_timeout": "5s"},
        }
    )
    cids = [ContainerId("web", 0), ContainerId("web", 1)]
    try:
        for cid in cids:
            await rt.create(cid, spec)
            await rt.start(cid)  # returns once the replica listens
        ips = [(await rt.state(cid)).ip for cid in cids]
        assert all(ip.startswith("127.77.") for ip in ips) and len(set(ips)) == 2, ips

        def get(ip: str, p: str) -> tuple[int, bytes]:
            return _get(ip, 18181, p)

        for ip in ips:
            assert await asyncio.to_thread(get, ip, "/x") == (200, b"hello from wasm /x #1\n")
        # the agent's health checks reach a replica where the proxy does: its address and the service's port
        for check in ({"type": "tcp", "port": 18181}, {"type": "http", "url": "http://localhost:18181/healthz"}):
            health = HealthSpec.model_validate({"check": check, "timeout": "2s"})
            res = await run_health_check(health, ips[1], spec.backend_port, _no_exec)
            assert res.ok, (check, res)
        bad = HealthSpec.model_validate({"check": {"type": "http", "url": "http://localhost:18181/missing"}})
        assert not (await run_health_check(bad, ips[1], spec.backend_port, _no_exec)).ok  # the handler's 404
        status, body = await asyncio.to_thread(get, ips[0], "/trap")
        assert status == 500 and b"unreachable" in body, body
        assert await asyncio.to_thread(get, ips[0], "/y") == (200, b"hello from wasm /y #1\n")
        assert await asyncio.to_thread(get, ips[1], "/y") == (200, b"hello from wasm /y #4\n")  # after 2 checks
        log = (root / "logs" / f"{cids[0]}.log").read_text()
        assert "GET /trap: 500: trap: `unreachable`" in log, log
        deadline = time.monotonic() + 10
        while True:  # the worker rewrites its counts every 0.5 s
            st = await rt.stats(cids[0])
            if st.calls == 3 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert (st.calls, st.call_errors, st.instances) == (3, 1, 1), st
        assert st.memory_usage_bytes > 0, st  # the instance's linear memory, resident
        assert json.loads((root / "wasm" / "instances" / str(cids[0]) / "ready").read_text())["listen"][1] == 18181
        cfg = json.loads((root / "wasm" / "instances" / str(cids[0]) / "config.json").read_text())
        assert (cfg["idle_timeout"], cfg["min_instances"], cfg["max_instances"]) == (300.0, 0, 2)  # the spec's
    finally:
        for cid in cids:
            await rt.remove(cid, force=True)


@pytest.mark.slow
def test_replicas_serve_http_on_addresses_of_their_own(wasm_programs: WasmPrograms, tmp_path: Path) -> None:
    asyncio.run(_serve_two_replicas(tmp_path, wasm_programs.http_handler))


def test_filesystem_is_the_spec_storage_and_nothing_beyond(wasm_programs: WasmPrograms, tmp_path: Path) -> None:
    from tests.fixtures.wasm import FS_ERROR_CODES

    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("not for the guest\n")
    (data / "out").symlink_to(outside)  # a symlink leading out of the preopen
    (data / "abs").symlink_to(outside / "secret.txt")
    path = wasm_programs.http_fs

    def program(ro: bool) -> P2Http:
        guest = Guest(preopens=[(str(data), "/data", ro)])
        prog = load_program(path, digest_of_file(path), tmp_path / "compiled", fuel=False, where="fs", guest=guest)
        assert isinstance(prog, P2Http)
        return prog

    def get(prog: P2Http, p: str) -> tuple[int | str, bytes]:
        status, _, body, error = prog.call("GET", p, "http", "x", [], b"")
        assert not error, error
        assert prog.host.table.objs == {}, "a request left host resources (file descriptors) behind"
        return (FS_ERROR_CODES[status - 600] if status >= 600 else status), body

    rw = program(False)
    # written through write-via-stream, read back through read-via-stream, on the host's disk in between
    assert get(rw, "/w/note.txt") == (201, b"/w/note.txt")
    assert (data / "note.txt").read_text() == "/w/note.txt"
    (data / "note.txt").write_text("changed on the host\n")
    assert get(rw, "/r/note.txt") == (200, b"changed on the host\n")
    assert get(rw, "/r/nothing.txt") == ("no-entry", b"")
    # no way out: .., an absolute path, a symlink to a directory or a file outside
    for escape in ("/r/../outside/secret.txt", "/r//etc/passwd", "/r/out/secret.txt", "/w/out/new.txt"):
        assert get(rw, escape) == ("not-permitted", b""), escape
    assert get(rw, "/r/abs") == ("loop", b"")  # the last component is not followed (path-flags without follow)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    # directories, stat (300 + descriptor-type's index: 303 directory, 306 regular-file; "#size"), listing, removal
    assert get(rw, "/m/sub") == (200, b"")
    assert get(rw, "/m/sub") == ("exist", b"")
    assert get(rw, "/m/../sub") == ("not-permitted", b"")
    assert get(rw, "/w/sub/f.txt") == (201, b"/w/sub/f.txt")
    assert get(rw, "/s/sub/f.txt") == (306, b"#12\n")
    assert get(rw, "/s/sub")[0] == 303
    assert get(rw, "/s/out/secret.txt") == ("not-permitted", b"")
    assert get(rw, "/l/") == (200, b"abs\nnote.txt\nout\nsub\n")
    assert get(rw, "/x/sub") == ("not-empty", b"")
    assert get(rw, "/d/sub/f.txt") == (200, b"")
    assert get(rw, "/x/sub") == (200, b"")
    assert get(rw, "/d/out") == (200, b"") and outside.is_dir()  # the link goes, not what it points at
    assert get(rw, "/d/../outside/secret.txt") == ("not-permitted", b"")
    assert sorted(p.name for p in data.iterdir()) == ["abs", "note.txt"]
    # a read-only preopen reads and refuses writes
    ro = program(True)
    assert get(ro, "/r/note.txt") == (200, b"changed on the host\n")
    assert get(ro, "/w/note.txt") == ("read-only", b"")
    assert get(ro, "/m/new") == ("read-only", b"")
    assert get(ro, "/d/note.txt") == ("read-only", b"")
    assert (data / "note.txt").read_text() == "changed on the host\n"


def test_sockets_are_not_hosted_for_http_components(wasm_programs: WasmPrograms, tmp_path: Path) -> None:
    path = wasm_programs.http_sockets
    prog = load_program(path, digest_of_file(path), tmp_path / "compiled", fuel=False, where="net")
    assert isinstance(prog, P2Http)
    status, _, _, error = prog.call("GET", "/", "http", "x", [], b"")  # it links; the call traps, named
    assert status == 500 and "wasi:sockets/instance-network@0.2.0" in error and "instance-network" in error, error


def test_http_component_calls_every_plugin_interface(wasm_programs: WasmPrograms, tmp_path: Path) -> None:
    import sqlite3

    from zlayer.runtime.wasm.plugin import PluginContext

    logged: list[tuple[str, bytes]] = []
    ctx = PluginContext(
        config={"GREETING": "hi there"},
        kv_path=tmp_path / "kv" / "ns.sqlite",
        secrets={"token": "s3cret"},
        metrics_path=tmp_path / "metrics.json",
        log=lambda s, d: logged.append((s, d)),
    )
    path = wasm_programs.http_plugin
    digest = digest_of_file(path)
    prog = load_program(path, digest, tmp_path / "compiled", fuel=False, where="plug", plugin=ctx)
    assert isinstance(prog, P2Http)
    for n in (1, 2):  # config and secrets in the body, the key-value counter in the status
        status, _, body, error = prog.call("GET", f"/req{n}", "http", "x", [], b"")
        assert (status, body, error) == (200 + n, b"hi there|s3cret", "")
    assert logged == [("stderr", b"[info] /req1\n"), ("stderr", b"[info] /req2\n")]
    assert json.loads((tmp_path / "metrics.json").read_text())["counters"] == {"requests": 2}
    with sqlite3.connect(tmp_path / "kv" / "ns.sqlite") as db:
        assert db.execute("SELECT value FROM kv WHERE key = 'hits'").fetchone() == (b"2",)
    # a capability the spec withholds is refused when it links, by name
    ctx.allowed = ("config", "logging", "metrics", "keyvalue")
    with pytest.raises(RuntimeFailure, match=r"plug: cannot link: imports zlayer:plugin/secrets"):
        load_program(path, digest, tmp_path / "compiled", fuel=False, where="plug", plugin=ctx)


async def _serve_files(root: Path, component: Path) -> None:
    rt = _runtime(root, component, "test/fs:v1")
    data = root / "data"
    data.mkdir()
    spec = ServiceSpec.model_validate(
        {
            "image": {"name": "test/fs:v1"},
            "endpoints": [{"name": "http", "protocol": "http", "port": 80, "target_port": 18182}],
            "wasm": {"preopens": [{"source": str(data), "target": "/data"}]},
        }
    )
    cid = ContainerId("files", 0)
    try:
        await rt.create(cid, spec)
        await rt.start(cid)
        ip = (await rt.state(cid)).ip
        assert await asyncio.to_thread(_get, ip, 18182, "/w/hello.txt") == (201, b"/w/hello.txt")
        assert (data / "hello.txt").read_text() == "/w/hello.txt"
        assert await asyncio.to_thread(_get, ip, 18182, "/r/hello.txt") == (200, b"/w/hello.txt")
    finally:
        await rt.remove(cid, force=True)


@pytest.mark.slow
def test_a_replica_serves_files_of_the_spec_preopens(wasm_programs: WasmPrograms, tmp_path: Path) -> None:
    asyncio.run(_serve_files(tmp_path, wasm_programs.http_fs))
