"""The host side of ``wasi:http/incoming-handler`` components, written against the ``wasmtime`` package's component
API with host-defined resources.

Why not wasmtime's own ``wasi:http``: the package (50.x) links wasmtime's implementation of the ``wasi:http`` imports
(``Linker.add_wasi_http``, C ``wasmtime_component_linker_add_wasi_http``), but neither the package nor its bundled
libwasmtime exports a way to *create* an ``incoming-request`` or a ``response-outparam`` in that implementation's
resource table (Rust's ``WasiHttpView::new_incoming_request``/``new_response_outparam`` have no C binding), and a host
cannot call ``handle`` without them. What the package does offer is host-defined resources
(``ResourceType.host``, ``LinkerInstance.add_resource``, ``ResourceHost.own``) and dynamically typed host functions
(``LinkerInstance.add_func``). So this module defines the interfaces a ``wasi:http/proxy`` component imports itself:
``wasi:http/types`` and ``outgoing-handler``, ``wasi:io/{error,poll,streams}`` (their streams are the ones
``wasi:http`` bodies use, so they must be ours too), ``wasi:cli/{stdin,stdout,stderr,environment,exit,terminal-*}``,
``wasi:clocks/{monotonic-clock,wall-clock}``, ``wasi:random/*`` and (in :mod:`~zlayer.runtime.wasm.wasifs`)
``wasi:filesystem/{types,preopens}`` over the spec's storage. An import outside those (a proxy component has none;
``wasi:sockets`` elsewhere) links as a function that traps when called.

Bodies are buffered: a request's body is read before ``handle`` runs and a response is sent once ``handle``
returned (its outgoing body finished or not). ``outgoing-handler.handle`` performs the request with
:mod:`http.client` when the component first asks for the response (by then it wrote and finished the body), if
:class:`Guest` allows outgoing requests to that host; else the answer is ``HTTP-request-denied``.

Resources live in one table of this process keyed by their ``rep``; every instance of the worker shares it.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import itertools
import os
import secrets as _secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from wasmtime import WasmtimeError
from wasmtime import _ffi as ffi
from wasmtime.component import FuncType, Linker, ResourceAny, ResourceHost, ResourceType, Variant
from wasmtime.component._enter import catch_exceptions
from wasmtime.component._types import VariantLikeType

# resource kinds (the ``ResourceType.host`` identifiers)
FIELDS, INCOMING_REQUEST, OUTGOING_REQUEST, REQUEST_OPTIONS, RESPONSE_OUTPARAM = 1, 2, 3, 4, 5
INCOMING_RESPONSE, INCOMING_BODY, FUTURE_TRAILERS, OUTGOING_RESPONSE, OUTGOING_BODY = 6, 7, 8, 9, 10
FUTURE_INCOMING_RESPONSE, INPUT_STREAM, OUTPUT_STREAM, POLLABLE, IO_ERROR = 11, 12, 13, 14, 15
TERMINAL_INPUT, TERMINAL_OUTPUT, DESCRIPTOR, DIRECTORY_ENTRY_STREAM = 16, 17, 18, 19

METHODS = ("get", "head", "post", "put", "delete", "connect", "options", "trace", "patch")
FORBIDDEN_HEADERS = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host"})
MAX_READ = 1 << 20


@dataclass
class Fields:
    entries: list[tuple[str, bytes]] = field(default_factory=list)
    immutable: bool = False


@dataclass
class InputStream:
    data: bytes = b""
    pos: int = 0
    source: Callable[[int], bytes] | None = None  # read up to n bytes (b"": the end); else ``data`` is the stream
    close: Callable[[], None] | None = None  # called when the stream is dropped


@dataclass
class OutputStream:
    sink: Callable[[bytes], None]
    closed: bool = False
    close: Callable[[], None] | None = None  # called when the stream is dropped


@dataclass
class IncomingBody:
    data: bytes
    stream_taken: bool = False


@dataclass
class IncomingRequest:
    method: str
    path: str
    scheme: str
    authority: str
    headers: list[tuple[str, bytes]]
    body: bytes
    consumed: bool = False


@dataclass
class OutgoingBody:
    data: bytearray = field(default_factory=bytearray)
    stream_taken: bool = False
    finished: bool = False


@dataclass
class OutgoingResponse:
    headers: int  # rep of its (immutable) fields
    status: int = 200
    body: OutgoingBody | None = None


@dataclass
class OutgoingRequest:
    headers: int
    method: str = "get"
    path: str | None = None
    scheme: str | None = None
    authority: str | None = None
    body: OutgoingBody | None = None


@dataclass
class RequestOptions:
    connect: int | None = None
    first_byte: int | None = None
    between_bytes: int | None = None


@dataclass
class IncomingResponse:
    status: int
    headers: list[tuple[str, bytes]]
    body: bytes
    consumed: bool = False


@dataclass
class FutureResponse:
    request: OutgoingRequest
    headers: list[tuple[str, bytes]]
    timeout: float
    result: Any = None  # ("ok", IncomingResponse) | ("err", Variant) once done
    taken: bool = False


@dataclass
class Pollable:
    deadline: float = 0.0  # time.monotonic() at which it is ready; 0: ready now


@dataclass
class Outparam:
    slot: Response


@dataclass
class Response:
    """What ``response-outparam.set`` was given: ``status``/``headers``/``body`` or ``error``."""

    status: int = 0
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    body: OutgoingBody | None = None
    error: str | None = None
    set: bool = False


# ------------------------------------------------------------------------------------------------ fast host functions
#
# ``LinkerInstance.add_func`` builds the function's type afresh on every call and, lowering a result, walks every
# case of every variant in it through the C API (``error-code``'s 39 cases, several times per request): most of a
# request's time (the fixture's handler, in process: 3.5 ms a request before, 0.77 ms after, on a loaded machine).
# These are the same functions, registered through the same C entry point
# (``wasmtime_component_linker_instance_add_func``) and converted by the package's own value types, but the types are
# read once per function and the variants' cases and tagging computed once and kept.

_FUNCS: dict[int, list[Any]] = {}  # id -> [python function, (param types, result type) once known]
_func_ids = itertools.count(1)


def _freeze(ty: Any) -> Any:
    """``ty`` with its variant-like parts' cases and tagging computed once (set on the instances)."""
    if isinstance(ty, VariantLikeType):
        cases = [(name, _freeze(t) if t is not None else None) for name, t in ty._cases()]
        setattr(ty, "_cases", lambda: cases)  # noqa: B010 - shadowing the method on this instance
        tagged = ty._tagged()
        setattr(ty, "_tagged", lambda: tagged)  # noqa: B010
    return ty


def _types_of(store: Any, ty_raw: Any) -> tuple[list[Any], Any]:
    with FuncType._from_ptr(ty_raw, owner=store) as fty:
        params = [_freeze(t) for _, t in fty.params]
        result = fty.result
    return params, _freeze(result) if result is not None else None


@ffi.wasmtime_component_func_callback_t
def _func_impl(idx: int, context: Any, ty_raw: Any, args: Any, nargs: int, results: Any, nresults: int) -> int:
    entry = _FUNCS[idx or 0]

    def run(store: Any) -> None:
        if entry[1] is None:
            entry[1] = _types_of(store, ty_raw)
        params, result = entry[1]
        out = entry[0](store, *[params[i].convert_from_c(args[i]) for i in range(nargs)])
        if result is not None:
            result.convert_to_c(store, out, results)

    return int(catch_exceptions(context, run))


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _func_finalize(idx: int | None) -> None:
    _FUNCS.pop(idx or 0, None)


def add_func(li: Any, name: str, fn: Callable[..., Any]) -> None:
    """``li.add_func(name, fn)`` with the types kept (above)."""
    idx = next(_func_ids)
    _FUNCS[idx] = [fn, None]
    raw = name.encode()
    err = ffi.wasmtime_component_linker_instance_add_func(
        li.ptr(), ctypes.create_string_buffer(raw), len(raw), _func_impl, idx, _func_finalize
    )
    if err:
        _FUNCS.pop(idx, None)
        raise WasmtimeError._from_ptr(err)


class _Instance:
    """A linker instance whose ``add_func`` is :func:`add_func`."""

    def __init__(self, li: Any) -> None:
        self.li = li

    def add_func(self, name: str, fn: Callable[..., Any]) -> None:
        add_func(self.li, name, fn)

    def add_resource(self, name: str, ty: ResourceType, dtor: Callable[[Any, int], None]) -> None:
        self.li.add_resource(name, ty, dtor)


class Table:
    """The host's resources by rep (shared by every instance of the process; reps never repeat). While an instance
    runs (:meth:`owner`), the reps made for it are noted in its set and leave it when dropped or taken back, so that
    an instance thrown away after a trap takes what it still held with it (:meth:`discard`)."""

    def __init__(self) -> None:
        self.objs: dict[int, Any] = {}
        self._next = itertools.count(1)
        self._owner = threading.local()

    def add(self, obj: Any) -> int:
        rep = next(self._next) & 0xFFFFFFFF
        self.objs[rep] = obj
        reps = getattr(self._owner, "reps", None)
        if reps is not None:
            reps.add(rep)
        return rep

    def new(self, kind: int, obj: Any) -> ResourceHost:
        return ResourceHost.own(self.add(obj), kind)

    def get(self, store: Any, res: ResourceAny) -> Any:
        return self.objs[res.to_host(store).rep]

    def pop(self, rep: int) -> Any:
        reps = getattr(self._owner, "reps", None)
        if reps is not None:
            reps.discard(rep)
        return self.objs.pop(rep, None)

    def drop(self, _store: Any, rep: int) -> None:
        _release(self.pop(rep))

    def take(self, store: Any, res: ResourceAny) -> Any:
        rep = res.to_host(store).rep
        if rep not in self.objs:
            raise WasmtimeError(f"resource {rep} is gone")
        return self.pop(rep)

    @contextlib.contextmanager
    def owner(self, reps: set[int]) -> Iterator[None]:
        """Note the reps made in this thread in ``reps`` until the block ends."""
        self._owner.reps = reps
        try:
            yield
        finally:
            self._owner.reps = None

    def discard(self, reps: set[int]) -> None:
        for rep in reps:
            _release(self.objs.pop(rep, None))
        reps.clear()


def _release(obj: Any) -> None:
    """What a dropped resource held (a file descriptor) given back."""
    close = getattr(obj, "close", None)
    if close is not None:
        close()


def _err(code: str, payload: Any = None) -> Variant:
    return Variant(code, payload)


def _method_val(m: str) -> Variant:
    return Variant(m) if m in METHODS else Variant("other", m)


def _method_str(v: Any) -> str:
    tag = v.tag if isinstance(v, Variant) else str(v)
    return str(v.payload) if tag == "other" and isinstance(v, Variant) else tag


def _scheme_val(s: str) -> Variant:
    return Variant("HTTP") if s == "http" else Variant("HTTPS") if s == "https" else Variant("other", s)


def _scheme_str(v: Any) -> str:
    if not isinstance(v, Variant):
        return "http"
    return str(v.payload) if v.tag == "other" else v.tag.lower()


def _valid_name(name: str) -> bool:
    return bool(name) and all(33 <= ord(c) < 127 and c not in '"(),/:;<=>?@[\\]{}' for c in name)


def _valid_value(value: bytes) -> bool:
    return all(b == 9 or 32 <= b < 127 or b >= 128 for b in value)


@dataclass
class Guest:
    """What the guest's ``wasi:cli`` imports answer: its argv and env, and where its stdout/stderr go."""

    argv: Sequence[str] = ()
    env: Sequence[tuple[str, str]] = ()
    output: Callable[[str, bytes], None] | None = None
    outgoing: bool = False  # wasi:http/outgoing-handler may send requests (else each is HTTP-request-denied)
    allowed_hosts: Sequence[str] = ()  # when not empty, the only hosts it may reach (a "*." prefix: any subdomain)
    preopens: Sequence[tuple[str, str, bool]] = ()  # (host dir, guest dir, read-only): wasi:filesystem/preopens


class HttpHost:
    """The interfaces above, defined on a component linker for the imports one component has."""

    def __init__(self, guest: Guest) -> None:
        self.guest = guest
        self.table = Table()
        self.lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------ requests

    def new_request(
        self, method: str, path: str, scheme: str, authority: str, headers: Iterable[tuple[str, bytes]], body: bytes
    ) -> tuple[ResourceHost, ResourceHost, Response]:
        """The ``incoming-request`` and ``response-outparam`` a ``handle`` call takes, and the slot the response
        lands in."""
        slot = Response()
        req = IncomingRequest(method.lower(), path, scheme, authority, list(headers), body)
        return self.table.new(INCOMING_REQUEST, req), self.table.new(RESPONSE_OUTPARAM, Outparam(slot)), slot

    def forget(self, reps: Iterable[int]) -> None:
        for rep in reps:
            self.table.pop(rep)

    # ------------------------------------------------------------------------------------------------ linking

    def define(self, linker: Linker, imports: Iterable[str]) -> list[str]:
        """Define every import of ``imports`` (component import names) this host serves; returns those it does
        not serve (the caller links them as traps)."""
        from zlayer.runtime.wasm import wasifs  # it builds on this module's streams and table

        left = []
        builders: dict[str, Callable[[Any], None]] = {
            "wasi:http/types": self._types,
            "wasi:http/outgoing-handler": self._outgoing_handler,
            "wasi:io/error": self._io_error,
            "wasi:io/poll": self._io_poll,
            "wasi:io/streams": self._io_streams,
            "wasi:cli/stdout": lambda li: self._std(li, "get-stdout", "stdout"),
            "wasi:cli/stderr": lambda li: self._std(li, "get-stderr", "stderr"),
            "wasi:cli/stdin": self._stdin,
            "wasi:cli/environment": self._environment,
            "wasi:cli/exit": self._exit,
            "wasi:cli/terminal-input": lambda li: self._resource(li, "terminal-input", TERMINAL_INPUT),
            "wasi:cli/terminal-output": lambda li: self._resource(li, "terminal-output", TERMINAL_OUTPUT),
            "wasi:cli/terminal-stdin": lambda li: li.add_func("get-terminal-stdin", lambda s: None),
            "wasi:cli/terminal-stdout": lambda li: li.add_func("get-terminal-stdout", lambda s: None),
            "wasi:cli/terminal-stderr": lambda li: li.add_func("get-terminal-stderr", lambda s: None),
            "wasi:clocks/monotonic-clock": self._monotonic,
            "wasi:clocks/wall-clock": self._wall,
            "wasi:random/random": self._random,
            "wasi:random/insecure": self._insecure,
            "wasi:random/insecure-seed": lambda li: li.add_func(
                "insecure-seed", lambda s: (int.from_bytes(os.urandom(8)), int.from_bytes(os.urandom(8)))
            ),
            "wasi:filesystem/types": lambda li: wasifs.define_types(self, li),
            "wasi:filesystem/preopens": lambda li: wasifs.define_preopens(self, li, self.guest.preopens),
        }
        with linker.root() as root:
            for name in imports:
                build = builders.get(name.split("@")[0])
                if build is None:
                    left.append(name)
                    continue
                with root.add_instance(name) as li:
                    build(_Instance(li))
        return left

    def _resource(self, li: Any, name: str, kind: int) -> None:
        li.add_resource(name, ResourceType.host(kind), self.table.drop)

    # ------------------------------------------------------------------------------------------------ wasi:io

    def _io_error(self, li: Any) -> None:
        self._resource(li, "error", IO_ERROR)
        li.add_func("[method]error.to-debug-string", lambda s, e: str(self.table.get(s, e)))

    def _io_poll(self, li: Any) -> None:
        t = self.table
        self._resource(li, "pollable", POLLABLE)

        def ready(s: Any, p: ResourceAny) -> bool:
            return bool(time.monotonic() >= t.get(s, p).deadline)

        def block(s: Any, p: ResourceAny) -> None:
            wait = t.get(s, p).deadline - time.monotonic()
            if wait > 0:
                time.sleep(wait)

        def poll(s: Any, ps: list[ResourceAny]) -> list[int]:
            if not ps:
                raise WasmtimeError("wasi:io/poll.poll: an empty list of pollables")
            deadlines = [t.get(s, p).deadline for p in ps]
            now = time.monotonic()
            if min(deadlines) > now:
                time.sleep(min(deadlines) - now)
                now = time.monotonic()
            return [i for i, d in enumerate(deadlines) if d <= now]

        li.add_func("[method]pollable.ready", ready)
        li.add_func("[method]pollable.block", block)
        li.add_func("poll", poll)

    def _io_streams(self, li: Any) -> None:
        t = self.table
        self._resource(li, "input-stream", INPUT_STREAM)
        self._resource(li, "output-stream", OUTPUT_STREAM)

        def read(s: Any, st: ResourceAny, n: int) -> Any:
            ins: InputStream = t.get(s, st)
            if ins.source is not None:
                try:
                    got = ins.source(min(n, MAX_READ)) if n else b""
                except OSError as e:  # stream-error is untagged here: its own<error> case lowers from the resource
                    return t.new(IO_ERROR, f"{e.strerror}")
                return got if got or not n else None
            if ins.pos >= len(ins.data) and n:
                return None  # err(closed): stream-error's "closed" has no payload, so it lowers from None
            chunk = ins.data[ins.pos : ins.pos + min(n, MAX_READ)]
            ins.pos += len(chunk)
            return chunk

        def skip(s: Any, st: ResourceAny, n: int) -> Any:
            got = read(s, st, n)
            return None if got is None else len(got)

        def check_write(s: Any, st: ResourceAny) -> Any:
            return None if t.get(s, st).closed else MAX_READ

        def write(s: Any, st: ResourceAny, data: bytes) -> Any:
            out: OutputStream = t.get(s, st)
            if out.closed:
                return Variant("err", None)
            out.sink(data)
            return Variant("ok")

        def flush(s: Any, st: ResourceAny) -> Any:
            return Variant("err", None) if t.get(s, st).closed else Variant("ok")

        def zeroes(s: Any, st: ResourceAny, n: int) -> Any:
            return write(s, st, bytes(n))

        def splice(s: Any, dst: ResourceAny, src: ResourceAny, n: int) -> Any:
            got = read(s, src, n)
            if got is None or write(s, dst, got).tag == "err":
                return None
            return len(got)

        def subscribe(s: Any, st: ResourceAny) -> ResourceHost:
            return t.new(POLLABLE, Pollable())

        for name, fn in (
            ("[method]input-stream.read", read),
            ("[method]input-stream.blocking-read", read),
            ("[method]input-stream.skip", skip),
            ("[method]input-stream.blocking-skip", skip),
            ("[method]input-stream.subscribe", subscribe),
            ("[method]output-stream.check-write", check_write),
            ("[method]output-stream.write", write),
            ("[method]output-stream.blocking-write-and-flush", write),
            ("[method]output-stream.flush", flush),
            ("[method]output-stream.blocking-flush", flush),
            ("[method]output-stream.subscribe", subscribe),
            ("[method]output-stream.write-zeroes", zeroes),
            ("[method]output-stream.blocking-write-zeroes-and-flush", zeroes),
            ("[method]output-stream.splice", splice),
            ("[method]output-stream.blocking-splice", splice),
        ):
            li.add_func(name, fn)

    # ------------------------------------------------------------------------------------------------ wasi:cli

    def _emit(self, stream: str) -> Callable[[bytes], None]:
        out = self.guest.output
        return (lambda data: out(stream, data)) if out is not None else (lambda data: None)

    def _std(self, li: Any, func: str, stream: str) -> None:
        li.add_func(func, lambda s: self.table.new(OUTPUT_STREAM, OutputStream(self._emit(stream))))

    def _stdin(self, li: Any) -> None:
        li.add_func("get-stdin", lambda s: self.table.new(INPUT_STREAM, InputStream()))

    def _environment(self, li: Any) -> None:
        li.add_func("get-environment", lambda s: [tuple(kv) for kv in self.guest.env])
        li.add_func("get-arguments", lambda s: list(self.guest.argv))
        li.add_func("initial-cwd", lambda s: None)

    def _exit(self, li: Any) -> None:
        def exit_(s: Any, status: Any) -> None:
            ok = status is None or (isinstance(status, Variant) and status.tag == "ok")
            raise WasmtimeError(f"the component called wasi:cli/exit with {'ok' if ok else 'err'}")

        li.add_func("exit", exit_)
        li.add_func("exit-with-code", lambda s, code: exit_(s, None if code == 0 else Variant("err")))

    # ------------------------------------------------------------------------------------------------ clocks, random

    def _monotonic(self, li: Any) -> None:
        t = self.table
        li.add_func("now", lambda s: time.monotonic_ns())
        li.add_func("resolution", lambda s: 1)
        li.add_func("subscribe-instant", lambda s, at: t.new(POLLABLE, Pollable(at / 1e9)))
        li.add_func("subscribe-duration", lambda s, d: t.new(POLLABLE, Pollable(time.monotonic() + d / 1e9)))

    def _wall(self, li: Any) -> None:
        from wasmtime.component import Record

        def datetime(ns: int) -> Any:
            r = Record()
            setattr(r, "seconds", ns // 1_000_000_000)  # noqa: B010 - Record's fields are set by name
            setattr(r, "nanoseconds", ns % 1_000_000_000)  # noqa: B010
            return r

        def now(s: Any) -> Any:
            return datetime(time.time_ns())

        def resolution(s: Any) -> Any:
            return datetime(1)

        li.add_func("now", now)
        li.add_func("resolution", resolution)

    def _random(self, li: Any) -> None:
        li.add_func("get-random-bytes", lambda s, n: _secrets.token_bytes(min(n, MAX_READ)))
        li.add_func("get-random-u64", lambda s: int.from_bytes(_secrets.token_bytes(8)))

    def _insecure(self, li: Any) -> None:
        li.add_func("get-insecure-random-bytes", lambda s, n: os.urandom(min(n, MAX_READ)))
        li.add_func("get-insecure-random-u64", lambda s: int.from_bytes(os.urandom(8)))

    # ------------------------------------------------------------------------------------------------ wasi:http/types

    def _types(self, li: Any) -> None:
        t = self.table
        for name, kind in (
            ("fields", FIELDS),
            ("incoming-request", INCOMING_REQUEST),
            ("outgoing-request", OUTGOING_REQUEST),
            ("request-options", REQUEST_OPTIONS),
            ("response-outparam", RESPONSE_OUTPARAM),
            ("incoming-response", INCOMING_RESPONSE),
            ("incoming-body", INCOMING_BODY),
            ("future-trailers", FUTURE_TRAILERS),
            ("outgoing-response", OUTGOING_RESPONSE),
            ("outgoing-body", OUTGOING_BODY),
            ("future-incoming-response", FUTURE_INCOMING_RESPONSE),
        ):
            self._resource(li, name, kind)

        def fields_new(s: Any) -> ResourceHost:
            return t.new(FIELDS, Fields())

        def from_list(s: Any, entries: list[tuple[str, bytes]]) -> Any:
            for k, v in entries:
                if not _valid_name(k) or not _valid_value(v):
                    return Variant("invalid-syntax")
                if k.lower() in FORBIDDEN_HEADERS:
                    return Variant("forbidden")
            return t.new(FIELDS, Fields([(k, bytes(v)) for k, v in entries]))

        def get(s: Any, f: ResourceAny, name: str) -> list[bytes]:
            return [v for k, v in t.get(s, f).entries if k.lower() == name.lower()]

        def has(s: Any, f: ResourceAny, name: str) -> bool:
            return any(k.lower() == name.lower() for k, _ in t.get(s, f).entries)

        def change(s: Any, f: ResourceAny, name: str, values: list[bytes], *, replace: bool) -> Any:
            fs: Fields = t.get(s, f)
            if fs.immutable:
                return Variant("immutable")
            if not _valid_name(name) or not all(_valid_value(v) for v in values):
                return Variant("invalid-syntax")
            if name.lower() in FORBIDDEN_HEADERS:
                return Variant("forbidden")
            if replace:
                fs.entries = [(k, v) for k, v in fs.entries if k.lower() != name.lower()]
            fs.entries.extend((name, bytes(v)) for v in values)
            return None

        def delete(s: Any, f: ResourceAny, name: str) -> Any:
            return change(s, f, name, [], replace=True)

        def entries(s: Any, f: ResourceAny) -> list[tuple[str, bytes]]:
            return list(t.get(s, f).entries)

        def clone(s: Any, f: ResourceAny) -> ResourceHost:
            return t.new(FIELDS, Fields(list(t.get(s, f).entries)))

        def frozen(entries: list[tuple[str, bytes]]) -> ResourceHost:
            return t.new(FIELDS, Fields(list(entries), immutable=True))

        # incoming-request
        def req_consume(s: Any, r: ResourceAny) -> Any:
            req: IncomingRequest = t.get(s, r)
            if req.consumed:
                return None  # err(): result<own<incoming-body>> lowers its payload-less error from None
            req.consumed = True
            return t.new(INCOMING_BODY, IncomingBody(req.body))

        def body_stream(s: Any, b: ResourceAny) -> Any:
            body = t.get(s, b)
            if body.stream_taken:
                return None
            body.stream_taken = True
            if isinstance(body, IncomingBody):
                return t.new(INPUT_STREAM, InputStream(body.data))
            return t.new(OUTPUT_STREAM, OutputStream(body.data.extend))

        def incoming_finish(s: Any, b: ResourceAny) -> ResourceHost:
            t.take(s, b)
            return t.new(FUTURE_TRAILERS, None)

        def outgoing_finish(s: Any, b: ResourceAny, trailers: Any) -> None:
            body: OutgoingBody = t.take(s, b)
            body.finished = True
            if trailers is not None:
                t.take(s, trailers)

        # outgoing-response
        def resp_new(s: Any, h: ResourceAny) -> ResourceHost:
            fs: Fields = t.take(s, h)
            fs.immutable = True
            return t.new(OUTGOING_RESPONSE, OutgoingResponse(t.add(fs)))

        def set_status(s: Any, r: ResourceAny, code: int) -> Any:
            if not 100 <= code <= 999:
                return Variant("err")
            t.get(s, r).status = code
            return Variant("ok")

        def resp_headers(s: Any, r: ResourceAny) -> ResourceHost:
            fs: Fields = t.objs[t.get(s, r).headers]
            return frozen(fs.entries)

        def msg_body(s: Any, r: ResourceAny) -> Any:
            msg = t.get(s, r)
            if msg.body is not None:
                return None
            msg.body = OutgoingBody()
            # the message and the guest's outgoing-body share one buffer; the guest's handle may outlive neither
            return t.new(OUTGOING_BODY, msg.body)

        def outparam_set(s: Any, p: ResourceAny, response: Any) -> None:
            slot: Response = t.take(s, p).slot
            slot.set = True
            if isinstance(response, Variant):  # the error-code of result<own<outgoing-response>, error-code>
                slot.error = response.tag + (f": {response.payload}" if response.payload is not None else "")
                return
            resp: OutgoingResponse = t.take(s, response)
            slot.status = resp.status
            slot.headers = list(t.pop(resp.headers).entries)
            slot.body = resp.body

        # outgoing-request
        def oreq_new(s: Any, h: ResourceAny) -> ResourceHost:
            fs: Fields = t.take(s, h)
            fs.immutable = True
            return t.new(OUTGOING_REQUEST, OutgoingRequest(t.add(fs)))

        def setter(attr: str, conv: Callable[[Any], Any] = lambda v: v) -> Callable[..., Any]:
            def set_(s: Any, r: ResourceAny, value: Any) -> Any:
                setattr(t.get(s, r), attr, conv(value) if value is not None else None)
                return Variant("ok")

            return set_

        def getter(attr: str, conv: Callable[[Any], Any] = lambda v: v) -> Callable[..., Any]:
            def get_(s: Any, r: ResourceAny) -> Any:
                value = getattr(t.get(s, r), attr)
                return conv(value) if value is not None else None

            return get_

        # incoming-response, future-incoming-response
        def inresp_consume(s: Any, r: ResourceAny) -> Any:
            resp: IncomingResponse = t.get(s, r)
            if resp.consumed:
                return None
            resp.consumed = True
            return t.new(INCOMING_BODY, IncomingBody(resp.body))

        def future_get(s: Any, f: ResourceAny) -> Any:
            fut: FutureResponse = t.get(s, f)
            # option<result<result<own<incoming-response>, error-code>>>: the option lowers tagged, the results not
            if fut.result is None:
                fut.result = _perform(fut)
            if fut.taken:
                return Variant("some", None)  # some(err): taken already
            fut.taken = True
            tag, value = fut.result
            return Variant("some", t.new(INCOMING_RESPONSE, value) if tag == "ok" else value)

        for name, fn in (
            ("[constructor]fields", fields_new),
            ("[static]fields.from-list", from_list),
            ("[method]fields.get", get),
            ("[method]fields.has", has),
            ("[method]fields.set", lambda s, f, n, vs: change(s, f, n, vs, replace=True)),
            ("[method]fields.delete", delete),
            ("[method]fields.append", lambda s, f, n, v: change(s, f, n, [v], replace=False)),
            ("[method]fields.entries", entries),
            ("[method]fields.clone", clone),
            ("[method]incoming-request.method", lambda s, r: _method_val(t.get(s, r).method)),
            ("[method]incoming-request.path-with-query", lambda s, r: t.get(s, r).path),
            ("[method]incoming-request.scheme", lambda s, r: _scheme_val(t.get(s, r).scheme)),
            ("[method]incoming-request.authority", lambda s, r: t.get(s, r).authority),
            ("[method]incoming-request.headers", lambda s, r: frozen(t.get(s, r).headers)),
            ("[method]incoming-request.consume", req_consume),
            ("[method]incoming-body.stream", body_stream),
            ("[static]incoming-body.finish", incoming_finish),
            ("[method]future-trailers.subscribe", lambda s, f: t.new(POLLABLE, Pollable())),
            ("[method]future-trailers.get", lambda s, f: Variant("ok", None)),
            ("[constructor]outgoing-response", resp_new),
            ("[method]outgoing-response.status-code", lambda s, r: t.get(s, r).status),
            ("[method]outgoing-response.set-status-code", set_status),
            ("[method]outgoing-response.headers", resp_headers),
            ("[method]outgoing-response.body", msg_body),
            ("[method]outgoing-body.write", body_stream),
            ("[static]outgoing-body.finish", outgoing_finish),
            ("[static]response-outparam.set", outparam_set),
            ("[constructor]outgoing-request", oreq_new),
            ("[method]outgoing-request.body", msg_body),
            ("[method]outgoing-request.method", getter("method", _method_val)),
            ("[method]outgoing-request.set-method", setter("method", _method_str)),
            ("[method]outgoing-request.path-with-query", getter("path")),
            ("[method]outgoing-request.set-path-with-query", setter("path")),
            ("[method]outgoing-request.scheme", getter("scheme", _scheme_val)),
            ("[method]outgoing-request.set-scheme", setter("scheme", _scheme_str)),
            ("[method]outgoing-request.authority", getter("authority")),
            ("[method]outgoing-request.set-authority", setter("authority")),
            ("[method]outgoing-request.headers", lambda s, r: frozen(t.objs[t.get(s, r).headers].entries)),
            ("[constructor]request-options", lambda s: t.new(REQUEST_OPTIONS, RequestOptions())),
            ("[method]request-options.connect-timeout", getter("connect")),
            ("[method]request-options.set-connect-timeout", setter("connect")),
            ("[method]request-options.first-byte-timeout", getter("first_byte")),
            ("[method]request-options.set-first-byte-timeout", setter("first_byte")),
            ("[method]request-options.between-bytes-timeout", getter("between_bytes")),
            ("[method]request-options.set-between-bytes-timeout", setter("between_bytes")),
            ("[method]incoming-response.status", lambda s, r: t.get(s, r).status),
            ("[method]incoming-response.headers", lambda s, r: frozen(t.get(s, r).headers)),
            ("[method]incoming-response.consume", inresp_consume),
            ("[method]future-incoming-response.subscribe", lambda s, f: t.new(POLLABLE, Pollable())),
            ("[method]future-incoming-response.get", future_get),
            ("http-error-code", lambda s, e: None),
        ):
            li.add_func(name, fn)

    def _outgoing_handler(self, li: Any) -> None:
        t = self.table

        def handle(s: Any, r: ResourceAny, options: Any) -> Any:
            req: OutgoingRequest = t.take(s, r)
            if not self.guest.outgoing or not _host_allowed(req.authority or "", self.guest.allowed_hosts):
                t.pop(req.headers)
                if options is not None:
                    t.take(s, options)
                return Variant("HTTP-request-denied")
            timeout = 30.0
            if options is not None:
                opts: RequestOptions = t.take(s, options)
                if opts.connect or opts.first_byte:
                    timeout = max(opts.connect or 0, opts.first_byte or 0) / 1e9
            headers = list((t.pop(req.headers) or Fields()).entries)
            return t.new(FUTURE_INCOMING_RESPONSE, FutureResponse(req, headers, timeout))

        li.add_func("handle", handle)


def _perform(fut: FutureResponse) -> tuple[str, Any]:
    """The outgoing request of ``fut`` done with http.client: ``("ok", IncomingResponse)`` or ``("err", code)``."""
    req = fut.request
    if req.authority is None:
        return "err", Variant("HTTP-request-URI-invalid")
    scheme = req.scheme or "https"
    conn_cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    try:
        conn = conn_cls(req.authority, timeout=fut.timeout)
        try:
            conn.putrequest(req.method.upper(), req.path or "/", skip_accept_encoding=True)
            for k, v in fut.headers:
                conn.putheader(k, v)
            body = bytes(req.body.data) if req.body is not None else b""
            if body or req.method in ("post", "put", "patch"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            got = [(k, v.encode("latin-1")) for k, v in resp.getheaders()]
            return "ok", IncomingResponse(resp.status, got, data)
        finally:
            conn.close()
    except ConnectionRefusedError:
        return "err", Variant("connection-refused")
    except TimeoutError:
        return "err", Variant("connection-timeout")
    except OSError as e:
        if "Name or service not known" in str(e) or "nodename" in str(e):
            return "err", Variant("DNS-error", _dns_payload(str(e)))
        return "err", Variant("internal-error", str(e))
    except http.client.HTTPException as e:
        return "err", Variant("HTTP-protocol-error" if str(e) else "HTTP-response-incomplete")


def _host_allowed(authority: str, allowed: Sequence[str]) -> bool:
    if not allowed:
        return True
    host = authority.rsplit("@", 1)[-1]
    host = host[1:].split("]")[0] if host.startswith("[") else host.split(":")[0]
    return any(host == a or (a.startswith("*.") and host.endswith(a[1:])) for a in allowed)


def _dns_payload(text: str) -> Any:
    from wasmtime.component import Record

    r = Record()
    setattr(r, "rcode", text)  # noqa: B010 - Record's fields are set by name
    setattr(r, "info-code", None)
    return r


__all__ = ["Guest", "HttpHost", "Response"]
