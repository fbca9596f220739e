"""One thing wrong with a spec — the only form of it, from the YAML loader through the API to the client.

Kept apart from the loader so that the client (which reads problems back from the API's JSON) need not import
PyYAML or pydantic to show them.
"""

from __future__ import annotations

from collections import namedtuple

from zlayer.errors import escape_controls

TYPE_CHECKING = False  # (typing is imported for the type checker only: `zlayer validate` never loads it)
if TYPE_CHECKING:
    from typing import Any, NamedTuple

    class _Fields(NamedTuple):
        file: str = ""
        line: int = 0
        col: int = 0
        path: str = ""
        message: str = ""

else:
    _Fields = namedtuple("_Fields", "file line col path message", defaults=("", 0, 0, "", ""))


class Problem(_Fields):
    """Where (file, 1-based line and column; empty/0 when not known), which field (``services.web.image.name``)
    and what is wrong. (A named tuple: a dataclass, or typing's NamedTuple, would cost `zlayer validate` a sixth of
    its start-up.)"""

    __slots__ = ()

    def __str__(self) -> str:
        # a value quoted in the message, a key in the path, may hold any character: shown escaped, never raw
        head = f"{escape_controls(self.file)}:{self.line}:{self.col}: " if self.file else ""
        said = escape_controls(self.message)
        return f"{head}{escape_controls(self.path)}: {said}" if self.path else f"{head}{said}"

    def to_json(self) -> dict[str, Any]:
        return {"file": escape_controls(self.file), "line": self.line, "col": self.col,
                "path": escape_controls(self.path), "message": escape_controls(self.message)}  # fmt: skip

    @classmethod
    def from_json(cls, raw: Any) -> Problem:
        """Read back what :meth:`to_json` wrote (a bare string becomes the message)."""
        if not isinstance(raw, dict):
            return cls(message=str(raw))
        return cls(
            str(raw.get("file") or ""),
            int(raw.get("line") or 0),
            int(raw.get("col") or 0),
            str(raw.get("path") or ""),
            str(raw.get("message") or ""),
        )


__all__ = ["Problem"]
