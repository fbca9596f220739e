"""The fast checker (no pydantic) and the pydantic models accept and reject the same documents, same problems."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from zlayer.spec.check import check_document
from zlayer.spec.loader import _compose, _pydantic_problems
from zlayer.spec.models import DeploymentSpec
from zlayer.spec.table import build_table

from .test_rules import CASES

EXAMPLES = sorted((Path(__file__).parent / "examples").glob("*/*.y*ml"))


def test_table_matches_models() -> None:
    from zlayer.spec._table import TABLE

    assert build_table() == TABLE, "the models changed: run python -m zlayer.spec.table"


def _both(text: str) -> tuple[set[tuple[str, str, int, int]], set[tuple[str, str, int, int]]]:
    doc, data = _compose(text, "t")
    check_document(data, doc)
    fast = {(p.path, p.message, p.line, p.col) for p in doc.problems}
    doc2, data2 = _compose(text, "t")
    try:
        DeploymentSpec.model_validate(data2)
    except ValidationError as e:
        _pydantic_problems(doc2, data2, e)
    slow = {(p.path, p.message, p.line, p.col) for p in doc2.problems}
    return fast, slow


SAME = [c for c in CASES if c[0] != "dup-key"]  # repeated keys are the checker's (the models see the last value)


@pytest.mark.parametrize("text", [c[1] for c in SAME], ids=[c[0] for c in SAME])
def test_same_verdict_on_rule_cases(text: str) -> None:
    fast, slow = _both(text)
    assert fast == slow


@pytest.mark.parametrize("path", [p for p in EXAMPLES if "redis" not in p.name], ids=lambda p: p.name)
def test_same_verdict_on_examples(path: Path) -> None:
    fast, slow = _both(path.read_text())
    assert fast == slow
