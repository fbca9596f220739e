"""ZLayer's plugin host interfaces (``zlayer:plugin/*@0.1.0``: config, keyvalue, logging, secrets, metrics) for the
components a WASM replica runs, defined on a component linker with Python functions. The interfaces and their types
are ZLayer's (``wit/zlayer-plugin.wit`` here states them); only the ones a component imports are defined.

What backs them, in the replica's worker process:

- ``config``: the replica's resolved environment (the spec's ``env``, ``$E:``/``$S:`` resolved as for containers);
- ``keyvalue``: a SQLite database per namespace (``wasm.kv_namespace``, else ``DEPLOYMENT.SERVICE``) under
  ``DATA/wasm/kv/`` shared by every replica of the service, with TTLs, atomic increment and compare-and-swap in
  ``BEGIN IMMEDIATE`` transactions, values capped at ``wasm.kv_max_value_size``;
- ``logging``: the replica's log in the node's log store (stderr lines ``[level] message k=v``);
- ``secrets``: the names in ``wasm.secrets``, each resolved when the replica is created as ``$S:NAME`` would be
  (a node without a secrets resolver lists them and answers ``not-found``);
- ``metrics``: counters, gauges and histograms of the replica, written to ``metrics.json`` beside its state and
  reported by the driver's stats.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE = "zlayer:plugin"
VERSION = "0.1.0"
INTERFACES = ("config", "keyvalue", "logging", "secrets", "metrics")
LEVELS = ("trace", "debug", "info", "warn", "error")


def _variant(tag: str, payload: Any = None) -> Any:
    from wasmtime.component import Variant

    return Variant(tag, payload)


def _record(**fields: Any) -> Any:
    from wasmtime.component import Record

    r = Record()
    for k, v in fields.items():
        setattr(r, k, v)
    return r


@dataclass
class PluginContext:
    """What a replica's plugin interfaces read and write (see the module doc)."""

    config: Mapping[str, str]
    kv_path: Path
    kv_max_value_size: int = 1_048_576
    secrets: Mapping[str, str | None] = field(default_factory=dict)
    metrics_path: Path | None = None
    log: Callable[[str, bytes], None] | None = None
    allowed: tuple[str, ...] = INTERFACES  # the spec's capabilities: interfaces not here stay undefined


class KeyValue:
    """The keyvalue interface's store: one SQLite table, shared by processes through SQLite's locking."""

    def __init__(self, path: Path, max_value_size: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=10, isolation_level=None)
        os.chmod(path, 0o600)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL)")
        self.max = max_value_size

    def _live(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT value, expires FROM kv WHERE key = ?", (key,)).fetchone()
        if row is None or (row[1] is not None and row[1] <= time.time()):
            return None
        return bytes(row[0])

    def get(self, key: str) -> bytes | None:
        return self._live(key)

    def set(self, key: str, value: bytes, ttl_ns: int | None = None) -> str | None:
        if not key:
            return "invalid-key"
        if len(value) > self.max:
            return "value-too-large"
        expires = time.time() + ttl_ns / 1e9 if ttl_ns is not None else None
        self.db.execute("INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, ?)", (key, value, expires))
        return None

    def delete(self, key: str) -> bool:
        live = self._live(key) is not None
        self.db.execute("DELETE FROM kv WHERE key = ?", (key,))
        return live

    def keys(self, prefix: str) -> list[str]:
        now = time.time()
        rows = self.db.execute(
            "SELECT key FROM kv WHERE substr(key, 1, ?) = ? AND (expires IS NULL OR expires > ?) ORDER BY key",
            (len(prefix), prefix, now),
        )
        return [r[0] for r in rows]

    def increment(self, key: str, delta: int) -> int | str:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            cur = self._live(key)
            try:
                value = int(cur.decode()) if cur is not None else 0
            except ValueError:
                self.db.execute("ROLLBACK")
                return "storage: the value is not an integer"
            value += delta
            self.db.execute("INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, NULL)",
                            (key, str(value).encode()))  # fmt: skip
            self.db.execute("COMMIT")
            return value
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def compare_and_swap(self, key: str, expected: bytes | None, new: bytes) -> bool | str:
        if len(new) > self.max:
            return "value-too-large"
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if self._live(key) != expected:
                self.db.execute("ROLLBACK")
                return False
            self.db.execute("INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, NULL)", (key, new))
            self.db.execute("COMMIT")
            return True
        except BaseException:
            self.db.execute("ROLLBACK")
            raise


class Metrics:
    """The metrics interface's figures for one replica, written out after each change."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.counters: dict[str, int] = {}
        self.gauges: dict[str, float] = {}
        self.histograms: dict[str, list[float]] = {}  # count, sum

    @staticmethod
    def _key(name: str, labels: list[Any] | None) -> str:
        if not labels:
            return name
        return name + "{" + ",".join(f'{kv.key}="{kv.value}"' for kv in labels) + "}"

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"counters": self.counters, "gauges": self.gauges, "histograms": self.histograms}))
        os.replace(tmp, self.path)

    def counter(self, name: str, value: int, labels: list[Any] | None = None) -> None:
        k = self._key(name, labels)
        self.counters[k] = self.counters.get(k, 0) + value
        self._save()

    def gauge(self, name: str, value: float, labels: list[Any] | None = None, *, add: bool = False) -> None:
        k = self._key(name, labels)
        self.gauges[k] = (self.gauges.get(k, 0.0) if add else 0.0) + value
        self._save()

    def observe(self, name: str, value: float, labels: list[Any] | None = None) -> None:
        k = self._key(name, labels)
        count, total = self.histograms.get(k, [0, 0.0])
        self.histograms[k] = [count + 1, total + value]
        self._save()


def context_from(doc: Mapping[str, Any], log: Callable[[str, bytes], None] | None) -> PluginContext:
    """The worker's context from the ``plugin`` part of its config.json (see WasmRuntime.create)."""
    return PluginContext(
        config=dict(doc.get("config", {})),
        kv_path=Path(doc["kv_path"]),
        kv_max_value_size=int(doc.get("kv_max_value_size", 1_048_576)),
        secrets=dict(doc.get("secrets", {})),
        metrics_path=Path(doc["metrics_path"]) if doc.get("metrics_path") else None,
        log=log,
        allowed=tuple(doc.get("allowed", INTERFACES)),
    )


def imported(component_imports: list[str]) -> list[str]:
    """The plugin interfaces (names) a component imports."""
    out = []
    for name in component_imports:
        pkg, _, rest = name.partition("/")
        if pkg == PACKAGE and rest.split("@")[0] in INTERFACES:
            out.append(rest.split("@")[0])
    return out


def define(linker: Any, ctx: PluginContext, wanted: list[str]) -> None:
    """Define the ``wanted`` plugin interfaces on a component linker (before instantiation)."""
    root = linker.root()
    with root:
        for iface in wanted:
            with root.add_instance(f"{PACKAGE}/{iface}@{VERSION}") as inst:
                _DEFINE[iface](inst, ctx)


def _config(inst: Any, ctx: PluginContext) -> None:
    cfg = dict(ctx.config)

    def get_required(_s: Any, key: str) -> Any:
        if key in cfg:
            return cfg[key]
        return _record(code="not-found", message=f"config key {key!r} is not set")

    def get_bool(_s: Any, key: str) -> bool | None:
        v = cfg.get(key, "").strip().lower()
        return True if v in ("true", "1", "yes") else False if v in ("false", "0", "no") else None

    def get_int(_s: Any, key: str) -> int | None:
        try:
            return int(cfg[key])
        except (KeyError, ValueError):
            return None

    def get_float(_s: Any, key: str) -> float | None:
        try:
            return float(cfg[key])
        except (KeyError, ValueError):
            return None

    inst.add_func("get", lambda _s, key: cfg.get(key))
    inst.add_func("get-required", get_required)
    inst.add_func("get-many", lambda _s, keys: [(k, cfg[k]) for k in keys if k in cfg])
    inst.add_func("get-prefix", lambda _s, p: sorted((k, v) for k, v in cfg.items() if k.startswith(p)))
    inst.add_func("exists", lambda _s, key: key in cfg)
    inst.add_func("get-bool", get_bool)
    inst.add_func("get-int", get_int)
    inst.add_func("get-float", get_float)


def _keyvalue(inst: Any, ctx: PluginContext) -> None:
    kv = KeyValue(ctx.kv_path, ctx.kv_max_value_size)

    def err(code: str) -> Any:
        if code.startswith("storage: "):
            return _variant("storage", code.removeprefix("storage: "))
        return _variant(code)

    def done(outcome: str | None) -> Any:
        return None if outcome is None else err(outcome)

    def get_string(_s: Any, key: str) -> Any:
        v = kv.get(key)
        return None if v is None else v.decode(errors="replace")

    def increment(_s: Any, key: str, delta: int) -> Any:
        got = kv.increment(key, delta)
        return err(got) if isinstance(got, str) else got

    def cas(_s: Any, key: str, expected: bytes | None, new: bytes) -> Any:
        got = kv.compare_and_swap(key, None if expected is None else bytes(expected), bytes(new))
        return err(got) if isinstance(got, str) else got

    inst.add_func("get", lambda _s, key: kv.get(key))
    inst.add_func("get-string", get_string)
    inst.add_func("set", lambda _s, key, value: done(kv.set(key, bytes(value))))
    inst.add_func("set-string", lambda _s, key, value: done(kv.set(key, value.encode())))
    inst.add_func("set-with-ttl", lambda _s, key, value, ttl: done(kv.set(key, bytes(value), ttl)))
    inst.add_func("delete", lambda _s, key: kv.delete(key))
    inst.add_func("exists", lambda _s, key: kv.get(key) is not None)
    inst.add_func("list-keys", lambda _s, prefix: kv.keys(prefix))
    inst.add_func("increment", increment)
    inst.add_func("compare-and-swap", cas)


def _logging(inst: Any, ctx: PluginContext) -> None:
    def emit(level: str, message: str, fields: list[Any] | None = None) -> None:
        extra = "".join(f" {kv.key}={kv.value}" for kv in fields or [])
        if ctx.log is not None:
            ctx.log("stderr", f"[{level}] {message}{extra}\n".encode())

    inst.add_func("log", lambda _s, level, message: emit(level, message))
    inst.add_func("log-structured", lambda _s, level, message, fields: emit(level, message, fields))
    for level in LEVELS:
        inst.add_func(level, lambda _s, message, lv=level: emit(lv, message))
    inst.add_func("is-enabled", lambda _s, level: True)


def _secrets(inst: Any, ctx: PluginContext) -> None:
    known = dict(ctx.secrets)

    def get_required(_s: Any, name: str) -> Any:
        v = known.get(name)
        return v if v is not None else _record(code="not-found", message=f"secret {name!r} is not available")

    inst.add_func("get", lambda _s, name: known.get(name))
    inst.add_func("get-required", get_required)
    inst.add_func("exists", lambda _s, name: known.get(name) is not None)
    inst.add_func("list-names", lambda _s: sorted(known))


def _metrics(inst: Any, ctx: PluginContext) -> None:
    m = Metrics(ctx.metrics_path)
    inst.add_func("counter-inc", lambda _s, name, value: m.counter(name, value))
    inst.add_func("counter-inc-labeled", lambda _s, name, value, labels: m.counter(name, value, labels))
    inst.add_func("gauge-set", lambda _s, name, value: m.gauge(name, value))
    inst.add_func("gauge-set-labeled", lambda _s, name, value, labels: m.gauge(name, value, labels))
    inst.add_func("gauge-add", lambda _s, name, delta: m.gauge(name, delta, add=True))
    inst.add_func("histogram-observe", lambda _s, name, value: m.observe(name, value))
    inst.add_func("histogram-observe-labeled", lambda _s, name, value, labels: m.observe(name, value, labels))
    inst.add_func("record-duration", lambda _s, name, ns: m.observe(name, ns / 1e9))
    inst.add_func("record-duration-labeled", lambda _s, name, ns, labels: m.observe(name, ns / 1e9, labels))


_DEFINE: dict[str, Callable[[Any, PluginContext], None]] = {
    "config": _config,
    "keyvalue": _keyvalue,
    "logging": _logging,
    "secrets": _secrets,
    "metrics": _metrics,
}

__all__ = ["INTERFACES", "KeyValue", "Metrics", "PluginContext", "context_from", "define", "imported"]
