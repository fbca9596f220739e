"""The build context: which files a build may read (``.dockerignore``), COPY sources by name or glob, and the
digest of what a COPY takes (part of its cache key).

``.dockerignore`` follows Docker's rules: one pattern a line, ``#`` comments, Go's ``filepath.Match`` per path
component plus ``**`` for any number of components, ``!`` re-includes, the last matching line wins, and a pattern
that matches a directory excludes everything below it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zlayer.errors import UsageError
from zlayer.paths import write_atomic


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise UsageError(f"bad pattern {pattern!r}: '[' without ']'")
            body = pattern[i + 1 : end]
            if body.startswith("^"):
                body = "!" + body[1:]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = end
        elif c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 1
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.S)


def _clean(path: str) -> str:
    parts: list[str] = []
    for p in path.replace("\\", "/").split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if parts:
                parts.pop()
            continue
        parts.append(p)
    return "/".join(parts)


@dataclass(frozen=True)
class IgnoreRules:
    """The patterns of a ``.dockerignore`` (in order, each with whether it re-includes)."""

    rules: tuple[tuple[re.Pattern[str], bool], ...] = ()

    @classmethod
    def read(cls, path: Path) -> IgnoreRules:
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            return cls()
        rules = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = _clean(line[1:].strip() if negate else line)
            if pattern:
                rules.append((_pattern_regex(pattern), negate))
        return cls(tuple(rules))

    def excluded(self, rel: str) -> bool:
        """Whether the context path ``rel`` (``a/b/c``) is left out: the last pattern matching it or one of its
        parent directories decides."""
        if not self.rules:
            return False
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for regex, negate in self.rules:
            if any(regex.match(p) for p in (prefixes if not negate else [rel])):
                result = not negate
        return result

    def may_hold_included(self, rel_dir: str) -> bool:
        """Whether a directory that is excluded may still hold a re-included path (a ``!`` pattern below it)."""
        return any(negate for _, negate in self.rules)


class FileHashes:
    """The sha256 of a context's files, remembered by what ``lstat`` says of each (size, mtime, ctime, inode), so a
    rebuild reads only the files that changed (git's index does the same). A file changed less than
    :data:`RACY_NS` before the record was made is not remembered: a change within the timestamps' granularity could
    leave its stat as it was."""

    RACY_NS = 2_000_000_000

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.known: dict[str, list[Any]] = {}
        self.seen: dict[str, str] = {}  # this build's digests, racy ones too (what its cache keys were made of)
        self.dirty = False
        if path is not None:
            try:
                loaded = json.loads(path.read_bytes())
                if isinstance(loaded, dict):
                    self.known = loaded
            except (OSError, ValueError):
                pass

    def digest(self, full: str, st: os.stat_result) -> bytes:
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        entry = self.known.get(full)
        if entry is not None and entry[:4] == stamp:
            self.seen[full] = entry[4]
            return bytes.fromhex(entry[4])
        h = hashlib.sha256()
        with open(full, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        self.seen[full] = h.hexdigest()
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > self.RACY_NS:
            self.known[full] = [*stamp, h.hexdigest()]
            self.dirty = True
        return h.digest()

    def remembered(self, full: str) -> str | None:
        """The digest (hex) this build took of ``full`` to key its steps, without reading the file again."""
        return self.seen.get(full)

    def save(self) -> None:
        if self.path is not None and self.dirty:
            write_atomic(self.path, json.dumps(self.known, separators=(",", ":")), durable=False)
            self.dirty = False


@dataclass
class BuildContext:
    """The context directory, its ``.dockerignore`` and the digests of its files (:class:`FileHashes`)."""

    root: Path
    ignore: IgnoreRules = field(default_factory=IgnoreRules)
    hashes: FileHashes = field(default_factory=FileHashes)

    @classmethod
    def open(cls, root: Path, hashes_dir: Path | None = None) -> BuildContext:
        """The context at ``root``; with ``hashes_dir``, its files' digests are remembered there between builds."""
        root = root.resolve()
        if not root.is_dir():
            raise UsageError(f"build context {root} is not a directory")
        record = None
        if hashes_dir is not None:
            record = hashes_dir / hashlib.sha256(str(root).encode(errors="surrogateescape")).hexdigest()[:32]
        return cls(root, IgnoreRules.read(root / ".dockerignore"), FileHashes(record))

    def walk(self, rel_dir: str = "") -> list[str]:
        """Every context path (files, links, directories) below ``rel_dir``, not ignored, sorted."""
        out: list[str] = []
        base = self.root / rel_dir if rel_dir else self.root
        for dirpath, dirnames, filenames in os.walk(base):
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel
            keep = []
            for d in sorted(dirnames):
                r = f"{rel}/{d}" if rel else d
                if not self.ignore.excluded(r):
                    out.append(r)
                    keep.append(d)
                elif self.ignore.may_hold_included(r):
                    keep.append(d)  # walk on: a '!' pattern may bring something below back
            dirnames[:] = keep
            for f in sorted(filenames):
                r = f"{rel}/{f}" if rel else f
                if not self.ignore.excluded(r):
                    out.append(r)
        return sorted(out)

    def sources(self, pattern: str, where: str) -> list[str]:
        """The context paths a COPY source names (a path or a glob), as relative paths; none is an error."""
        rel = _clean(pattern)
        if rel.startswith("../") or rel == "..":
            rel = ""
        if not any(c in rel for c in "*?["):
            path = self.root / rel if rel else self.root
            if not os.path.lexists(path) or (rel and self.ignore.excluded(rel)):
                raise UsageError(
                    f"{where}: source {pattern!r} not found in the build context {self.root}",
                    hint="check the path (relative to the context) and .dockerignore",
                )
            return [rel]
        regex = _pattern_regex(rel)
        depth = rel.count("/")
        found = [p for p in self.walk() if p.count("/") == depth and regex.match(p)]
        if not found:
            raise UsageError(f"{where}: no file in the build context {self.root} matches {pattern!r}")
        return found


def tree_digest(
    root: Path, rels: list[str], ignore: IgnoreRules | None, *, below: bool = True, hashes: FileHashes | None = None
) -> str:
    """The sha256 of what copying ``rels`` from ``root`` takes: names, types, modes, link targets and the digests of
    contents (of directories: what is below them, minus what ``ignore`` excludes). ``hashes`` remembers them."""
    h = hashlib.sha256()
    files = hashes or FileHashes()

    def one(rel: str, path: str) -> None:
        st = os.lstat(path)
        h.update(f"{rel}\0{st.st_mode:o}\0".encode())
        if stat.S_ISLNK(st.st_mode):
            h.update(os.readlink(path).encode(errors="surrogateescape"))
        elif stat.S_ISREG(st.st_mode):
            h.update(files.digest(path, st))
        h.update(b"\n")

    top = len(str(root).rstrip("/")) + 1
    for rel in rels:
        path = os.path.join(root, rel) if rel else str(root)
        one(rel, path)
        if below and os.path.isdir(path) and not os.path.islink(path):
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for name in sorted(dirnames) + sorted(filenames):
                    full = f"{dirpath}/{name}"
                    r = full[top:]  # relative to root (os.path.relpath, without its cost per file)
                    if ignore is not None and ignore.excluded(r):
                        continue
                    one(r, full)
    return "sha256:" + h.hexdigest()
