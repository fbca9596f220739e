# ruff: noqa: E501
"""Load a spec with positions and report every problem at once, each as ``FILE:LINE:COL: path: message``.

The YAML is composed with libyaml (``yaml.CSafeLoader``) so every node keeps its start mark; scalars are handed to
the models as raw text (``Plain`` for plain scalars) exactly as serde_yaml does. Then three passes run and all their
problems are collected: the pydantic models (types, required fields, enum spellings, unknown keys), and ZLayer's
validation stages 2-7 (:mod:`zlayer.spec.rules`), which work on the raw document so they still report when another
part of the spec failed to parse.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from zlayer.errors import SpecError
from zlayer.spec.coerce import Null, Plain
from zlayer.spec.problem import Problem

if TYPE_CHECKING:
    from zlayer.spec.models import DeploymentSpec

PathT = tuple[str | int, ...]

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")


def format_path(path: PathT) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + p
    return out


class _Doc:
    """The composed document: Python values plus the mark of every node and mapping key, by path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.marks: dict[PathT, tuple[int, int]] = {}
        self.key_marks: dict[PathT, tuple[int, int]] = {}
        self.problems: list[Problem] = []
        self.dups: set[PathT] = set()

    def at(self, path: PathT, *, key: bool = False) -> tuple[int, int]:
        if key and path in self.key_marks:
            return self.key_marks[path]
        p = path
        while p not in self.marks and p:
            p = p[:-1]
        return self.marks.get(p, (1, 1))

    def problem(self, path: PathT, message: str, *, key: bool = False) -> None:
        line, col = self.at(path, key=key)
        self.problems.append(Problem(self.source, line, col, format_path(path), message))

    def convert(self, node: yaml.Node, path: PathT) -> Any:
        """Node tree → values; serde_yaml's limits apply: nesting deeper than 128 levels and more alias expansions
        than 100 × the document's events are errors (this also stops recursive aliases and alias bombs)."""
        self._limit = 100 * _count_events(node)
        self._jumps = 0
        self._seen: set[int] = set()
        return self._convert(node, path, 0)

    def _convert(self, node: yaml.Node, path: PathT, depth: int) -> Any:
        if id(node) in self._seen:
            self._jumps += 1
            if self._jumps > self._limit:
                raise _LimitError(node, "repetition limit exceeded (too many alias expansions)")
        else:
            self._seen.add(id(node))
        self.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.ScalarNode):
            if not node.style:
                if node.tag == "tag:yaml.org,2002:null" or _NULL.match(node.value):
                    return Null(node.value)
                return Plain(node.value)
            return str(node.value)
        if depth >= _MAX_DEPTH:
            raise _LimitError(node, f"recursion limit exceeded (nesting deeper than {_MAX_DEPTH} levels)")
        if isinstance(node, yaml.SequenceNode):
            return [self._convert(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for knode, vnode in node.value:
                key = str(knode.value) if isinstance(knode, yaml.ScalarNode) else str(knode)
                kpath = (*path, key)
                self.key_marks[kpath] = (knode.start_mark.line + 1, knode.start_mark.column + 1)
                if key in out:
                    # serde: a repeated field of a struct is an error (the checker reports it); a map keeps the last.
                    self.dups.add(kpath)
                    del out[key]
                out[key] = self._convert(vnode, kpath, depth + 1)
            return out
        return None


_MAX_DEPTH = 128


class _LimitError(Exception):
    def __init__(self, node: yaml.Node, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message


def _count_events(root: yaml.Node) -> int:
    """How many parser events the document has (what serde_yaml's repetition limit is relative to)."""
    events = 4  # stream and document start/end
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            events += 1  # an alias event
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            events += 1
        elif isinstance(node, yaml.SequenceNode):
            events += 2
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            events += 2
            for k, v in node.value:
                stack.append(k)
                stack.append(v)
    return events


def _yaml_error(source: str, err: yaml.YAMLError) -> SpecError:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    what = getattr(err, "problem", None) or str(err)
    ctx = getattr(err, "context", None)
    msg = f"malformed YAML: {what}" + (f" ({ctx})" if ctx else "")
    p = Problem(source, line, col, "", msg)
    return SpecError(str(p), problems=[p])


def _compose(text: str, source: str) -> tuple[_Doc, Any]:
    doc = _Doc(source)
    loader = yaml.CSafeLoader(text) if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as e:
        raise _yaml_error(source, e) from None
    except RecursionError:
        p = Problem(source, 1, 1, "", f"recursion limit exceeded (nesting deeper than {_MAX_DEPTH} levels)")
        raise SpecError(str(p), problems=[p]) from None
    finally:
        loader.dispose()
    if node is None:
        p = Problem(source, 1, 1, "", "spec is empty (expected a mapping with version, deployment and services)")
        raise SpecError(str(p), problems=[p])
    try:
        data = doc.convert(node, ())
    except _LimitError as e:
        m = e.node.start_mark
        p = Problem(source, m.line + 1, m.column + 1, "", e.message)
        raise SpecError(str(p), problems=[p]) from None
    if not isinstance(data, dict):
        doc.problem((), "a deployment spec must be a YAML mapping (version, deployment, services, ...)")
        raise SpecError(str(doc.problems[0]), problems=doc.problems)
    return doc, data


# --- pydantic errors → problems ------------------------------------------------------------------------------------------


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _field(model: Any, name: str) -> Any:
    fields = model.model_fields
    if name in fields:
        return fields[name]
    for f in fields.values():
        if f.alias == name:
            return f
        va = f.validation_alias
        if va is not None and name in getattr(va, "choices", [va]):
            return f
    return None


def _field_names(model: Any) -> list[str]:
    names = []
    for n, f in model.model_fields.items():
        if f.exclude and n != "host_network":
            continue
        names.append(f.alias or n)
        va = f.validation_alias
        for c in getattr(va, "choices", []) if va is not None else []:
            if isinstance(c, str) and c not in names:
                names.append(c)
    return names


def _model_at(loc: tuple[Any, ...]) -> Any:
    """The model class that owns the mapping at ``loc`` (a pydantic error location), or None."""
    from pydantic import BaseModel

    from zlayer.spec.models import DeploymentSpec

    tp: Any = DeploymentSpec
    for part in loc:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            members = [_unwrap(a) for a in typing.get_args(tp) if a is not type(None)]
            pick = None
            for m in members:
                if isinstance(m, type) and issubclass(m, BaseModel):
                    tagf = next((f for f in ("type", "mode") if f in m.model_fields), None)
                    if tagf and part in typing.get_args(m.model_fields[tagf].annotation):
                        pick = m
                        break
            if pick is not None:
                tp = pick
                continue
            models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
            if len(models) == 1:
                tp = models[0]
            elif any(typing.get_origin(_unwrap(m)) in (list, dict) for m in members):
                tp = next(m for m in members if typing.get_origin(_unwrap(m)) in (list, dict))
            else:
                continue
            tp = _unwrap(tp)
            origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            f = _field(tp, str(part))
            if f is None:
                if part in ("function-before", "function-after") or "[" in str(part):
                    continue
                return None
            tp = f.annotation
        elif origin is list:
            tp = typing.get_args(tp)[0]
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
    tp = _unwrap(tp)
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        models = [_unwrap(a) for a in typing.get_args(tp) if a is not type(None)]
        models = [m for m in models if isinstance(m, type) and issubclass(m, BaseModel)]
        tp = models[0] if len(models) == 1 else None
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _data_path(data: Any, loc: tuple[Any, ...]) -> tuple[PathT, tuple[Any, ...]]:
    """Strip union tags and validator names from a pydantic loc, keeping the parts that index the document."""
    path: list[str | int] = []
    kept: list[Any] = []
    cur = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(cur, dict) and str(part) in cur:
            path.append(str(part))
            kept.append(part)
            cur = cur[str(part)]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            path.append(part)
            kept.append(part)
            cur = cur[part]
        elif isinstance(cur, dict) and last:
            path.append(str(part))  # a missing or unknown key of this mapping
            kept.append(part)
        elif isinstance(cur, dict) and str(part) not in cur and not isinstance(part, int) and _is_tag(part):
            kept.append(part)  # discriminated-union tag (e.g. 'fixed'): not in the document
        else:
            continue
    return tuple(path), tuple(kept)


def _is_tag(part: Any) -> bool:
    return isinstance(part, str)


def _serde_message(err: dict[str, Any], value_present: bool) -> str:
    t = err["type"]
    msg = str(err["msg"])
    ctx = err.get("ctx") or {}
    inp = err.get("input")
    if t == "missing":
        return f"missing field `{err['loc'][-1]}`"
    if t == "value_error":
        return msg.removeprefix("Value error, ")
    if t == "literal_error":
        exp = str(ctx.get("expected", "")).replace(" or ", ", ")
        return f"unknown variant `{inp}`, expected one of {exp}"
    if t in ("union_tag_invalid",):
        exp = str(ctx.get("expected_tags", "")).replace(" or ", ", ")
        return f"unknown variant `{ctx.get('tag')}`, expected one of {exp}"
    if t == "union_tag_not_found":
        return f"missing field `{ctx.get('discriminator', '').strip(chr(39))}`"
    if t in ("dict_type", "model_type", "model_attributes_type"):
        return f"invalid type: {_describe_input(inp)}, expected a mapping"
    if t == "list_type":
        return f"invalid type: {_describe_input(inp)}, expected a sequence"
    if t == "string_type":
        return f"invalid type: {_describe_input(inp)}, expected a string"
    return msg


def _describe_input(v: Any) -> str:
    from zlayer.spec.coerce import _describe

    return _describe(v)


def _pydantic_problems(doc: _Doc, data: dict[str, Any], exc: Any) -> None:
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path, kept = _data_path(data, loc)
        t = err["type"]
        if t == "extra_forbidden":
            key = str(path[-1]) if path else str(loc[-1])
            model = _model_at(kept[:-1])
            names = _field_names(model) if model is not None else []
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            if close:
                hint = f"; did you mean '{close[0]}'?"
            elif 0 < len(names) <= 12:
                hint = " (expected one of: " + ", ".join(names) + ")"
            elif names:
                hint = " (`zlayer spec schema` lists the fields of this block)"
            else:
                hint = ""
            doc.problem(path, f"unknown field `{key}`{hint}", key=True)
        elif t == "missing" or t == "union_tag_not_found":
            # Point at the mapping that lacks the key.
            parent = path[:-1] if t == "missing" else path
            line, col = doc.at(parent)
            name = str(loc[-1]) if t == "missing" else "type/mode"
            if t == "union_tag_not_found":
                name = str((err.get("ctx") or {}).get("discriminator", "")).strip("'")
                if not name.isidentifier():
                    name = _tag_name(kept)
                path = (*path, name)
            doc.problems.append(Problem(doc.source, line, col, format_path(path), f"missing field `{name}`"))
        elif t == "union_tag_invalid":
            tagname = _tag_name(kept)
            tpath = (*path, tagname)
            exp = str((err.get("ctx") or {}).get("expected_tags", "")).replace(" or ", ", ")
            tag = (err.get("ctx") or {}).get("tag")
            doc.problem(tpath, f"unknown variant `{tag}`, expected one of {exp}")
        else:
            doc.problem(path, _serde_message(err, True))


def _tag_name(kept: tuple[Any, ...]) -> str:
    model_parent = kept[-2] if len(kept) >= 2 else None
    last = kept[-1] if kept else None
    if last == "scale" or model_parent == "scale":
        return "mode"
    return "type"


# --- public entry points ---------------------------------------------------------------------------------------------------


def _raise(doc: _Doc, source: str) -> None:
    problems = sorted(set(doc.problems), key=lambda p: (p.line, p.col, p.path, p.message))
    n = len(problems)
    head = f"{source}: invalid spec ({n} problem{'s' if n != 1 else ''})"
    raise SpecError(head + "\n" + "\n".join(str(p) for p in problems), problems=problems)


def check_spec_text(text: str, source: str = "<string>") -> dict[str, Any]:
    """Every check ZLayer makes (stages 1-7), without building models: returns the raw document (scalars as text).

    Raises :class:`SpecError` listing every problem. ``zlayer validate`` uses this: no pydantic import.
    """
    from zlayer.spec.check import check_document
    from zlayer.spec.rules import check_rules

    if not text.strip():
        p = Problem(source, 1, 1, "", "spec is empty (expected a mapping with version, deployment and services)")
        raise SpecError(str(p), problems=[p])
    doc, data = _compose(text, source)
    check_document(data, doc)
    check_rules(data, doc)
    if doc.problems:
        _raise(doc, source)
    return data


def parse_spec(text: str, source: str = "<string>") -> DeploymentSpec:
    """Parse and validate spec text; raises :class:`SpecError` listing every problem with its position."""
    from pydantic import ValidationError

    from zlayer.spec.models import DeploymentSpec

    data = check_spec_text(text, source)
    try:
        return DeploymentSpec.model_validate(data)
    except ValidationError as e:  # the fast checker and the models disagree: still report, with positions
        doc, data = _compose(text, source)
        _pydantic_problems(doc, data, e)
        _raise(doc, source)
        raise


def read_spec_text(path: str | os.PathLike[str]) -> tuple[str, str]:
    """Resolve ``path`` (a file, or a directory holding exactly one spec) and read it: (source name, text)."""
    p = Path(path)
    if p.is_dir():
        from zlayer.spec.discovery import discover_spec_path

        p = discover_spec_path(None, cwd=p)
    source = str(path) if not Path(path).is_dir() else str(p)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"{source}: spec file not found", where=None) from None
    except IsADirectoryError:
        raise SpecError(f"{source}: is a directory, not a spec file") from None
    except PermissionError:
        raise SpecError(f"{source}: permission denied reading the spec file") from None
    except OSError as e:
        raise SpecError(f"{source}: cannot read spec file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{source}: spec file is not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        p2 = Problem(source, 1, 1, "", "spec file is empty (expected version, deployment and services)")
        raise SpecError(str(p2), problems=[p2])
    return source, text


def check_spec(path: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """Read and check a spec file without building models: (source name, raw document)."""
    source, text = read_spec_text(path)
    return source, check_spec_text(text, source)


def load_spec(path: str | os.PathLike[str]) -> DeploymentSpec:
    """Read and validate a spec file (or the single spec in a directory)."""
    source, text = read_spec_text(path)
    return parse_spec(text, source)


__all__ = ["Problem", "check_spec", "check_spec_text", "format_path", "load_spec", "parse_spec", "read_spec_text"]
