"""Fuzzing the spec loader (YAML text → validate, and → the models the daemon builds): whatever the text, the
answer is a spec or a SpecError whose problems carry FILE:LINE:COL — never another exception, never a message that
hides a character or quotes Python's internals. Bounded: a few hundred examples per property, each well under a
second (the limits keep every document small or refused)."""

from __future__ import annotations

from hypothesis import given

from tests.fixtures.fuzz import ANY_TEXT, BOUNDED, GRAFTED, MUTATED, NESTED, SPEC_SHAPED
from zlayer.errors import SpecError
from zlayer.spec.loader import check_spec_text, parse_spec


def answer(text: str) -> None:
    """The property: a value or a SpecError whose every problem is safe to print."""
    for parse in (check_spec_text, parse_spec):
        try:
            parse(text, "fuzz.zlayer.yml")
        except SpecError as e:
            said = str(e)
            assert "sys.set_int_max_str_digits" not in said and "Traceback" not in said
            assert not any(c in said for c in "\x00\x1b\u202e"), said[:300]
            for p in e.problems:
                assert p.file == "fuzz.zlayer.yml" and p.line >= 1 and p.col >= 1, p


@BOUNDED
@given(ANY_TEXT)
def test_any_text_is_a_spec_or_a_clear_spec_error(text: str) -> None:
    answer(text)


@BOUNDED
@given(SPEC_SHAPED)
def test_any_spec_shaped_document_is_a_spec_or_a_clear_spec_error(text: str) -> None:
    answer(text)


@BOUNDED
@given(MUTATED | GRAFTED | NESTED)
def test_a_valid_spec_with_hostile_pieces_is_a_spec_or_a_clear_spec_error(text: str) -> None:
    answer(text)
