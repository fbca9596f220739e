"""The context's remembered file digests (issue 18's rebuild): a file whose stat is unchanged is not read again, and
any change — even one that keeps the size and puts the old mtime back — is seen; a file changed just before the
record was made is not remembered (its change could hide within the timestamps' granularity)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from zlayer.builder.context import FileHashes, tree_digest


def test_a_remembered_digest_is_used_until_the_file_changes(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    f = ctx / "a.txt"
    f.write_text("one\n")
    old = os.stat(f).st_mtime_ns - 10_000_000_000
    os.utime(f, ns=(old, old))
    record = tmp_path / "hashes"
    first = tree_digest(ctx, ["a.txt"], None, hashes=(h := FileHashes(record)))
    h.save()
    assert first == tree_digest(ctx, ["a.txt"], None)  # the same key, remembered or not

    # the file's ctime is recent (utime changed it): not remembered yet, read again next time
    assert FileHashes(record).known == {}
    FileHashes.RACY_NS, racy = 0, FileHashes.RACY_NS
    try:
        h = FileHashes(record)
        tree_digest(ctx, ["a.txt"], None, hashes=h)
        h.save()
        remembered = FileHashes(record)
        assert list(remembered.known) == [str(f)]
        # the same size, the old mtime put back: the ctime still tells (past the kernel's coarse clock tick)
        time.sleep(0.05)
        f.write_text("two\n")
        os.utime(f, ns=(old, old))
        assert tree_digest(ctx, ["a.txt"], None, hashes=remembered) != first
        assert tree_digest(ctx, ["a.txt"], None, hashes=remembered) == tree_digest(ctx, ["a.txt"], None)
    finally:
        FileHashes.RACY_NS = racy
