"""Outside JSON is read within limits: nesting is measured without recursion before a parser runs, and every way
it can be wrong is one clear error naming where, never a RecursionError or advice about Python's internals."""

from __future__ import annotations

import pytest

from zlayer.errors import RegistryError, UsageError
from zlayer.limits import MAX_NESTING, json_too_deep, load_json


@pytest.mark.parametrize(
    ("doc", "deep_at"),
    [
        (b"[" * MAX_NESTING + b"]" * MAX_NESTING, None),
        (b"[" * (MAX_NESTING + 1), MAX_NESTING),
        (b'{"a": ' * 50_000, (MAX_NESTING) * 6),
        # brackets inside strings (with escaped quotes) are text, not nesting
        (b'["' + b"[" * 500 + b'\\"' + b"{" * 500 + b'"]', None),
        ("[" * 300 + '"\u00e9"', MAX_NESTING),
        (b"[]" * 10_000, None),
    ],
)
def test_nesting_is_measured_outside_strings(doc: bytes | str, deep_at: int | None) -> None:
    assert json_too_deep(doc) == deep_at


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        (b"[" * 50_000, "recursion limit exceeded (nesting deeper than 128 levels) at line 1 column 129"),
        (b"[1, " + b"9" * 5000 + b"]", "a number longer than 4300 digits"),
        (b'{"a": "\xff"}', "not UTF-8 text (byte 7)"),
        (b'{"a": \n  tru}', "not valid JSON at line 2 column 3: Expecting value"),
        (b'["open', "not valid JSON at line 1 column 2: Unterminated string starting"),
    ],
)
def test_bad_json_is_one_clear_error_naming_where(doc: bytes, words: str) -> None:
    with pytest.raises(RegistryError) as err:
        load_json(doc, where="manifest sha256:ab", error=RegistryError)
    assert str(err.value) == f"manifest sha256:ab: {err.value.message}"
    assert words in err.value.message and "sys." not in err.value.message


def test_a_document_over_the_size_limit_is_refused_before_parsing() -> None:
    with pytest.raises(UsageError, match=r"document too large \(1001 bytes; at most 1000"):
        load_json(b" " * 1001, where="x", max_bytes=1000)
