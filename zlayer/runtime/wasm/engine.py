"""wasmtime for zlayer: one engine configuration, compiled artifacts cached on disk by content digest, and a WASIp1
program (a module pre-linked against WASI once) run to its exit code under the spec's limits.

- **Cache**: ``<cache>/<digest hex>.<engine tag>.cwasm`` is ``Module.serialize()`` of the module compiled by an engine
  of this configuration and wasmtime version (the tag); a later run deserializes it (no compile). The
  directory is private to root and files are written atomically: wasmtime trusts what it deserializes.
- **Pre-linking**: :class:`P1Program` resolves the module's imports against WASI once (``Linker.instantiate_pre``);
  an import the host does not provide is refused there, by name. Each run is a fresh store and instance.
- **Limits**: ``memory_bytes`` caps linear memory (``memory.grow`` fails past it, instantiation fails when the module
  asks for more from the start); ``fuel`` counts instructions when the engine consumes fuel; ``deadline_s`` is an epoch
  deadline, ticked every :data:`EPOCH_TICK` seconds by a thread of the process running the guest.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime

from zlayer.errors import ImageError, RuntimeFailure
from zlayer.paths import private_dir

EPOCH_TICK = 0.01  # seconds per epoch tick
NO_DEADLINE = 1 << 62
EXIT_TRAP = 134  # a guest trap ends the run as an abort would (wasmtime's CLI says the same)
EXIT_DEADLINE = 124  # ran past its time limit (as timeout(1) reports it)


@dataclass(frozen=True)
class Limits:
    memory_bytes: int | None = None
    fuel: int = 0
    deadline_s: float | None = None


@dataclass(frozen=True)
class RunResult:
    """How a run ended: ``exit_code`` (the guest's ``proc_exit``/``main`` return, :data:`EXIT_TRAP` for a trap or
    fuel exhausted, :data:`EXIT_DEADLINE` past the deadline) and ``reason`` (``exited`` or what stopped it)."""

    exit_code: int
    reason: str = "exited"


def wasmtime_version() -> str:
    from importlib.metadata import version

    try:
        return version("wasmtime")
    except Exception:  # an odd install: the tag still separates configurations
        return "unknown"


def make_engine(*, fuel: bool = False, component: bool = False, pooling: bool = False) -> wasmtime.Engine:
    """The engine every zlayer WASM run uses: epoch interruption always (the deadline and stop), fuel when the spec
    sets ``max_fuel``, the component model for WASIp2, the pooling allocator for many short-lived instances."""
    cfg = wasmtime.Config()
    cfg.epoch_interruption = True
    cfg.consume_fuel = fuel
    cfg.wasm_component_model = component
    cfg.cranelift_opt_level = "speed"
    if pooling:
        from wasmtime import _ffi as ffi

        pool = ffi.wasmtime_pooling_allocation_config_new()
        try:
            ffi.wasmtime_pooling_allocation_config_total_memories_set(pool, 64)
            ffi.wasmtime_pooling_allocation_config_total_core_instances_set(pool, 64)
            ffi.wasmtime_pooling_allocation_config_total_tables_set(pool, 64)
            ffi.wasmtime_pooling_allocation_config_total_stacks_set(pool, 64)
            ffi.wasmtime_pooling_allocation_strategy_set(cfg.ptr(), pool)
        finally:
            ffi.wasmtime_pooling_allocation_config_delete(pool)
    return wasmtime.Engine(cfg)


def engine_tag(*, fuel: bool, component: bool) -> str:
    text = f"wasmtime {wasmtime_version()} epoch fuel={fuel} component={component} speed"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def digest_of_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class CompileCache:
    """Compiled modules on disk by content digest (see the module doc)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        private_dir(root)

    def path(self, digest: str, *, fuel: bool, component: bool = False) -> Path:
        algo, _, hex_ = digest.partition(":")
        if algo != "sha256" or len(hex_) != 64 or not all(c in "0123456789abcdef" for c in hex_):
            raise ImageError(f"malformed digest {digest!r}")
        return self.root / f"{hex_}.{engine_tag(fuel=fuel, component=component)}.cwasm"

    def module(self, engine: wasmtime.Engine, source: Path, digest: str, *, fuel: bool) -> wasmtime.Module:
        """The compiled module of ``source`` (whose content digest is ``digest``): from the cache when there, else
        compiled and stored. A corrupt or truncated binary is an ImageError naming the file and where it broke."""
        cached = self.path(digest, fuel=fuel)
        try:
            # read, not deserialize_file: a mapped file truncated under us would end this process with SIGBUS
            return wasmtime.Module.deserialize(engine, cached.read_bytes())
        except FileNotFoundError:
            pass
        except wasmtime.WasmtimeError:
            cached.unlink(missing_ok=True)  # another wasmtime build's or a torn file: compile again
        try:
            module = wasmtime.Module.from_file(engine, str(source))
        except wasmtime.WasmtimeError as e:
            raise ImageError(f"{source}: invalid WASM module: {_short(e)}", where=digest) from None
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            data = module.serialize()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, cached)
        return module


def _short(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    return "; ".join(lines[:3]) if lines else type(e).__name__


class EpochTicker:
    """Advances the engine's epoch every :data:`EPOCH_TICK` seconds while a guest runs with a deadline."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self.engine = engine
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wasm-epoch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(EPOCH_TICK):
            self.engine.increment_epoch()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class P1Program:
    """A WASIp1 command module linked against WASI once; :meth:`run` instantiates and runs ``_start``."""

    def __init__(self, engine: wasmtime.Engine, module: wasmtime.Module, *, where: str = "") -> None:
        self.engine = engine
        self.module = module
        exports = {e.name for e in module.exports}
        if "_start" not in exports:
            raise RuntimeFailure(
                f"{where or 'module'}: exports no _start (a WASIp1 command must; it exports "
                f"{', '.join(sorted(exports)) or 'nothing'})"
            )
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        try:
            self.pre = linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as e:
            missing = [f"{i.module}.{i.name}" for i in module.imports if i.module != "wasi_snapshot_preview1"]
            hint = f" (it imports {', '.join(missing)}, which this host does not provide)" if missing else ""
            raise RuntimeFailure(f"{where or 'module'}: cannot link: {_short(e)}{hint}") from None

    def run(
        self,
        *,
        argv: Sequence[str],
        env: Iterable[tuple[str, str]] = (),
        preopens: Iterable[tuple[str, str, bool]] = (),
        output: Callable[[str, bytes], None] | None = None,
        limits: Limits = Limits(),
        ticking: bool = False,
    ) -> RunResult:
        """One fresh instance run to its end. ``preopens``: ``(host dir, guest dir, readonly)``; ``output``: called
        with ``("stdout"|"stderr", bytes)``; ``ticking``: an :class:`EpochTicker` runs for this engine (needed for
        ``limits.deadline_s``)."""
        store = wasmtime.Store(self.engine)
        wasi = wasmtime.WasiConfig()
        wasi.argv = list(argv)
        wasi.env = list(env)
        for host, guest, ro in preopens:
            wasi.preopen_dir(host, guest, fs_mutable=not ro)
        if output is not None:
            emit = output
            wasi.stdout_custom = lambda data: emit("stdout", data)
            wasi.stderr_custom = lambda data: emit("stderr", data)
        store.set_wasi(wasi)
        if limits.memory_bytes is not None:
            store.set_limits(memory_size=limits.memory_bytes)
        if limits.fuel:
            store.set_fuel(limits.fuel)
        if limits.deadline_s is not None and ticking:
            store.set_epoch_deadline(max(1, math.ceil(limits.deadline_s / EPOCH_TICK)))
        else:
            store.set_epoch_deadline(NO_DEADLINE)
        try:
            instance = self.pre.instantiate(store)
            start = instance.exports(store)["_start"]
            assert isinstance(start, wasmtime.Func)
            start(store)
        except wasmtime.ExitTrap as e:
            return RunResult(e.code)
        except wasmtime.Trap as e:
            return self._trapped(e, limits)
        except wasmtime.WasmtimeError as e:
            text = _short(e)
            if "memory" in text and limits.memory_bytes is not None:
                return RunResult(EXIT_TRAP, f"memory: the module needs more than the {limits.memory_bytes} byte limit")
            return RunResult(EXIT_TRAP, f"instantiate: {text}")
        return RunResult(0)

    @staticmethod
    def _trapped(e: wasmtime.Trap, limits: Limits) -> RunResult:
        code = e.trap_code
        if code == wasmtime.TrapCode.INTERRUPT:
            return RunResult(EXIT_DEADLINE, f"deadline: ran past its {limits.deadline_s:g} s limit")
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            return RunResult(EXIT_TRAP, f"fuel: used all {limits.fuel} units")
        what = code.name.lower().replace("_", " ") if code is not None else _short(e)
        return RunResult(EXIT_TRAP, f"trap: {what}")


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


__all__ = [
    "EPOCH_TICK",
    "EXIT_DEADLINE",
    "EXIT_TRAP",
    "CompileCache",
    "EpochTicker",
    "Limits",
    "P1Program",
    "RunResult",
    "digest_of_file",
    "engine_tag",
    "make_engine",
]
