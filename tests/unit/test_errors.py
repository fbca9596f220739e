"""Errors say what failed and where once, and show the values they quote safely."""

from __future__ import annotations

from zlayer.errors import ImageError, RuntimeFailure, ZLayerError, shown, with_context


def test_context_added_on_the_way_up_is_not_repeated() -> None:
    # the shim names the container in `where`; the runtime adds the same context on its way up
    err = RuntimeFailure("exec format error", where="container x-rep-1").add_context("container x-rep-1")
    assert str(err) == "container x-rep-1: exec format error"
    assert with_context("x-rep-1", err) == "container x-rep-1: exec format error"
    assert with_context("x-rep-1", RuntimeFailure("container x-rep-10: gone")) == "x-rep-1: container x-rep-10: gone"
    assert str(ImageError("pull nginx:1: manifest unknown", where="nginx:1")) == "pull nginx:1: manifest unknown"
    assert str(ImageError("manifest unknown", where="nginx:1")) == "nginx:1: manifest unknown"


def test_control_characters_in_messages_are_escaped_visibly() -> None:
    err = ZLayerError("deployment 'pro\x00be' \u202egnp.exe not found\nsecond line", where="a\x1b[2J")
    assert str(err) == "a\\x1b[2J: deployment 'pro\\x00be' \\u202egnp.exe not found\nsecond line"
    assert err.to_json()["message"] == "deployment 'pro\\x00be' \\u202egnp.exe not found\nsecond line"


def test_quoted_values_are_cut_short_and_huge_integers_described() -> None:
    assert shown("x" * 500) == "x" * 79 + "… (500 characters)"
    assert shown(10**5000) == "an integer of 16610 bits"
    assert shown("tab\there") == "tab\\there"
