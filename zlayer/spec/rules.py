"""ZLayer's validation stages 2-7, run on the raw document so that every problem is reported at once.

Stage order and messages follow ``crates/zlayer-types/src/spec/validate.rs``; ZLayer stops at the first error, we
collect them all. Values that fail to parse are the model's business (stage 1) and are skipped here.
"""

from __future__ import annotations

import re

from zlayer.errors import shown
from zlayer.spec.coerce import Null, Plain, _int_of, _to_float
from zlayer.spec.scalars import parse_cron, parse_duration, parse_memory

TYPE_CHECKING = False  # (typing is imported for the type checker only: `zlayer validate` never loads it)
if TYPE_CHECKING:
    from typing import Any

    from zlayer.spec.loader import _Doc

_DEPLOYMENT_CHARS = re.compile(r"^[A-Za-z0-9-]+$")
_ROLE = re.compile(r"^[a-z]([a-z0-9-]{0,28}[a-z0-9])?$")
# A name that becomes a file name on the node (a service's containers and bundles, a named volume's directory):
# Docker's rule for container and volume names, so '..', '/' or a NUL cannot lead out of the data dir.
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

WASM_TYPES = {
    # C, K, L, S, M, H, CLI, FS, SO (config, keyvalue, logging, secrets, metrics, http_client, cli, filesystem, sockets)
    "wasm_http": ("WasmHttp", (1, 1, 1, 0, 0, 1, 0, 0, 0)),
    "wasm_router": ("WasmRouter", (1, 1, 1, 0, 0, 1, 0, 0, 0)),
    "wasm_plugin": ("WasmPlugin", (1, 1, 1, 1, 1, 1, 1, 1, 0)),
    "wasm_transformer": ("WasmTransformer", (0, 0, 1, 0, 0, 0, 1, 0, 0)),
    "wasm_authenticator": ("WasmAuthenticator", (1, 0, 1, 1, 0, 1, 0, 0, 0)),
    "wasm_rate_limiter": ("WasmRateLimiter", (1, 1, 1, 0, 1, 0, 1, 0, 0)),
    "wasm_middleware": ("WasmMiddleware", (1, 0, 1, 0, 0, 1, 0, 0, 0)),
}
CAPABILITIES = ("config", "keyvalue", "logging", "secrets", "metrics", "http_client", "cli", "filesystem", "sockets")
CAPABILITY_BLOCK_DEFAULTS = (1, 1, 1, 0, 1, 0, 0, 0, 0)


def _int(v: Any) -> int | None:
    if v is None:
        return None
    try:
        return _int_of(v, "int")
    except ValueError:
        return None


def _float(v: Any) -> float | None:
    try:
        return float(_to_float(v))
    except ValueError:
        return None


def _bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, Plain) and v in ("true", "True", "TRUE"):
        return True
    if isinstance(v, Plain) and v in ("false", "False", "FALSE"):
        return False
    return None


def _s(v: Any) -> str | None:
    return str(v) if isinstance(v, str) else None


def _opt(v: Any) -> Any:
    """An Option field's value: a null scalar is None."""
    return None if isinstance(v, Null) else v


def _map(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _endpoint_rules(doc: _Doc, ep: Any, at: tuple[str | int, ...]) -> None:
    if not isinstance(ep, dict):
        return
    name = _s(ep.get("name"))
    if name is not None and name == "":
        doc.problem((*at, "name"), "endpoint name cannot be empty")
    port = _int(ep.get("port"))
    if port == 0:
        doc.problem((*at, "port"), "port must be between 1-65535 (got 0)")


def _check_memory(doc: _Doc, v: Any, at: tuple[str | int, ...]) -> None:
    s = _s(v)
    if s is None:
        return
    try:
        parse_memory(s)
    except ValueError as e:
        doc.problem(at, str(e))


def _name_rule(doc: _Doc, at: tuple[str | int, ...], what: str, name: object) -> None:
    if isinstance(name, str) and not _FILE_NAME.match(name):
        doc.problem(
            at,
            f"{what} must be 1-128 characters, letters, digits, '_', '.' and '-', starting with a letter or digit "
            f"(got '{shown(name)}')",
        )


def _nul_rule(doc: _Doc, at: tuple[str | int, ...], value: Any) -> None:
    """A NUL byte anywhere in a service: its strings become argv, environment, paths and names in C, which would
    end them there without a word (``/bin/sh\\0x`` runs ``/bin/sh``)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and "\x00" in k:
                doc.problem((*at, k), f"'{shown(k)}' holds a NUL byte, which no program, path or name can carry")
            _nul_rule(doc, (*at, k), v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _nul_rule(doc, (*at, i), v)
    elif isinstance(value, str) and "\x00" in value:
        doc.problem(at, f"'{shown(value)}' holds a NUL byte, which no program, path or name can carry")


def check_rules(data: dict[str, Any], doc: _Doc) -> None:
    """Append to ``doc.problems`` every violation of ZLayer's stages 2-7."""
    # Stage 2: validator derive.
    version = _s(data.get("version"))
    if version is not None and version != "v1":
        doc.problem(("version",), f"version must be 'v1', found '{version}'")
    name = _s(data.get("deployment"))
    if name is not None:
        if not 3 <= len(name.encode()) <= 63:  # bytes, as Rust's str::len
            doc.problem(
                ("deployment",), f"deployment name must be 3-63 characters (got {len(name.encode())}: '{shown(name)}')"
            )
        elif not name[0].isascii() or not name[0].isalnum():
            doc.problem(
                ("deployment",), f"deployment name must start with alphanumeric character (got '{shown(name)}')"
            )
        elif not _DEPLOYMENT_CHARS.match(name):
            doc.problem(
                ("deployment",),
                f"deployment name can only contain alphanumeric characters and hyphens (got '{shown(name)}')",
            )
    services = _map(data.get("services"))
    for svc, body in services.items():
        _name_rule(doc, ("services", svc), "service name", svc)
        if not isinstance(body, dict):
            continue
        at: tuple[str | int, ...] = ("services", svc)
        _nul_rule(doc, at, body)
        for key in _map(body.get("env")):
            if isinstance(key, str) and (not key or "=" in key):
                doc.problem((*at, "env", key), f"environment variable name '{shown(key)}' is empty or holds '='")
        for i, vol in enumerate(_list(body.get("storage"))):
            if _s(_map(vol).get("type")) == "named" and (vname := _s(_map(vol).get("name"))) is not None:
                _name_rule(doc, (*at, "storage", i, "name"), "volume name", vname)
        sched = _s(_opt(body.get("schedule")))
        if sched is not None:
            try:
                parse_cron(sched)
            except ValueError as e:
                doc.problem((*at, "schedule"), f"invalid cron schedule '{sched}': {e}")
        res = _map(body.get("resources"))
        if _opt(res.get("cpu")) is not None:
            cpu = _float(res.get("cpu"))
            if cpu is not None and cpu <= 0:  # NaN passes, as in ZLayer
                said = int(cpu) if cpu.is_integer() else cpu
                doc.problem((*at, "resources", "cpu"), f"CPU limit must be > 0, found {said}")
        if _opt(res.get("memory")) is not None:
            _check_memory(doc, res.get("memory"), (*at, "resources", "memory"))
        for i, ep in enumerate(_list(body.get("endpoints"))):
            _endpoint_rules(doc, ep, (*at, "endpoints", i))
        scale = _map(body.get("scale"))
        if _s(scale.get("mode")) == "adaptive":
            lo, hi = _int(scale.get("min")), _int(scale.get("max"))
            if lo is not None and hi is not None and lo > hi:
                doc.problem((*at, "scale", "min"), f"scale min ({lo}) cannot be greater than max ({hi})")
        for i, grp in enumerate(_list(body.get("replica_groups"))):
            if not isinstance(grp, dict):
                continue
            role = _s(grp.get("role"))
            if role is not None:
                if not 1 <= len(role) <= 30:
                    doc.problem(
                        (*at, "replica_groups", i, "role"), f"role must be 1-30 characters (got '{shown(role)}')"
                    )
                elif not _ROLE.match(role):
                    doc.problem(
                        (*at, "replica_groups", i, "role"),
                        f"role '{role}' must be lowercase letters, digits and '-', start with a letter and not "
                        "end with '-'",
                    )
            count = _int(grp.get("count"))
            if count is not None and count < 1:
                doc.problem((*at, "replica_groups", i, "count"), f"count must be at least 1 (got {count})")
    for ext, body in _map(data.get("externals")).items():
        if not isinstance(body, dict):
            continue
        if isinstance(body.get("backends"), list) and not body["backends"]:
            doc.problem(("externals", ext, "backends"), "at least one backend address is required")
        for i, ep in enumerate(_list(body.get("endpoints"))):
            _endpoint_rules(doc, ep, ("externals", ext, "endpoints", i))

    # Stage 3: dependencies name existing services.
    for svc, body in services.items():
        for i, dep in enumerate(_list(_map(body).get("depends"))):
            target = _s(_map(dep).get("service"))
            if target is not None and target not in services:
                doc.problem(
                    ("services", svc, "depends", i, "service"),
                    f"dependency references unknown service '{target}'",
                )

    # Stage 4: endpoint names unique within a service.
    for svc, body in services.items():
        seen: set[str] = set()
        for i, ep in enumerate(_list(_map(body).get("endpoints"))):
            n = _s(_map(ep).get("name"))
            if n is None:
                continue
            if n in seen:
                doc.problem(("services", svc, "endpoints", i, "name"), f"duplicate endpoint '{n}'")
            seen.add(n)

    # Stage 5: schedule <=> rtype cron.
    for svc, body in services.items():
        if not isinstance(body, dict):
            continue
        rtype = _s(body.get("rtype")) or "service"
        has_sched = _opt(body.get("schedule")) is not None
        if has_sched and rtype != "cron":
            doc.problem(("services", svc, "schedule"), "schedule field is only valid for rtype: cron")
        elif rtype == "cron" and not has_sched:
            doc.problem(("services", svc, "rtype"), "rtype: cron requires a schedule field")

    # Stage 6: tunnels.
    for tname, body in _map(data.get("tunnels")).items():
        for fld in ("local_port", "remote_port"):
            if _int(_map(body).get(fld)) == 0:
                doc.problem(("tunnels", tname, fld), f"invalid tunnel {fld} port: 0 (must be 0 or 1-65535)")
    for svc, body in services.items():
        for i, ep in enumerate(_list(_map(body).get("endpoints"))):
            ttl = _opt(_map(_map(_map(ep).get("tunnel")).get("access")).get("max_ttl"))
            s = _s(ttl)
            if s is not None:
                try:
                    parse_duration(s)
                except ValueError as e:
                    doc.problem(
                        ("services", svc, "endpoints", i, "tunnel", "access", "max_ttl"),
                        f"invalid tunnel max_ttl '{s}': {e}",
                    )

    # Stage 7: wasm.
    for svc, body in services.items():
        if isinstance(body, dict):
            _wasm_rules(doc, svc, body)


def _wasm_rules(doc: _Doc, svc: str, body: dict[str, Any]) -> None:
    key = "wasm" if "wasm" in body else "wasm_http" if "wasm_http" in body else None
    if key is None or _opt(body.get(key)) is None:
        return
    at: tuple[str | int, ...] = ("services", svc, key)
    stype = _s(body.get("service_type")) or "standard"
    if stype not in WASM_TYPES:
        doc.problem(at, f"wasm config provided but service_type is not a WASM type (service_type: {stype})")
        return
    wasm = _map(body.get(key))
    if _opt(wasm.get("max_memory")) is not None:
        _check_memory(doc, wasm.get("max_memory"), (*at, "max_memory"))
    lo = _int(wasm.get("min_instances", 0))
    hi = _int(wasm.get("max_instances", 10))
    if lo is not None and hi is not None and lo > hi:
        doc.problem((*at, "min_instances"), f"wasm min_instances ({lo}) > max_instances ({hi})")
    caps = wasm.get("capabilities")
    if isinstance(caps, dict):
        debug, allowed = WASM_TYPES[stype]
        for cap, block_default, ok in zip(CAPABILITIES, CAPABILITY_BLOCK_DEFAULTS, allowed, strict=True):
            requested = _bool(caps[cap]) if cap in caps else bool(block_default)
            if requested and not ok:
                doc.problem(
                    (*at, "capabilities", cap) if cap in caps else (*at, "capabilities"),
                    f"capability '{cap}' is not available for WASM service type '{debug}' (world does not import it)",
                )
    if stype == "wasm_http":
        eps = _list(body.get("endpoints"))
        if eps and not any(_s(_map(e).get("protocol")) in ("http", "https") for e in eps):
            doc.problem(("services", svc, "endpoints"), "wasm_http service type should have at least one HTTP endpoint")
    for i, pre in enumerate(_list(wasm.get("preopens"))):
        for fld in ("source", "target"):
            if _s(_map(pre).get(fld)) == "":
                doc.problem((*at, "preopens", i, fld), f"wasm preopen[{i}].{fld} cannot be empty")
