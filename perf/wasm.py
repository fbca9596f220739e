"""WASM starts: instantiate-and-run of a precompiled trivial WASIp1 module (its ``_start`` returns at once), median;
target <= 1 ms (ZLayer claims 1-5 ms cold starts). The module is built from WAT here (wabt), compiled once into the
digest cache, deserialized and linked against WASI once; each run is a fresh store and instance, as a replica's run
is. Also measured: the same with the pooling allocator, a cache hit (deserialize + link), a compile, and a whole WASM
replica through the driver (create + worker process start + run + exit), against a busybox container's
create + start + wait of /bin/true through the Linux runtime when run as root.

HTTP (as root: a daemon of its own on a temporary data dir, ``ZLAYER_NODE_NETWORK`` as set, default on): the
``wasi:http/incoming-handler`` component of tests/fixtures/wasm.py (it answers ``hello from wasm PATH #N``), exported
into the daemon's store as a WASM artifact, deployed as one ``wasm_http`` replica behind the proxy, and the same
handler as a busybox container (``httpd`` running a CGI shell script that prints the same line) behind the same proxy.
``deploy_to_first_response_ms``: from the deploy request to the first 200 through the proxy (the compiled component
already in the digest cache, as after a first deploy). ``rps``: wrk (1 thread, 8 keep-alive connections, on core 0)
through the proxy with the replica's worker process pinned to core 1; ``rps_vs_container``: rps over the container's,
its httpd (and its CGI children) pinned to core 1 alike, the median of three alternating runs each. Without root
these three are null with the reason. Prints one JSON object on its last line.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RUNS = int(os.environ.get("RUNS", "2000"))
REPLICA_RUNS = int(os.environ.get("REPLICA_RUNS", "20"))
TRIVIAL_WAT = '(module (memory (export "memory") 1) (func (export "_start")))'


def median_ms(fn: Any, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 4)


async def replica_ms(root: Path, module: Path, runs: int) -> float:
    from zlayer.images import ImageStore
    from zlayer.runtime import ContainerId
    from zlayer.runtime.wasm.artifact import export_artifact
    from zlayer.runtime.wasm.driver import WasmRuntime
    from zlayer.spec.models import ServiceSpec

    store = ImageStore(root / "images")
    export_artifact(store, module, "perf/trivial:v1")

    class Images:
        async def pull(self, image: str, policy: str = "if_not_present") -> None:
            return None

        async def wasm_artifact(self, image: str) -> tuple[Path, str]:
            local = store.get(image)
            desc = local.manifest["layers"][0]
            path = local.wasm_layer_path(desc)
            assert path is not None
            return path, str(desc["digest"])

    rt = WasmRuntime(root, Images())
    rt.early_exit_window = 0.0
    spec = ServiceSpec.model_validate({"image": {"name": "perf/trivial:v1"}})
    times = []
    for i in range(runs):
        cid = ContainerId("perf", i)
        t = time.perf_counter()
        await rt.create(cid, spec)
        await rt.start(cid)  # early_exit_window 0: an exit at once is this module's whole job, not a failure
        st = await rt.wait(cid)
        times.append((time.perf_counter() - t) * 1000)
        assert st.exit_code == 0, st
        await rt.remove(cid)
    return round(statistics.median(times), 2)


CGI = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\nhello from wasm %s #1\\n' \"$REQUEST_URI\"\n"
HTTPD = "exec /bin/busybox httpd -f -p 8080 -h /www"
HTTP_SECONDS = int(os.environ.get("HTTP_SECONDS", "5"))


def sh(*argv: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, env=env)
    if check and r.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])} failed ({r.returncode}): {r.stderr.strip()[-800:]}")
    return r


def busybox_cgi_image(work: Path) -> Path:
    """An OCI layout tar with /bin/busybox and the CGI script /www/cgi-bin/h, built offline with umoci."""
    oci, bundle = work / "oci", work / "bundle"
    sh("umoci", "init", "--layout", str(oci))
    sh("umoci", "new", "--image", f"{oci}:latest")
    sh("umoci", "unpack", "--rootless", "--image", f"{oci}:latest", str(bundle))
    root = bundle / "rootfs"
    (root / "bin").mkdir(parents=True, exist_ok=True)
    (root / "www/cgi-bin").mkdir(parents=True, exist_ok=True)
    (root / "bin/busybox").write_bytes(Path("/bin/busybox").read_bytes())
    (root / "bin/busybox").chmod(0o755)
    (root / "bin/sh").symlink_to("busybox")
    (root / "www/cgi-bin/h").write_text(CGI)
    (root / "www/cgi-bin/h").chmod(0o755)
    sh("umoci", "repack", "--image", f"{oci}:latest", str(bundle))
    tar = work / "image.tar"
    sh("tar", "-C", str(oci), "-cf", str(tar), "oci-layout", "index.json", "blobs")
    return tar


def wrk_rps(port: int) -> float:
    r = sh("taskset", "-c", "0", "wrk", "-t1", "-c8", f"-d{HTTP_SECONDS}s", f"http://127.0.0.1:{port}/cgi-bin/h")
    if "Non-2xx" in r.stdout or "Socket errors" in r.stdout:
        raise SystemExit(f"wrk saw errors through port {port}:\n{r.stdout}")
    return float(r.stdout.split("Requests/sec:")[1].split()[0])


def first_200(port: int, since: float, timeout: float = 120.0) -> float:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/first", timeout=2) as r:
                if r.status == 200 and r.read().startswith(b"hello from wasm /first"):
                    return (time.perf_counter() - since) * 1000
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.002)
    raise SystemExit(f"no 200 through port {port} after {timeout:g}s")


def http_numbers() -> dict[str, Any]:
    from perf.autoscale import Daemon
    from perf.benchlib import free_port
    from tests.fixtures.wasm import HTTP_HANDLER_WAT, build_component_wat

    with tempfile.TemporaryDirectory(prefix="zlayer-perf-wasmhttp-") as tmp:
        work = Path(tmp)
        data = work / "data"
        env = {**os.environ, "ZLAYER_NODE_NETWORK": os.environ.get("ZLAYER_NODE_NETWORK", "on")}
        d = Daemon(data, env)
        handler = build_component_wat(HTTP_HANDLER_WAT, work / "handler.wasm")
        sh(*d.zl, "wasm", "export", str(handler), "--name", "zlayer-perf/wasmhttp:v1", env=env)
        sh(*d.zl, "import", str(busybox_cgi_image(work)), "-t", "zlayer-perf/cgi:v1", env=env)
        wport, cport = free_port(), free_port()

        def svc(name: str, port: int, body: str) -> str:
            return (
                f"  {name}:\n{body}    endpoints: [{{name: http, protocol: http, port: {port}, target_port: 8080,"
                " expose: public}]\n    scale: {mode: fixed, replicas: 1}\n    stop_grace_period: 1s\n"
            )

        wasm_svc = svc("web", wport, "    service_type: wasm_http\n    image: {name: zlayer-perf/wasmhttp:v1}\n")
        cgi_svc = svc(
            "web",
            cport,
            f"    image: {{name: zlayer-perf/cgi:v1, pull_policy: never}}\n"
            f"    command: {{entrypoint: [/bin/sh, -c], args: [{json.dumps(HTTPD)}]}}\n"
            "    health: {start_grace: 0s, interval: 1s, timeout: 1s, retries: 3, check: {type: tcp, port: 8080}}\n",
        )
        out: dict[str, Any] = {}
        try:
            d.start(10.0)
            # a first deploy compiles the component into the digest cache; the measured one finds it there
            d.api("POST", "/api/v1/deployments", {"spec": "version: v1\ndeployment: warm\nservices:\n" + wasm_svc})
            d.wait_running("warm")
            first_200(wport, time.perf_counter())
            d.api("DELETE", "/api/v1/deployments/warm")
            time.sleep(1.0)
            t = time.perf_counter()
            d.api("POST", "/api/v1/deployments", {"spec": "version: v1\ndeployment: wasmweb\nservices:\n" + wasm_svc})
            out["deploy_to_first_response_ms"] = round(first_200(wport, t), 1)
            d.api("POST", "/api/v1/deployments", {"spec": "version: v1\ndeployment: cgiweb\nservices:\n" + cgi_svc})
            d.wait_running("wasmweb")
            d.wait_running("cgiweb")
            for dep in ("wasmweb", "cgiweb"):
                for c in d.api("GET", f"/api/v1/deployments/{dep}/services/web/containers"):
                    sh("taskset", "-a", "-p", "-c", "1", str(c["pid"]))  # the worker; httpd (and its CGI children)
            wasm_runs, cgi_runs = [], []
            for _ in range(3):
                wasm_runs.append(wrk_rps(wport))
                cgi_runs.append(wrk_rps(cport))
            out["rps"] = round(statistics.median(wasm_runs), 1)
            out["rps_container"] = round(statistics.median(cgi_runs), 1)
            out["rps_vs_container"] = round(out["rps"] / out["rps_container"], 3)
        finally:
            if d.pid:
                for dep in ("warm", "wasmweb", "cgiweb"):
                    sh(*d.zl, "down", dep, env=env, check=False)
                d.stop()
            teardown = "import asyncio,sys; from pathlib import Path; from zlayer.net import NodeNetwork\n" \
                       "asyncio.run(NodeNetwork(Path(sys.argv[1])).teardown())"  # fmt: skip
            sh(sys.executable, "-c", teardown, str(data), check=False)
        return out


def main() -> None:
    import wasmtime

    from zlayer.runtime.wasm.engine import CompileCache, P1Program, digest_of_file, make_engine

    out: dict[str, Any] = {"runs": RUNS}
    with tempfile.TemporaryDirectory(prefix="zlayer-perf-wasm-") as tmp:
        root = Path(tmp)
        src, module = root / "trivial.wat", root / "trivial.wasm"
        src.write_text(TRIVIAL_WAT)
        subprocess.run(["wat2wasm", str(src), "-o", str(module)], check=True)
        digest = digest_of_file(module)
        cache = CompileCache(root / "compiled")
        engine = make_engine()
        out["compile_ms"] = median_ms(lambda: wasmtime.Module.from_file(engine, str(module)), 50)
        cache.module(engine, module, digest, fuel=False)  # fills the cache
        out["cache_hit_link_ms"] = median_ms(
            lambda: P1Program(engine, cache.module(engine, module, digest, fuel=False)), 200
        )
        prog = P1Program(engine, cache.module(engine, module, digest, fuel=False))
        out["cold_start_ms"] = median_ms(lambda: prog.run(argv=["trivial"]), RUNS)
        pooled_engine = make_engine(pooling=True)
        pooled = P1Program(pooled_engine, wasmtime.Module.from_file(pooled_engine, str(module)))
        out["cold_start_pooled_ms"] = median_ms(lambda: pooled.run(argv=["trivial"]), RUNS)
        out["replica_start_to_exit_ms"] = asyncio.run(replica_ms(root / "node", module, REPLICA_RUNS))
    out["target_cold_start_ms"] = 1.0
    if os.geteuid() != 0:
        why = "needs root (a daemon with its proxy and a busybox container)"
        out["rps"] = out["rps_vs_container"] = out["deploy_to_first_response_ms"] = None
        out["not_measured"] = {"rps": why, "rps_vs_container": why, "deploy_to_first_response_ms": why}
    else:
        out.update(http_numbers())
    print(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)  # wasmtime's runtime threads must not run destructors at interpreter exit


if __name__ == "__main__":
    main()
