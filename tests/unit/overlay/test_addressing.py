"""Overlay addressing: a slice of 10.200.0.0/16 per node, never shared, kept across restarts, and a clear error
naming the CIDR when the space is gone."""

from __future__ import annotations

import ipaddress
import json
import stat
from pathlib import Path

import pytest

from zlayer.errors import OverlayError
from zlayer.overlay.addressing import AddressPool, FileSliceBook, SliceAllocator, fnv1a64


def test_fnv1a64_matches_the_published_test_values() -> None:
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64(b"foobar") == 0x85944171F73967E8


def test_each_node_gets_its_own_28_of_the_cluster_cidr_and_keeps_it(tmp_path: Path) -> None:
    book = FileSliceBook(tmp_path / "slice_allocator.json")
    alloc = SliceAllocator(book)
    slices = {node: alloc.slice_for(node) for node in ("node-a", "node-b", "node-c")}
    assert len(set(slices.values())) == 3
    for net in slices.values():
        assert net.prefixlen == 28 and net.subnet_of(ipaddress.ip_network("10.200.0.0/16"))  # type: ignore[arg-type]
    start = fnv1a64(b"node-a") % 4096
    assert slices["node-a"] == ipaddress.ip_network(f"{ipaddress.ip_address(0x0AC80000 + start * 16)}/28")
    # a restarted node (a new allocator on the same book) gets the same slice back
    assert SliceAllocator(FileSliceBook(tmp_path / "slice_allocator.json")).slice_for("node-b") == slices["node-b"]
    assert stat.S_IMODE((tmp_path / "slice_allocator.json").stat().st_mode) == 0o600
    doc = json.loads((tmp_path / "slice_allocator.json").read_text())
    assert doc["cluster_cidr"] == "10.200.0.0/16" and ["node-c", str(slices["node-c"])] in doc["assigned"]


def test_nodes_whose_hashes_collide_get_different_slices(tmp_path: Path) -> None:
    alloc = SliceAllocator(FileSliceBook(tmp_path / "b.json", "10.200.0.0/26", 28), "10.200.0.0/26", 28)
    got = [alloc.slice_for(f"n{i}") for i in range(4)]  # 4 slices, so at least two hashes collide
    assert len(set(got)) == 4


def test_exhausted_space_is_a_clear_error_naming_the_cidr(tmp_path: Path) -> None:
    alloc = SliceAllocator(FileSliceBook(tmp_path / "b.json", "10.200.0.0/27", 28), "10.200.0.0/27", 28)
    alloc.slice_for("one")
    alloc.slice_for("two")
    with pytest.raises(OverlayError, match=r"10\.200\.0\.0/27 is exhausted: all 2 /28 slices") as err:
        alloc.slice_for("three")
    assert "three" in str(err.value)
    alloc.release("one")
    assert alloc.slice_for("three").prefixlen == 28


def test_a_book_of_another_cidr_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    SliceAllocator(FileSliceBook(path)).slice_for("x")
    with pytest.raises(OverlayError, match=r"not of 10\.100\.0\.0/16") as err:
        SliceAllocator(FileSliceBook(path, "10.100.0.0/16"), "10.100.0.0/16").slice_for("x")
    assert str(path) in str(err.value)


def test_addresses_in_a_slice_go_first_free_and_run_out_clearly() -> None:
    pool = AddressPool(ipaddress.ip_network("10.200.0.16/28"))
    first = pool.allocate()
    assert str(first) == "10.200.0.17"
    rest = [pool.allocate() for _ in range(13)]
    assert str(rest[-1]) == "10.200.0.30"
    with pytest.raises(OverlayError, match=r"10\.200\.0\.16/28 has no free address"):
        pool.allocate()
    pool.release("10.200.0.20")
    assert str(pool.allocate()) == "10.200.0.20"
