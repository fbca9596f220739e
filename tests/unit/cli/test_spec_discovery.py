"""Spec auto-discovery follows ZLayer's rule (spec-and-cli.md §11): explicit path, exact names in order, then exactly
one ``*.zlayer.yml``-style file; none or several is an error that says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from zlayer.errors import NotFoundError, ZLayerError
from zlayer.spec.discovery import discover_spec_path, spec_candidates


def test_explicit_path_wins(tmp_path: Path) -> None:
    (tmp_path / "zlayer.yml").write_text("x")
    other = tmp_path / "elsewhere.yaml"
    other.write_text("x")
    assert discover_spec_path(other, tmp_path) == other


def test_explicit_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"not found|does not exist"):
        discover_spec_path(tmp_path / "nope.zlayer.yml")


def test_exact_names_in_order(tmp_path: Path) -> None:
    for name in ("zlayer.yaml", "zlayer.yml", ".zlayer.yaml", ".zlayer.yml"):
        (tmp_path / name).write_text("x")
        (tmp_path / "app.zlayer.yml").write_text("x")
        assert discover_spec_path(None, tmp_path) == tmp_path / name


def test_single_pattern_match(tmp_path: Path) -> None:
    (tmp_path / "notes.yml").write_text("x")
    (tmp_path / "zlayer.prod.yaml").write_text("x")
    assert discover_spec_path(None, tmp_path) == tmp_path / "zlayer.prod.yaml"


def test_directories_and_other_files_do_not_count(tmp_path: Path) -> None:
    (tmp_path / "dir.zlayer.yml").mkdir()
    (tmp_path / "app.zlayer.json").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.zlayer.yml").write_text("x")
    assert spec_candidates(tmp_path) == []
    with pytest.raises(NotFoundError, match=r"(?i)no deployment spec found") as exc:
        discover_spec_path(None, tmp_path)
    assert ".zlayer.yml" in str(exc.value)


def test_several_matches_are_listed(tmp_path: Path) -> None:
    for name in ("b.zlayer.yml", "a.zlayer.yaml", "zlayer.c.yml"):
        (tmp_path / name).write_text("x")
    with pytest.raises(ZLayerError) as exc:
        discover_spec_path(None, tmp_path)
    msg = str(exc.value)
    assert "multiple deployment specs" in msg.lower()
    assert msg.index("a.zlayer.yaml") < msg.index("b.zlayer.yml") < msg.index("zlayer.c.yml")


def test_directory_argument_searches_that_directory(tmp_path: Path) -> None:
    (tmp_path / "only.zlayer.yml").write_text("x")
    assert discover_spec_path(tmp_path) == tmp_path / "only.zlayer.yml"
