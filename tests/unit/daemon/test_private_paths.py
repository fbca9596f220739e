"""The data, run and log dirs are made closed to other users (issue 11, items 1 and 2) — but a directory every user
may write to (``--data-dir /tmp``) is refused rather than taken over and closed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from zlayer.errors import UsageError
from zlayer.paths import Paths, write_atomic


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_make_private_closes_the_top_level_an_older_version_left_open(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "bundles").mkdir(parents=True)
    (data / "config.json").write_text("{}")
    os.chmod(data, 0o755)
    os.chmod(data / "bundles", 0o755)
    os.chmod(data / "config.json", 0o644)
    paths = Paths.resolve(data)
    paths.make_private()
    assert (mode(data), mode(paths.run_dir), mode(paths.log_dir)) == (0o711, 0o711, 0o700)
    assert (mode(data / "bundles"), mode(data / "config.json")) == (0o700, 0o600)


def test_a_data_dir_every_user_may_write_to_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "someone-elses").write_text("x")
    os.chmod(shared, 0o1777)
    os.chmod(shared / "someone-elses", 0o644)
    with pytest.raises(UsageError, match="writable by every user of this host"):
        Paths.resolve(shared).make_private()
    assert mode(shared) == 0o1777 and mode(shared / "someone-elses") == 0o644


def test_write_atomic_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_atomic(tmp_path / "token", "t0k\n")
    finally:
        os.umask(old)
    assert mode(tmp_path / "token") == 0o600 and (tmp_path / "token").read_text() == "t0k\n"
    assert [p.name for p in tmp_path.iterdir()] == ["token"]
