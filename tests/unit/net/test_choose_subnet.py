"""Subnet choice for side-by-side nodes: two data dirs whose hashes pick the same /24 still get different ones, even
when neither has made its bridge yet (the daemon's lock on its /24 is what tells them apart)."""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

from zlayer.net.node import SUBNET_POOL, choose_subnet


def _first_choice(path: Path) -> str:
    candidates = list(ipaddress.IPv4Network(SUBNET_POOL).subnets(new_prefix=24))
    return str(candidates[int(hashlib.sha256(str(path.absolute()).encode()).hexdigest()[:8], 16) % len(candidates)])


def test_two_nodes_whose_hashes_collide_get_different_subnets(tmp_path: Path) -> None:
    first = tmp_path / "node-0"
    wanted = _first_choice(first)
    second = next(p for i in range(1, 5000) if _first_choice(p := tmp_path / f"node-{i}") == wanted)
    locks = tmp_path / "locks"
    a = choose_subnet(first, lock_dir=locks)
    b = choose_subnet(second, lock_dir=locks)
    assert b != a  # (a is the hashed choice unless this host already routes it)
    assert choose_subnet(first, lock_dir=locks) == a  # the same node asking again keeps its own
    assert sorted(p.name for p in locks.iterdir()) == sorted(f"{n.replace('/', '-')}.lock" for n in (a, b))
