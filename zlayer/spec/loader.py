# ruff: noqa: E501
"""Load a spec with positions and report every problem at once, each as ``FILE:LINE:COL: path: message``.

The YAML is composed with libyaml (``yaml.CSafeLoader``) so every node keeps its start mark; scalars are handed to
the models as raw text (``Plain`` for plain scalars) exactly as serde_yaml does. Then three passes run and all their
problems are collected: the pydantic models (types, required fields, enum spellings, unknown keys), and ZLayer's
validation stages 2-7 (:mod:`zlayer.spec.rules`), which work on the raw document so they still report when another
part of the spec failed to parse.
"""

from __future__ import annotations

import os
import re

import yaml

from zlayer.errors import SpecError
from zlayer.limits import MAX_NESTING, MAX_SPEC_BYTES
from zlayer.spec.coerce import Null, Plain
from zlayer.spec.problem import Problem

TYPE_CHECKING = False  # (typing is imported for the type checker only: `zlayer validate` never loads it)
if TYPE_CHECKING:
    from typing import Any

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


_MAX_DEPTH = MAX_NESTING


class _LimitError(Exception):
    def __init__(self, node: yaml.Node | yaml.Event, message: str) -> None:
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


def _compose_nodes(loader: Any, source: str) -> yaml.Node | None:
    """The document's node tree, composed from libyaml's events with an explicit stack.

    PyYAML's own composer recurses once per level on the C stack (about 50,000 ``[`` crash the process); libyaml's
    parser is iterative, so nesting is refused here the moment it passes the limit, before anything recurses.
    Otherwise this is PyYAML's composer: same tags, anchors, marks and errors."""
    get, resolve, error = loader.get_event, loader.resolve, yaml.composer.ComposerError
    get()  # stream start
    if loader.check_event(yaml.StreamEndEvent):
        get()
        return None
    document = get()
    anchors: dict[str, yaml.Node] = {}
    stack: list[Any] = []  # the open collections, innermost last
    keys: list[Any] = []  # per open collection: a mapping's key waiting for its value (None: none, or a sequence)
    root: yaml.Node | None = None
    while root is None:
        ev = get()
        kind = type(ev)
        node: Any
        if kind is yaml.ScalarEvent:
            tag = ev.tag
            if tag is None or tag == "!":
                tag = resolve(yaml.ScalarNode, ev.value, ev.implicit)
            node = yaml.ScalarNode(tag, ev.value, ev.start_mark, ev.end_mark, style=ev.style)
        elif kind is yaml.SequenceEndEvent or kind is yaml.MappingEndEvent:
            node = stack.pop()
            keys.pop()
            node.end_mark = ev.end_mark
            if stack:
                _attach(stack, keys, node)
                continue
            root = node
            break
        elif kind is yaml.AliasEvent:
            if ev.anchor not in anchors:
                raise error(None, None, f"found undefined alias {ev.anchor!r}", ev.start_mark)
            node = anchors[ev.anchor]
            if stack:
                _attach(stack, keys, node)
                continue
            root = node
            break
        else:  # a sequence or mapping starts
            if len(stack) >= _MAX_DEPTH:
                raise _LimitError(ev, f"recursion limit exceeded (nesting deeper than {_MAX_DEPTH} levels)")
            cls = yaml.SequenceNode if kind is yaml.SequenceStartEvent else yaml.MappingNode
            tag = ev.tag
            if tag is None or tag == "!":
                tag = resolve(cls, None, ev.implicit)
            node = cls(tag, [], ev.start_mark, None, flow_style=ev.flow_style)
        if ev.anchor is not None:
            if ev.anchor in anchors:
                raise error("found duplicate anchor; first occurrence", anchors[ev.anchor].start_mark,
                            "second occurrence", ev.start_mark)  # fmt: skip
            anchors[ev.anchor] = node
        if kind is not yaml.ScalarEvent:
            stack.append(node)
            keys.append(None)
        elif stack:
            _attach(stack, keys, node)
        else:
            root = node
    get()  # document end
    if not loader.check_event(yaml.StreamEndEvent):
        ev = get()
        raise error("expected a single document in the stream", document.start_mark,
                    "but found another document", ev.start_mark)  # fmt: skip
    return root


def _attach(stack: list[Any], keys: list[Any], node: yaml.Node) -> None:
    """Put a finished node into the innermost open collection (a mapping takes key, then value)."""
    parent = stack[-1]
    if type(parent) is yaml.SequenceNode:
        parent.value.append(node)
    elif keys[-1] is None:
        keys[-1] = node
    else:
        parent.value.append((keys[-1], node))
        keys[-1] = None


def _unicode_problem(text: str, source: str) -> Problem | None:
    """A lone surrogate (``"\\ud800"`` in a JSON request) is not text libyaml can read: say where it is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        line = text.count("\n", 0, e.start) + 1
        col = e.start - (text.rfind("\n", 0, e.start) + 1) + 1
        return Problem(source, line, col, "", f"not valid Unicode text (a lone surrogate U+{ord(text[e.start]):04X})")
    return None


def _compose(text: str, source: str) -> tuple[_Doc, Any]:
    if len(text) > MAX_SPEC_BYTES:
        p = Problem(source, 1, 1, "", f"spec too large ({len(text)} characters; at most {MAX_SPEC_BYTES} are accepted)")
        raise SpecError(str(p), problems=[p])
    bad = _unicode_problem(text, source)
    if bad is not None:
        raise SpecError(str(bad), problems=[bad])
    doc = _Doc(source)
    loader = yaml.CSafeLoader(text) if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader(text)
    try:
        node = _compose_nodes(loader, source)
        if node is None:
            p = Problem(source, 1, 1, "", "spec is empty (expected a mapping with version, deployment and services)")
            raise SpecError(str(p), problems=[p])
        data = doc.convert(node, ())
    except yaml.YAMLError as e:
        raise _yaml_error(source, e) from None
    except _LimitError as e:
        m = e.node.start_mark
        line, col = (m.line + 1, m.column + 1) if m is not None else (1, 1)
        p = Problem(source, line, col, "", e.message)
        raise SpecError(str(p), problems=[p]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        doc.problem((), "a deployment spec must be a YAML mapping (version, deployment, services, ...)")
        raise SpecError(str(doc.problems[0]), problems=doc.problems)
    return doc, data


# --- pydantic errors → problems ------------------------------------------------------------------------------------------


def _unwrap(tp: Any) -> Any:
    import typing  # (pydantic's failures only)

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
    import typing  # (pydantic's failures only)

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


def parse_deployable(text: str, source: str = "<string>") -> DeploymentSpec:
    """:func:`parse_spec`, and also refuse what no Linux container can be built from (:mod:`zlayer.spec.container`:
    fields ZLayer's parser leaves unchecked). The daemon validates a deploy with this, once, so that nothing below
    the API meets a spec error."""
    from zlayer.spec.container import container_problems

    spec = parse_spec(text, source)
    found = container_problems(spec)
    if found:
        doc, _ = _compose(text, source)
        for path, message in found:
            doc.problem(path, message)
        _raise(doc, source)
    return spec


def read_spec_text(path: str | os.PathLike[str]) -> tuple[str, str]:
    """Resolve ``path`` (a file, or a directory holding exactly one spec) and read it: (source name, text)."""
    # (os.path, not pathlib: importing pathlib is a tenth of a `zlayer validate FILE`)
    p = os.fspath(path)
    if os.path.isdir(p):
        from zlayer.spec.discovery import discover_spec_path

        p = os.fspath(discover_spec_path(None, cwd=p))
    source = p
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)  # a FIFO or /dev/zero must not fill memory
    except FileNotFoundError:
        raise SpecError(f"{source}: spec file not found", where=None) from None
    except IsADirectoryError:
        raise SpecError(f"{source}: is a directory, not a spec file") from None
    except PermissionError:
        raise SpecError(f"{source}: permission denied reading the spec file") from None
    except OSError as e:
        raise SpecError(f"{source}: cannot read spec file: {e.strerror or e}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{source}: spec file too large (over {MAX_SPEC_BYTES} bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        p2 = Problem(source, line, col, "", f"spec file is not UTF-8 text (byte {e.start}: 0x{raw[e.start]:02x})")
        raise SpecError(str(p2), problems=[p2]) from None
    if not text.strip():
        p2 = Problem(source, 1, 1, "", "spec file is empty (expected version, deployment and services)")
        raise SpecError(str(p2), problems=[p2])
    return source, text


def read_spec_document(path: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """Read a spec file into its raw document (scalars as text) within the limits, without checking it."""
    source, text = read_spec_text(path)
    return source, _compose(text, source)[1]


def check_spec(path: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """Read and check a spec file without building models: (source name, raw document)."""
    source, text = read_spec_text(path)
    return source, check_spec_text(text, source)


def load_spec(path: str | os.PathLike[str]) -> DeploymentSpec:
    """Read and validate a spec file (or the single spec in a directory)."""
    source, text = read_spec_text(path)
    return parse_spec(text, source)


__all__ = [
    "Problem",
    "check_spec",
    "check_spec_text",
    "format_path",
    "load_spec",
    "parse_deployable",
    "parse_spec",
    "read_spec_document",
    "read_spec_text",
]
