"""Limits on documents that come from outside (specs, API request bodies, manifests, configs, route tables).

They hold *before* a recursive parser sees a byte: CPython's ``json`` and PyYAML's composer recurse once per level of
nesting, so a few kilobytes of ``[`` either exhaust the C stack (a segfault: the daemon dies) or surface as a
``RecursionError``. The nesting limit is serde's (what ZLayer's parsers stop at), so a document ZLayer accepts is
accepted here and one it refuses is refused with the same words: "recursion limit exceeded".

:func:`load_json` is the one way zlayer reads JSON it did not write itself.
"""

from __future__ import annotations

import re
import sys

from zlayer.errors import UsageError, ZLayerError

TYPE_CHECKING = False  # (typing is imported for the type checker only: `zlayer validate` never loads it)
if TYPE_CHECKING:
    from typing import Any

MAX_NESTING = 128
"""Deepest nesting of arrays/objects (JSON) or sequences/mappings (YAML) accepted; serde's recursion limit."""

MAX_SPEC_BYTES = 4 << 20
"""Largest deployment spec accepted, as a file or in a request (a large real spec is tens of kilobytes)."""

MAX_JSON_BYTES = 16 << 20
"""Largest JSON document accepted: an API request body, an image manifest or config, a route table."""

# Only brackets and whole strings matter to nesting; a string may hold brackets (and an unterminated one runs to the
# end, where the parser reports it). Matching strings whole keeps the loop to one step per string and per bracket.
_TOKENS_B = re.compile(rb'[\[\]{}]|"(?:[^"\\]|\\.)*"?', re.S)
_TOKENS_S = re.compile(r'[\[\]{}]|"(?:[^"\\]|\\.)*"?', re.S)


def json_too_deep(data: bytes | str, limit: int = MAX_NESTING) -> int | None:
    """The offset of the first ``[``/``{`` that opens level ``limit + 1``, or None when ``data`` nests no deeper than
    ``limit``. Linear, without recursion; a document with at most ``limit`` openers is answered by two counts."""
    if isinstance(data, bytes):
        if data.count(b"[") + data.count(b"{") <= limit:
            return None
        tokens: Any = _TOKENS_B.finditer(data)
        opens: tuple[int | str, ...] = (0x5B, 0x7B)  # a bytes item is an int: [ {
        closes: tuple[int | str, ...] = (0x5D, 0x7D)  # ] }
    else:
        if data.count("[") + data.count("{") <= limit:
            return None
        tokens = _TOKENS_S.finditer(data)
        opens, closes = ("[", "{"), ("]", "}")
    depth = 0
    for m in tokens:
        c = m.group()[0]
        if c in opens:
            depth += 1
            if depth > limit:
                return m.start()
        elif c in closes:
            depth -= 1
    return None


def _line_col(data: bytes | str, offset: int) -> tuple[int, int]:
    nl: Any = b"\n" if isinstance(data, bytes) else "\n"
    line = data.count(nl, 0, offset) + 1
    return line, offset - (data.rfind(nl, 0, offset) + 1) + 1


def json_limit_problem(data: bytes | str, *, max_bytes: int = MAX_JSON_BYTES) -> str | None:
    """Why ``data`` may not be handed to a JSON parser (too large, nested too deep), or None."""
    if len(data) > max_bytes:
        return f"document too large ({len(data)} bytes; at most {max_bytes} are accepted)"
    at = json_too_deep(data)
    if at is not None:
        line, col = _line_col(data, at)
        return f"recursion limit exceeded (nesting deeper than {MAX_NESTING} levels) at line {line} column {col}"
    return None


def load_json(
    data: bytes | str,
    *,
    where: str,
    error: type[ZLayerError] = UsageError,
    max_bytes: int = MAX_JSON_BYTES,
) -> Any:
    """Parse JSON from outside within the limits. Anything wrong (size, nesting, syntax, encoding) raises ``error``
    naming ``where`` (a file, a digest, a peer) and the line and column; never a ``RecursionError``."""
    problem = json_limit_problem(data, max_bytes=max_bytes)
    if problem is not None:
        raise error(f"not accepted as JSON: {problem}", where=where)
    import json  # (here: `zlayer validate`, which imports this module, reads no JSON)

    try:
        return json.loads(data)
    except json.JSONDecodeError as e:
        what = e.msg.removesuffix(" at")
        raise error(f"not valid JSON at line {e.lineno} column {e.colno}: {what}", where=where) from None
    except UnicodeDecodeError as e:
        raise error(f"not valid JSON: not UTF-8 text (byte {e.start})", where=where) from None
    except ValueError:  # the one other ValueError json raises: an integer longer than Python converts
        digits = sys.get_int_max_str_digits()
        raise error(f"not valid JSON: a number longer than {digits} digits", where=where) from None
    except RecursionError:  # the stack was already deep where we were called: still an answer, not a crash
        raise error("not accepted as JSON: nested too deep to parse here", where=where) from None


__all__ = ["MAX_JSON_BYTES", "MAX_NESTING", "MAX_SPEC_BYTES", "json_limit_problem", "json_too_deep", "load_json"]
