"""The WASM engine on programs built from source (tests/fixtures/wasm.py): modules and components told apart by
header, compiled once and loaded from the digest cache after, WASIp1 runs ending in the guest's exit code or in a
clear reason (deadline, fuel, trap, memory limit), a missing import refused by name, and the driver picked by the
image's kind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.wasm import WasmPrograms
from zlayer.errors import ImageError, RuntimeFailure
from zlayer.runtime import Drivers
from zlayer.runtime.wasm.artifact import artifact_manifest
from zlayer.runtime.wasm.binary import inspect_wasm, kind_of
from zlayer.runtime.wasm.engine import (
    EXIT_DEADLINE,
    EXIT_TRAP,
    CompileCache,
    EpochTicker,
    Limits,
    P1Program,
    P2Command,
    P2Http,
    digest_of_file,
    load_program,
    make_engine,
)
from zlayer.runtime.wasm.plugin import PluginContext
from zlayer.spec.models import ServiceSpec


def program(cache: CompileCache, path: Path, *, fuel: bool = False) -> P1Program:
    engine = make_engine(fuel=fuel)
    return P1Program(engine, cache.module(engine, path, digest_of_file(path), fuel=fuel), where=path.name)


def test_header_tells_module_from_component_and_refuses_the_rest() -> None:
    assert kind_of(b"\0asm\x01\0\0\0") == "module"
    assert kind_of(b"\0asm\x0d\0\x01\0") == "component"
    with pytest.raises(ImageError, match=r"x.wasm: truncated: 3 bytes"):
        kind_of(b"\0as", "x.wasm")
    with pytest.raises(ImageError, match=r"not a WASM binary \(magic 7f454c46"):
        kind_of(b"\x7fELF\x02\x01\x01\0", "x.wasm")


def test_cache_compiles_once_then_loads(wasm_programs: WasmPrograms, tmp_path: Path) -> None:
    cache = CompileCache(tmp_path / "compiled")
    program(cache, wasm_programs.hello)
    (cached,) = cache.root.iterdir()
    assert cached.name.startswith(digest_of_file(wasm_programs.hello)[7:]) and cached.stat().st_mode & 0o077 == 0
    before = cached.stat().st_mtime_ns
    cached_prog = program(cache, wasm_programs.hello)  # deserialized, not compiled again
    assert cached.stat().st_mtime_ns == before
    out: list[tuple[str, bytes]] = []
    res = cached_prog.run(argv=["hello", "3"], env=[("GREETING", "g")], output=lambda s, d: out.append((s, d)))
    assert res.exit_code == 3 and res.reason == "exited"
    text = b"".join(d for s, d in out if s == "stdout").decode()
    assert "hello from wasm: 3" in text and "greeting=g" in text
    assert b"".join(d for s, d in out if s == "stderr") == b"to stderr\n"
    cached.write_bytes(b"torn")  # a damaged cache entry is compiled again, not trusted
    assert program(cache, wasm_programs.hello).run(argv=["hello", "0"]).exit_code == 0


def test_limits_and_bad_programs_end_with_a_reason(wasm_programs: WasmPrograms, tmp_path: Path) -> None:
    cache = CompileCache(tmp_path / "compiled")
    spin = program(cache, wasm_programs.spin)
    ticker = EpochTicker(spin.engine)
    try:
        res = spin.run(argv=["spin"], limits=Limits(deadline_s=0.1), ticking=True)
    finally:
        ticker.close()
    assert (res.exit_code, res.reason) == (EXIT_DEADLINE, "deadline: ran past its 0.1 s limit")
    res = program(cache, wasm_programs.spin, fuel=True).run(argv=["spin"], limits=Limits(fuel=1_000_000))
    assert (res.exit_code, res.reason) == (EXIT_TRAP, "fuel: used all 1000000 units")
    out: list[bytes] = []
    res = program(cache, wasm_programs.grab).run(
        argv=["grab"], limits=Limits(memory_bytes=2 << 20), output=lambda s, d: out.append(d)
    )
    assert res.exit_code == 0 and b"".join(out) == b"pages=32\n"  # 2 MiB of 64 KiB pages, no more
    res = program(cache, wasm_programs.trap).run(argv=["trap"])
    assert (res.exit_code, res.reason) == (EXIT_TRAP, "trap: unreachable")
    with pytest.raises(RuntimeFailure, match=r"env::zlayer_no_such_function.*which this host does not provide"):
        program(cache, wasm_programs.missing_import)
    truncated = tmp_path / "truncated.wasm"
    truncated.write_bytes(wasm_programs.hello.read_bytes()[:1000])
    with pytest.raises(ImageError, match=r"truncated.wasm: invalid WASM module: .*end-of-file"):
        program(cache, truncated)


def test_info_and_artifact_layout(wasm_programs: WasmPrograms) -> None:
    info = inspect_wasm(wasm_programs.hello)
    assert (info.kind, info.wasi, info.world) == ("module", "preview1", "wasi:cli/command")
    assert "wasi_snapshot_preview1.fd_write" in info.imports and "_start" in info.exports
    manifest, cfg, layer = artifact_manifest(wasm_programs.hello)
    assert manifest["artifactType"] == "application/vnd.wasm.module.v1+wasm"
    assert manifest["config"]["mediaType"] == "application/vnd.wasm.config.v0+json"
    assert [d["mediaType"] for d in manifest["layers"]] == ["application/wasm"]
    assert json.loads(cfg)["os"] == "wasip1" and layer == wasm_programs.hello.read_bytes()


def test_drivers_pick_by_service_type_image_kind_or_force() -> None:
    linux: Any = object()
    wasm: Any = object()
    kinds = {"reg/mod:v1": "wasm", "busybox:1": "linux"}
    drivers = Drivers({"linux": linux, "wasm": wasm}, image_kind=kinds.get)

    def spec(image: str, **kw: Any) -> ServiceSpec:
        return ServiceSpec.model_validate({"image": {"name": image}, **kw})

    assert drivers.for_service(spec("reg/mod:v1")) is wasm
    assert drivers.for_service(spec("busybox:1")) is linux
    assert drivers.for_service(spec("busybox:1", service_type="wasm_plugin")) is wasm
    assert not drivers.decided(spec("not/pulled:yet")) and drivers.decided(spec("busybox:1"))
    forced = Drivers({"linux": linux, "wasm": wasm}, image_kind=kinds.get, force="wasm")
    assert forced.for_service(spec("busybox:1")) is wasm and forced.decided(spec("not/pulled:yet"))
    assert drivers.name_of(wasm) == "wasm"


def test_cli_run_components_and_worlds_not_served(wasm_programs: WasmPrograms, tmp_path: Path) -> None:
    cache = tmp_path / "compiled"

    def load(path: Path) -> P1Program | P2Command | P2Http:
        return load_program(path, digest_of_file(path), cache, fuel=False, where=path.name)

    ok = load(wasm_programs.run_ok)
    assert isinstance(ok, P2Command) and inspect_wasm(wasm_programs.run_ok).world == "wasi:cli/command"
    assert ok.run(argv=["run"]).exit_code == 0
    assert load(wasm_programs.run_ok).run(argv=["run"]).exit_code == 0  # from the cache this time
    assert load(wasm_programs.run_err).run(argv=["run"]).exit_code == 1
    spin = load(wasm_programs.run_spin)
    ticker = EpochTicker(spin.engine)
    try:
        res = spin.run(argv=["spin"], limits=Limits(deadline_s=0.1), ticking=True)
    finally:
        ticker.close()
    assert (res.exit_code, res.reason) == (EXIT_DEADLINE, "deadline: ran past its 0.1 s limit")
    with pytest.raises(RuntimeFailure, match=r"exports no wasi:cli/run \(world not served; it exports zlayer:test"):
        load(wasm_programs.other_world)


@pytest.mark.slow
def test_python_component_with_every_plugin_interface(wasm_python_component: Path, tmp_path: Path) -> None:
    # componentize-py's component is CPython itself (about 18 MB): compiled once here, from the cache after
    out: list[tuple[str, bytes]] = []
    ctx = PluginContext(
        config={"GREETING": "p2", "COUNT": "42", "FLAG": "yes", "APP_A": "1"},
        kv_path=tmp_path / "kv" / "ns.sqlite",
        kv_max_value_size=1024,
        secrets={"db": None},
        metrics_path=tmp_path / "metrics.json",
        log=lambda s, d: out.append((s, d)),
    )
    digest = digest_of_file(wasm_python_component)
    prog = load_program(wasm_python_component, digest, tmp_path / "c", fuel=False, where="py", plugin=ctx)
    res = prog.run(argv=["py", "a", "b"], env=[("GREETING", "p2")], output=lambda s, d: out.append((s, d)))
    assert res.exit_code == 0, (res, out)
    stdout = b"".join(d for s, d in out if s == "stdout").decode().splitlines()
    assert stdout[0] == "python component: a b p2"
    assert stdout[1].startswith("config p2 None 42 True [('APP_A', '1')] ('err', 'Error(code=")
    assert "not-found" in stdout[1] and "config key \\'NOPE\\' is not set" in stdout[1], stdout[1]
    # increment, compare-and-swap (first wins, second sees the value), a TTL gone at once, the size cap
    assert stdout[2] == (
        "kv ('ok', 1) ('ok', True) ('ok', False) ('ok', 'me') ('ok', None) False "
        "('err', 'KvError_ValueTooLarge()') ('ok', ['owner', 'runs'])"
    )
    assert stdout[3] == "secrets ['db'] ('ok', None)"
    stderr = b"".join(d for s, d in out if s == "stderr").decode().splitlines()
    assert stderr == ["to stderr", "[info] hello from the plugin", "[warn] structured"]
    assert json.loads((tmp_path / "metrics.json").read_text())["counters"] == {"requests": 3}
    # the key-value store is shared and lasts: a second run (another replica, later) sees the first's writes
    out.clear()
    assert prog.run(argv=["py"], output=lambda s, d: out.append((s, d))).exit_code == 0
    assert b"kv ('ok', 2) ('ok', False)" in b"".join(d for s, d in out)
    # a capability the spec withholds is an import the host does not define: named when it links
    ctx.allowed = ("config", "logging", "metrics")
    prog = load_program(wasm_python_component, digest, tmp_path / "c", fuel=False, where="py", plugin=ctx)
    with pytest.raises(RuntimeFailure, match=r"py: cannot link: .*zlayer:plugin/keyvalue@0.1.0"):
        prog.run(argv=["py"])
