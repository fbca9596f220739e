"""Converting raw YAML scalars (``Plain`` text) to typed values with serde_yaml's rules, without pydantic.

Shared by the pydantic models (as before-validators) and by the fast checker that ``zlayer validate`` runs, so both
accept and reject exactly the same values with the same messages.
"""

from __future__ import annotations

import re

from zlayer.errors import shown
from zlayer.spec.scalars import parse_duration

TYPE_CHECKING = False  # (typing is imported for the type checker only: `zlayer validate` never loads it)
if TYPE_CHECKING:
    from typing import Any

KINDS: dict[Any, tuple[Any, ...]] = {}
"""converter function → kind descriptor used by the fast checker (:mod:`zlayer.spec.check`)."""


class Plain(str):
    """A plain (unquoted) YAML scalar's raw text."""

    __slots__ = ()


class Null(Plain):
    """A plain scalar serde_yaml reads as null (``~``, ``null``, empty): None for an Option, the raw text for a
    String, an empty map or sequence where one is expected."""

    __slots__ = ()


# serde_yaml: 0x/0o/0b and a sign are numbers; digits with a leading zero (`080`) are a string (YAML 1.2).
_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9]*|0x[0-9a-fA-F]+|0o[0-7]+|0b[01]+)$")
_LEADING_ZERO = re.compile(r"^[-+]?0[0-9]+$")
_MAX_INT_CHARS = 130  # 0b and 128 binary digits: longer than any 128-bit integer is written


_FLOAT = re.compile(
    r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
)


_TRUE = ("true", "True", "TRUE")


_FALSE = ("false", "False", "FALSE")


def _describe(v: Any) -> str:
    """serde's 'invalid type' wording for a value (a long value cut short, control characters escaped)."""
    if v is None or isinstance(v, Null):
        return "unit value"
    if isinstance(v, Plain):
        if _INT.match(v):
            return f"integer `{shown(v)}`"
        if _FLOAT.match(v) and not _LEADING_ZERO.match(v):
            return f"floating point `{shown(v)}`"
        if v in _TRUE or v in _FALSE:
            return f"boolean `{v.lower()}`"
        return f'string "{shown(v)}"'
    if isinstance(v, bool):
        return f"boolean `{str(v).lower()}`"
    if isinstance(v, int):
        return f"integer `{shown(v)}`"
    if isinstance(v, float):
        return f"floating point `{v}`"
    if isinstance(v, str):
        return f'string "{shown(v)}"'
    if isinstance(v, list):
        return "sequence"
    if isinstance(v, dict):
        return "map"
    return type(v).__name__


def _to_str(v: Any) -> Any:
    if isinstance(v, str):
        return str(v)
    if v is None or isinstance(v, (list, dict, bool, int, float)):
        raise ValueError(f"invalid type: {_describe(v)}, expected a string")
    return v


def _to_tag_str(v: Any) -> Any:
    if isinstance(v, Null):
        raise ValueError("invalid type: unit value, expected a string")
    # Inside internally tagged enums serde_yaml buffers values first: a number or bool is no longer a string.
    if isinstance(v, Plain) and (_INT.match(v) or _FLOAT.match(v) or v in _TRUE or v in _FALSE):
        raise ValueError(f"invalid type: {_describe(v)}, expected a string")
    return _to_str(v)


def _to_bool(v: Any) -> Any:
    if isinstance(v, bool):
        return v
    if isinstance(v, Plain):
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
    raise ValueError(f"invalid type: {_describe(v)}, expected a boolean")


def _int_of(v: Any, what: str) -> int:
    if isinstance(v, bool):
        raise ValueError(f"invalid type: {_describe(v)}, expected {what}")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, Plain) and _INT.match(v):
        t = v.replace("_", "")
        sign = -1 if t.startswith("-") else 1
        t = t.lstrip("+-")
        base = 16 if t.startswith("0x") else 8 if t.startswith("0o") else 2 if t.startswith("0b") else 10
        if len(t) > _MAX_INT_CHARS:  # no integer field takes more than 128 bits; int() would refuse it obscurely
            raise ValueError(f"invalid value: {_describe(v)}, expected {what}")
        return sign * int(t[2:] if base != 10 else t, base)
    raise ValueError(f"invalid type: {_describe(v)}, expected {what}")


def int_converter(lo: int, hi: int, what: str) -> Any:
    def conv(v: Any) -> int:
        n = _int_of(v, what)
        if not lo <= n <= hi:
            raise ValueError(f"invalid value: integer `{n}`, expected {what}")
        return n

    KINDS[conv] = ("int", lo, hi, what)
    return conv


def _to_float(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError(f"invalid type: {_describe(v)}, expected f64")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, Plain) and not _LEADING_ZERO.match(v) and (_FLOAT.match(v) or _INT.match(v)):
        t = str(v).lower()
        if t.endswith("inf"):
            return float("-inf") if t.startswith("-") else float("inf")
        if t.endswith("nan"):
            return float("nan")
        return float(_int_of(v, "f64")) if _INT.match(v) else float(v)
    raise ValueError(f"invalid type: {_describe(v)}, expected f64")


def _to_duration(v: Any) -> Any:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if v < 0:
            raise ValueError("duration cannot be negative")
        return float(v)  # already seconds (models built in Python)
    if isinstance(v, str):
        try:
            return parse_duration(v)
        except ValueError as e:
            raise ValueError(f"invalid duration '{shown(v)}': {e}") from None
    raise ValueError(f'invalid type: {_describe(v)}, expected a duration string such as "30s"')


def _image_name(v: Any) -> Any:
    v = _to_str(v)
    from zlayer.spec.scalars import parse_image_ref

    parse_image_ref(v)
    return v


def _network_mode(v: Any) -> Any:
    """String (``host``, ``bridge:net``, ``container:id``) or tagged map → canonical string form."""
    if isinstance(v, dict):
        if len(v) != 1:
            raise ValueError("invalid network_mode: expected a single key (bridge or container)")
        ((key, body),) = v.items()
        key = str(key)
        if key in ("default", "host", "none") and body is None:
            return key
        if key == "bridge":
            if body is None:
                return "bridge"
            if not isinstance(body, dict) or set(body) - {"name"}:
                raise ValueError("invalid network_mode: bridge takes {name: <network>}")
            name = body.get("name")
            return "bridge" if name is None else f"bridge:{_to_str(name)}"
        if key == "container":
            if not isinstance(body, dict) or set(body) - {"id"}:
                raise ValueError("invalid network_mode: container takes {id: <container>}")
            if "id" not in body:
                raise ValueError("missing field `id`")
            return f"container:{_to_str(body['id'])}"
        raise ValueError(f"unknown variant `{key}`, expected one of `default`, `host`, `none`, `bridge`, `container`")
    s = _to_str(v)
    if s in ("default", "host", "none", "bridge"):
        return s
    if s.startswith("bridge:"):
        return s if s[7:] else "bridge"
    if s.startswith("container:"):
        if not s[10:]:
            raise ValueError("container network mode requires a container id (container:<id>)")
        return s
    raise ValueError(
        f"unknown network mode '{s}' (expected default, host, none, bridge, bridge:<name> or container:<id>)"
    )


def _tag_of(field: str) -> Any:
    def get(v: Any) -> Any:
        if isinstance(v, dict):
            t = v.get(field)
            return str(t) if isinstance(t, str) else t
        return getattr(v, field, None)

    KINDS[get] = ("tag", field)
    return get


def _json_value(v: Any) -> Any:
    """``with:`` params are free JSON: plain scalars get YAML's types (int, float, bool, null), quoted stay strings."""
    if isinstance(v, Plain):
        if _INT.match(v):
            return _int_of(v, "integer")
        if _FLOAT.match(v):
            return _to_float(v)
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
        return str(v)
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_value(x) for x in v]
    return v


def _init_list(v: Any) -> Any:
    """README form ``init: [{action: init.wait_tcp, host: db, ...}]`` → ``{steps: [{id, uses, with}]}``."""
    if isinstance(v, list):
        steps: list[Any] = []
        for i, item in enumerate(v):
            if isinstance(item, dict) and "action" in item and "uses" not in item:
                rest = {k: x for k, x in item.items() if k not in ("action", "id", "timeout", "on_failure", "retry")}
                step: dict[str, Any] = {"id": item.get("id", f"step-{i + 1}"), "uses": item["action"], "with": rest}
                for k in ("timeout", "on_failure", "retry"):
                    if k in item:
                        step[k] = item[k]
                steps.append(step)
            else:
                steps.append(item)
        return {"steps": steps}
    return v


def _affinity(v: Any) -> Any:
    if isinstance(v, str):
        s = str(v)
        if s not in ("spread", "pack"):
            raise ValueError(f"unknown variant `{s}`, expected one of `spread`, `pack`, `pin`")
        return s
    return v


def _env(v: Any) -> Any:
    """README form ``env: [{name: X, value: Y}]`` → ``{X: Y}``."""
    if isinstance(v, list):
        out: dict[Any, Any] = {}
        for i, item in enumerate(v):
            if not isinstance(item, dict) or "name" not in item or set(item) - {"name", "value"}:
                raise ValueError(f"env[{i}]: expected {{name: ..., value: ...}} (or write env as a mapping)")
            out[item["name"]] = item.get("value", Plain(""))
        return out
    return v


KINDS.update(
    {
        _to_str: ("str",),
        _to_tag_str: ("tstr",),
        _to_bool: ("bool",),
        _to_float: ("float",),
        _to_duration: ("dur",),
        _image_name: ("image",),
        _network_mode: ("netmode",),
        _json_value: ("json",),
        _init_list: ("pre", "init"),
        _env: ("pre", "env"),
        _affinity: ("affinity",),
    }
)
