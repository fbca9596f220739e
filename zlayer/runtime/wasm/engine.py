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
from typing import TYPE_CHECKING, Any

import wasmtime

from zlayer.errors import ImageError, RuntimeFailure
from zlayer.paths import private_dir

if TYPE_CHECKING:
    from zlayer.runtime.wasm.plugin import PluginContext
    from zlayer.runtime.wasm.wasihttp import Guest

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
        got = self._load(wasmtime.Module, engine, source, digest, fuel=fuel, component=False)
        assert isinstance(got, wasmtime.Module)
        return got

    def component(self, engine: wasmtime.Engine, source: Path, digest: str, *, fuel: bool) -> Any:
        """The compiled component of ``source``, as :meth:`module` (the engine has the component model on)."""
        from wasmtime import component

        return self._load(component.Component, engine, source, digest, fuel=fuel, component=True)

    def _load(
        self, kind: Any, engine: wasmtime.Engine, source: Path, digest: str, *, fuel: bool, component: bool
    ) -> Any:
        cached = self.path(digest, fuel=fuel, component=component)
        try:
            # read, not deserialize_file: a mapped file truncated under us would end this process with SIGBUS
            return kind.deserialize(engine, cached.read_bytes())
        except FileNotFoundError:
            pass
        except wasmtime.WasmtimeError:
            cached.unlink(missing_ok=True)  # another wasmtime build's or a torn file: compile again
        what = "component" if component else "module"
        try:
            compiled = kind.from_file(engine, str(source))
        except wasmtime.WasmtimeError as e:
            raise ImageError(f"{source}: invalid WASM {what}: {_short(e)}", where=digest) from None
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            data = compiled.serialize()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, cached)
        return compiled


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
        store = _store(self.engine, argv, env, preopens, output, limits, ticking)
        try:
            instance = self.pre.instantiate(store)
            start = instance.exports(store)["_start"]
            assert isinstance(start, wasmtime.Func)
            start(store)
        except wasmtime.ExitTrap as e:
            return RunResult(e.code)
        except wasmtime.Trap as e:
            return _trapped(e, limits)
        except wasmtime.WasmtimeError as e:
            return _failed(e, limits)
        return RunResult(0)


def _store(
    engine: wasmtime.Engine,
    argv: Sequence[str],
    env: Iterable[tuple[str, str]],
    preopens: Iterable[tuple[str, str, bool]],
    output: Callable[[str, bytes], None] | None,
    limits: Limits,
    ticking: bool,
) -> wasmtime.Store:
    """A store with WASI set up (argv, env, preopens, output) and the run's limits."""
    store = wasmtime.Store(engine)
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
    return store


def _trapped(e: wasmtime.Trap, limits: Limits) -> RunResult:
    code = e.trap_code
    if code == wasmtime.TrapCode.INTERRUPT:
        return RunResult(EXIT_DEADLINE, f"deadline: ran past its {limits.deadline_s:g} s limit")
    if code == wasmtime.TrapCode.OUT_OF_FUEL:
        return RunResult(EXIT_TRAP, f"fuel: used all {limits.fuel} units")
    what = code.name.lower().replace("_", " ") if code is not None else _short(e)
    return RunResult(EXIT_TRAP, f"trap: {what}")


def _failed(e: wasmtime.WasmtimeError, limits: Limits) -> RunResult:
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    cause = lines[-1] if lines else type(e).__name__  # a component's trap: "... Caused by: wasm trap: interrupt"
    if cause.startswith("wasm trap: "):
        what = cause.removeprefix("wasm trap: ")
        if what == "interrupt":
            return RunResult(EXIT_DEADLINE, f"deadline: ran past its {limits.deadline_s:g} s limit")
        if "fuel" in what:
            return RunResult(EXIT_TRAP, f"fuel: used all {limits.fuel} units")
        return RunResult(EXIT_TRAP, f"trap: {what.removeprefix('wasm ').removesuffix(' instruction executed')}")
    text = _short(e)
    if "exit status" in text:  # a component's wasi:cli/exit: "Exited with i32 exit status N"
        digits = "".join(ch for ch in text.rsplit("status", 1)[1] if ch.isdigit())
        if digits:
            return RunResult(int(digits))
    if "interrupt" in text:
        return RunResult(EXIT_DEADLINE, f"deadline: ran past its {limits.deadline_s:g} s limit")
    if "fuel" in text:
        return RunResult(EXIT_TRAP, f"fuel: used all {limits.fuel} units")
    if "memory" in text and limits.memory_bytes is not None:
        return RunResult(EXIT_TRAP, f"memory: the program needs more than the {limits.memory_bytes} byte limit")
    if "Caused by:" in str(e):  # the backtrace first, what went wrong last (a realloc past its memory, ...)
        return RunResult(EXIT_TRAP, f"trap: {cause}")
    return RunResult(EXIT_TRAP, f"trap: {text}")


class P2Command:
    """A WASIp2 component exporting ``wasi:cli/run``: linked against wasmtime's WASIp2 once, each :meth:`run` a
    fresh store and instance calling ``run`` (``ok`` is exit 0, ``err`` exit 1, ``wasi:cli/exit`` its code).
    A component of another world is refused naming what it exports (``wasi:http/incoming-handler`` components are
    :class:`P2Http`'s)."""

    def __init__(
        self, engine: wasmtime.Engine, comp: Any, *, where: str = "", plugin: PluginContext | None = None
    ) -> None:
        from wasmtime import component

        from zlayer.runtime.wasm import plugin as plugins

        self.engine = engine
        self.component = comp
        exports = sorted(comp.type.exports(engine))
        at = where or "component"
        run = next((e for e in exports if e.split("@")[0] == "wasi:cli/run"), None)
        if run is None:
            raise RuntimeFailure(
                f"{at}: exports no wasi:cli/run (world not served; it exports {', '.join(exports) or 'nothing'})"
            )
        self.linker = component.Linker(engine)
        self.linker.add_wasip2()
        wanted = plugins.imported(sorted(comp.type.imports(engine)))
        if wanted and plugin is not None:
            # only what the spec's capabilities allow: an interface left out is a missing import, named at link
            plugins.define(self.linker, plugin, [w for w in wanted if w in plugin.allowed])
        self.run_index = comp.get_export_index("run", comp.get_export_index(run))
        if self.run_index is None:
            raise RuntimeFailure(f"{at}: {run} has no run function")
        self.where = at

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
        store = _store(self.engine, argv, env, preopens, output, limits, ticking)
        try:
            instance = self.linker.instantiate(store, self.component)
        except wasmtime.WasmtimeError as e:
            text = _short(e)
            if "import" in text:
                raise RuntimeFailure(f"{self.where}: cannot link: {text}") from None
            return _failed(e, limits)
        func = instance.get_func(store, self.run_index)
        if func is None:
            raise RuntimeFailure(f"{self.where}: wasi:cli/run has no run function")
        try:
            result = func(store)
        except wasmtime.Trap as e:
            return _trapped(e, limits)
        except wasmtime.WasmtimeError as e:
            return _failed(e, limits)
        return RunResult(0 if getattr(result, "tag", "ok") == "ok" else 1)


HTTP_HANDLER = "wasi:http/incoming-handler"


def is_http_component(engine: wasmtime.Engine, comp: Any) -> bool:
    return any(e.split("@")[0] == HTTP_HANDLER for e in comp.type.exports(engine))


def load_program(
    artifact: Path,
    digest: str,
    cache: Path,
    *,
    fuel: bool,
    where: str,
    plugin: PluginContext | None = None,
    guest: Guest | None = None,
) -> P1Program | P2Command | P2Http:
    """The program a WASM replica runs: a WASIp1 command module, a ``wasi:cli/run`` component or a
    ``wasi:http/incoming-handler`` component, by the file's header and exports, compiled through the cache and
    linked (a missing import or a world not served refused here)."""
    from zlayer.runtime.wasm import wasihttp
    from zlayer.runtime.wasm.binary import file_kind

    compiled = CompileCache(cache)
    if file_kind(artifact) == "component":
        engine = make_engine(fuel=fuel, component=True)
        comp = compiled.component(engine, artifact, digest, fuel=fuel)
        if is_http_component(engine, comp):
            return P2Http(engine, comp, where=where, plugin=plugin, guest=guest or wasihttp.Guest())
        return P2Command(engine, comp, where=where, plugin=plugin)
    engine = make_engine(fuel=fuel)
    return P1Program(engine, compiled.module(engine, artifact, digest, fuel=fuel), where=where)


@dataclass
class HttpStats:
    """What a :class:`P2Http` served: handle calls, those that trapped or failed, instances made and alive."""

    calls: int = 0
    errors: int = 0
    instantiated: int = 0
    alive: int = 0


class _Slot:
    """One pooled instance: its store and its ``handle``."""

    def __init__(self, store: wasmtime.Store, handle: Any) -> None:
        self.store = store
        self.handle = handle
        self.reps: set[int] = set()  # the host resources it holds
        self.idle_since = time.monotonic()


class P2Http:
    """A ``wasi:http/incoming-handler`` component linked once against :class:`~zlayer.runtime.wasm.wasihttp.HttpHost`
    (the module says why not wasmtime's own ``wasi:http``); :meth:`call` runs one request on a pooled instance.

    Pooling: an instance (a store of its own) serves request after request; at most ``max_instances`` exist, an
    idle one is reused first, a new one is made only when all are busy. An instance whose call trapped (or ran
    past the deadline, or over its memory) is thrown away, so that request alone gets the 500 and the next one a
    fresh instance. Each call runs under the epoch deadline ``limits.deadline_s``."""

    def __init__(
        self, engine: wasmtime.Engine, comp: Any, *, where: str = "", plugin: PluginContext | None = None,
        guest: Guest,
    ) -> None:  # fmt: skip
        from wasmtime import component

        from zlayer.runtime.wasm import plugin as plugins
        from zlayer.runtime.wasm.wasihttp import HttpHost

        self.engine = engine
        self.component = comp
        self.where = where or "component"
        exports = sorted(comp.type.exports(engine))
        name = next(e for e in exports if e.split("@")[0] == HTTP_HANDLER)
        self.host = HttpHost(guest)
        self.linker = component.Linker(engine)
        imports = sorted(comp.type.imports(engine))
        left = self.host.define(self.linker, imports)
        wanted = plugins.imported(left)
        refused = [w for w in wanted if plugin is not None and w not in plugin.allowed]
        if refused:  # named here: linked as traps they would fail only when called
            raise RuntimeFailure(
                f"{self.where}: cannot link: imports zlayer:plugin/{', zlayer:plugin/'.join(refused)}, which this "
                "service's capabilities do not allow"
            )
        if wanted and plugin is not None:
            plugins.define(self.linker, plugin, wanted)
        # what neither serves (wasi:filesystem, wasi:sockets...) traps when called, naming itself
        self.linker.define_unknown_imports_as_traps(comp)
        self.handle_index = comp.get_export_index("handle", comp.get_export_index(name))
        if self.handle_index is None:
            raise RuntimeFailure(f"{self.where}: {name} has no handle function")
        self.stats = HttpStats()
        self._idle: list[_Slot] = []
        self._lock = threading.Condition()
        self.max_instances = 1
        self.min_instances = 0
        self.idle_timeout: float | None = None
        self.limits = Limits()

    def configure(
        self, *, limits: Limits, max_instances: int, min_instances: int = 0, idle_timeout: float | None = None
    ) -> None:
        """``idle_timeout``: an instance unused that long is let go by :meth:`shrink`, down to ``min_instances``."""
        self.limits = limits
        self.max_instances = max(1, max_instances)
        self.min_instances = max(0, min(min_instances, self.max_instances))
        self.idle_timeout = idle_timeout

    def shrink(self, now: float | None = None) -> int:
        """Let go of the idle instances unused for ``idle_timeout`` (the longest idle first) while more than
        ``min_instances`` exist; returns how many went. A later request makes a new one when none is idle."""
        if self.idle_timeout is None:
            return 0
        now = time.monotonic() if now is None else now
        gone: list[_Slot] = []
        with self._lock:
            # the longest idle first; _acquire pops from the end, the most recently used (its memory is warm)
            self._idle.sort(key=lambda slot: slot.idle_since)
            while self._idle and self.stats.alive > self.min_instances:
                if now - self._idle[0].idle_since < self.idle_timeout:
                    break
                gone.append(self._idle.pop(0))
                self.stats.alive -= 1
        for slot in gone:
            self.host.table.discard(slot.reps)
        return len(gone)

    def _instantiate(self) -> _Slot:
        store = wasmtime.Store(self.engine)
        if self.limits.memory_bytes is not None:
            store.set_limits(memory_size=self.limits.memory_bytes)
        store.set_epoch_deadline(NO_DEADLINE)
        try:
            instance = self.linker.instantiate(store, self.component)
        except wasmtime.WasmtimeError as e:
            raise RuntimeFailure(f"{self.where}: cannot instantiate: {_short(e)}") from None
        handle = instance.get_func(store, self.handle_index)
        if handle is None:
            raise RuntimeFailure(f"{self.where}: wasi:http/incoming-handler has no handle function")
        self.stats.instantiated += 1
        return _Slot(store, handle)

    def warm(self, n: int) -> None:
        """Make ``n`` instances ahead of the first request (the spec's ``min_instances``, at least one: a
        component that cannot be instantiated fails at start, not at its first request)."""
        slots = [self._instantiate() for _ in range(max(1, min(n, self.max_instances)))]
        with self._lock:
            self._idle.extend(slots)
            self.stats.alive += len(slots)

    def _acquire(self) -> _Slot:
        with self._lock:
            while True:
                if self._idle:
                    return self._idle.pop()
                if self.stats.alive < self.max_instances:
                    self.stats.alive += 1
                    break
                self._lock.wait()
        try:
            return self._instantiate()
        except BaseException:
            with self._lock:
                self.stats.alive -= 1
                self._lock.notify()
            raise

    def _release(self, slot: _Slot | None) -> None:
        with self._lock:
            if slot is None:
                self.stats.alive -= 1
            else:
                slot.idle_since = time.monotonic()
                self._idle.append(slot)
            self._lock.notify()

    def call(
        self, method: str, path: str, scheme: str, authority: str, headers: list[tuple[str, bytes]], body: bytes
    ) -> tuple[int, list[tuple[str, bytes]], bytes, str]:
        """One request: ``(status, headers, body, error)``; a trap, a deadline or a handler that set no response is
        a 500 with ``error`` saying why (the instance is then discarded)."""
        slot = self._acquire()
        ok = False
        try:
            with self.host.table.owner(slot.reps):
                req, out, slot_resp = self.host.new_request(method, path, scheme, authority, headers, body)
                if self.limits.deadline_s is not None:
                    slot.store.set_epoch_deadline(max(1, math.ceil(self.limits.deadline_s / EPOCH_TICK)))
                slot.handle(slot.store, req, out)
                slot.handle.post_return(slot.store)
                self.host.forget((req.rep, out.rep))  # what the guest did not take over
            ok = True
        except wasmtime.Trap as e:
            why = _trapped(e, self.limits).reason
        except wasmtime.WasmtimeError as e:
            why = _failed(e, self.limits).reason
        finally:
            if not ok:  # the instance goes, and with it whatever it held
                self.host.table.discard(slot.reps)
            self._release(slot if ok else None)
            with self._lock:
                self.stats.calls += 1
                self.stats.errors += 0 if ok else 1
        if not ok:
            return 500, [], b"", why
        if not slot_resp.set:
            return 500, [], b"", "the handler returned without setting a response"
        if slot_resp.error is not None:
            return 500, [], b"", f"the handler answered error {slot_resp.error}"
        data = bytes(slot_resp.body.data) if slot_resp.body is not None else b""
        return slot_resp.status, slot_resp.headers, data, ""


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
    "P2Command",
    "P2Http",
    "RunResult",
    "digest_of_file",
    "engine_tag",
    "load_program",
    "make_engine",
]
