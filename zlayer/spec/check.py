"""The fast checker: ZLayer's stage 1 (types, required fields, enum spellings, unknown keys) without pydantic.

It walks the raw document with the field table generated from the pydantic models (:mod:`zlayer.spec._table`) and
the same converters (:mod:`zlayer.spec.coerce`) the models use, so it accepts and rejects what the models do, with
the same messages — at a fraction of the start-up cost. ``zlayer validate`` uses only this; :func:`parse_spec`
uses it for the problems and then builds the models.
"""

from __future__ import annotations

from zlayer.spec import coerce
from zlayer.spec._table import TABLE

TYPE_CHECKING = False  # (typing is imported for the type checker only: `zlayer validate` never loads it)
if TYPE_CHECKING:
    from typing import Any

    from zlayer.spec.loader import PathT, Problem, _Doc

_MODELS: dict[str, Any] = TABLE["models"]
_SCALARS = {
    "str": coerce._to_str,
    "tstr": coerce._to_tag_str,
    "bool": coerce._to_bool,
    "float": coerce._to_float,
    "dur": coerce._to_duration,
    "image": coerce._image_name,
    "netmode": coerce._network_mode,
    "json": coerce._json_value,
}
_PRE = {"env": coerce._env, "init": coerce._init_list}
_INTS: dict[tuple[int, int, str], Any] = {}
# Per model: accepted key → field name.
_KEYS = {name: {k: f for f, spec in m["fields"].items() for k in spec["keys"]} for name, m in _MODELS.items()}


def _expected(values: list[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


class _Checker:
    def __init__(self, doc: _Doc) -> None:
        self.doc = doc

    def value(self, v: Any, kind: list[Any], path: PathT) -> None:
        k = kind[0]
        try:
            if k in _SCALARS:
                _SCALARS[k](v)
            elif k == "int":
                key = (kind[1], kind[2], kind[3])
                conv = _INTS.get(key) or _INTS.setdefault(key, coerce.int_converter(*key))
                conv(v)
            elif k == "enum":
                s = coerce._to_str(v)
                if s not in kind[1]:
                    self.doc.problem(path, f"unknown variant `{s}`, expected one of {_expected(kind[1])}")
            elif k == "opt":
                if v is not None:
                    self.value(v, kind[1], path)
            elif k == "list":
                if not isinstance(v, list):
                    self.doc.problem(path, f"invalid type: {coerce._describe(v)}, expected a sequence")
                else:
                    for i, item in enumerate(v):
                        self.value(item, kind[1], (*path, i))
            elif k == "dict":
                if not isinstance(v, dict):
                    self.doc.problem(path, f"invalid type: {coerce._describe(v)}, expected a mapping")
                else:
                    for key, item in v.items():
                        self.value(item, kind[1], (*path, key))
            elif k == "model":
                self.model(v, kind[1], path)
            elif k == "tagged":
                self.tagged(v, kind[1], kind[2], path)
            elif k == "pre":
                self.value(_PRE[kind[1]](v), kind[2], path)
            elif k == "affinity":
                if isinstance(v, str):
                    coerce._affinity(v)
                else:
                    self.model(v, "AffinityPin", path)
        except ValueError as e:
            self.doc.problem(path, str(e))

    def tagged(self, v: Any, field: str, mapping: dict[str, str], path: PathT) -> None:
        if isinstance(v, coerce.Null):
            v = {}
        tag = v.get(field) if isinstance(v, dict) else None
        if tag is None or isinstance(tag, coerce.Null):
            line, col = self.doc.at(path)
            self.doc.problems.append(self._problem(line, col, (*path, field), f"missing field `{field}`"))
            return
        if not isinstance(tag, str) or str(tag) not in mapping:
            self.doc.problem((*path, field), f"unknown variant `{tag}`, expected one of {_expected(list(mapping))}")
            return
        self.model(v, mapping[str(tag)], path)

    def _problem(self, line: int, col: int, path: PathT, message: str) -> Problem:
        from zlayer.spec.loader import Problem, format_path

        return Problem(self.doc.source, line, col, format_path(path), message)

    def model(self, v: Any, name: str, path: PathT) -> None:
        if isinstance(v, coerce.Null):
            v = {}
        if not isinstance(v, dict):
            self.doc.problem(path, f"invalid type: {coerce._describe(v)}, expected a mapping")
            return
        m = _MODELS[name]
        keys = _KEYS[name]
        fields = m["fields"]
        seen: set[str] = set()
        for key, item in v.items():
            fname = keys.get(key)
            if fname is None:
                if m["extra"] == "forbid":
                    self.unknown(key, m["names"], (*path, key))
                continue
            spec = fields[fname]
            if fname in seen or (*path, key) in self.doc.dups:
                # serde: a field given twice (or under its alias as well) is a duplicate field.
                self.doc.problem((*path, key), f"duplicate field `{spec['keys'][0]}`", key=True)
                if fname in seen:
                    continue
            seen.add(fname)
            if isinstance(item, coerce.Null) and spec["null"] is not None:
                item = None if spec["null"] == "none" else [] if spec["null"] == "list" else {}
            self.value(item, spec["kind"], (*path, key))
        for fname, spec in fields.items():
            if spec["req"] and fname not in seen:
                key = spec["keys"][0]
                line, col = self.doc.at(path)
                self.doc.problems.append(self._problem(line, col, (*path, key), f"missing field `{key}`"))

    def unknown(self, key: str, names: list[str], path: PathT) -> None:
        import difflib

        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        if close:
            hint = f"; did you mean '{close[0]}'?"
        elif 0 < len(names) <= 12:
            hint = " (expected one of: " + ", ".join(names) + ")"
        elif names:
            hint = " (`zlayer spec schema` lists the fields of this block)"
        else:
            hint = ""
        self.doc.problem(path, f"unknown field `{key}`{hint}", key=True)


def check_document(data: dict[str, Any], doc: _Doc) -> None:
    """Append every stage-1 problem of ``data`` (the composed document) to ``doc.problems``."""
    _Checker(doc).model(data, TABLE["root"], ())
