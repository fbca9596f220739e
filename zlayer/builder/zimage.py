"""ZImagefile: ZLayer's YAML build format, read into the same typed instructions a Dockerfile gives.

Four modes, exactly one per file: ``runtime:`` (a runtime template, :mod:`zlayer.builder.templates`), single-stage
``base:`` + ``steps:``, multi-stage ``stages:`` (a map in order; the last stage is the image), and ``wasm:`` (read
into a :class:`WasmBuild`, which :mod:`zlayer.builder.wasm` hands to ``zlayer wasm build``). Image metadata at the
top (``env``, ``workdir``, ``expose``, ``cmd``, ``entrypoint``, ``user``, ``labels``, ``volumes``, ``healthcheck``,
``stopsignal``, ``args``) applies to the final image. Every instruction keeps the line of its step; every problem is a
:class:`~zlayer.errors.SpecError` whose problems read ``FILE:LINE:COL: field.path: what is wrong``, as spec errors
do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from zlayer.builder.dockerfile import Dockerfile, Instruction, Stage, parse
from zlayer.errors import SpecError
from zlayer.spec.problem import Problem

_TOP = {"version", "runtime", "base", "build", "steps", "platform", "stages", "wasm", "env", "workdir", "expose",
        "cmd", "entrypoint", "user", "labels", "volumes", "healthcheck", "stopsignal", "args"}  # fmt: skip
_STAGE = {"base", "build", "platform", "args", "env", "workdir", "steps", "labels", "expose", "user", "entrypoint",
          "cmd", "volumes", "healthcheck", "stopsignal"}  # fmt: skip
_STEP = {"run", "copy", "add", "env", "workdir", "user", "to", "from", "owner", "chmod", "cache"}
_ACTIONS = ("run", "copy", "add", "env", "workdir", "user")
_CACHE = {"target", "id", "sharing", "readonly"}
_HEALTH = {"cmd", "interval", "timeout", "start_period", "retries"}
_WASM = {"target", "optimize", "opt_level", "language", "wit", "world", "output", "features", "build_args",
         "pre_build", "post_build", "adapter", "oci"}  # fmt: skip
_WASM_TARGETS = {"preview1": "wasip1", "preview2": "wasip2", "wasip1": "wasip1", "wasip2": "wasip2"}
_WASM_LANGUAGES = ("c", "rust", "python")  # what `zlayer wasm build` compiles
_OPT_LEVELS = ("O", "O1", "O2", "O3", "O4", "Os", "Oz")
_META = ("labels", "expose", "user", "entrypoint", "cmd", "volumes", "healthcheck", "stopsignal")


@dataclass
class WasmBuild:
    """A ZImagefile's ``wasm:`` mode: what ``zlayer wasm build`` is given (``target`` as it names it: wasip1 or
    wasip2, from ZLayer's preview1/preview2), the commands run around it, and whether the program also becomes an
    OCI artifact in the local store (``oci``, ZLayer's default true)."""

    file: str
    line: int
    target: str = "wasip2"
    optimize: bool = False
    language: str | None = None
    wit: str | None = None
    world: str | None = None
    output: str | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    pre_build: list[tuple[str, tuple[str, ...] | None]] = field(default_factory=list)
    post_build: list[tuple[str, tuple[str, ...] | None]] = field(default_factory=list)
    oci: bool = True


class YamlReader:
    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, node: yaml.Node, path: str, message: str) -> SpecError:
        p = Problem(self.file, node.start_mark.line + 1, node.start_mark.column + 1, path, message)
        return SpecError(str(p), problems=[p])

    def mapping(self, node: yaml.Node, path: str, allowed: set[str]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, path, "expected a mapping")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else ""
            where = f"{path}.{key}" if path else key
            if key not in allowed:
                raise self.fail(k, where, f"unknown field (expected one of: {', '.join(sorted(allowed))})")
            if key in out:
                raise self.fail(k, where, "given twice")
            out[key] = (k, v)
        return out

    def string(self, node: yaml.Node, path: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            raise self.fail(node, path, "expected a string")
        return str(node.value)

    def strings(self, node: yaml.Node, path: str) -> list[str]:
        """One string or a list of them."""
        if isinstance(node, yaml.SequenceNode):
            return [self.string(n, f"{path}[{i}]") for i, n in enumerate(node.value)]
        return [self.string(node, path)]

    def command(self, node: yaml.Node, path: str) -> tuple[str, tuple[str, ...] | None]:
        """A shell string, or an exec-form list: (the Dockerfile text, the exec form or None)."""
        if isinstance(node, yaml.SequenceNode):
            words = tuple(self.string(n, f"{path}[{i}]") for i, n in enumerate(node.value))
            if not words:
                raise self.fail(node, path, "an empty command")
            return json.dumps(list(words)), words
        return self.string(node, path), None

    def pairs(self, node: yaml.Node, path: str) -> list[tuple[str, str]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, path, "expected a mapping of names to values")
        return [(self.string(k, path), self.string(v, f"{path}.{k.value}")) for k, v in node.value]

    def boolean(self, node: yaml.Node, path: str) -> bool:
        value = self.string(node, path).lower()
        if value not in ("true", "false"):
            raise self.fail(node, path, "expected true or false")
        return value == "true"

    def integer(self, node: yaml.Node, path: str, low: int = 0) -> int:
        value = self.string(node, path)
        if not value.isdigit() or int(value) < low:
            raise self.fail(node, path, f"expected a whole number of at least {low}")
        return int(value)

    def cache_mount(self, node: yaml.Node, path: str) -> str:
        """A ``cache:`` entry (target, id, sharing, readonly) as the options of ``RUN --mount=type=cache``."""
        cm = self.mapping(node, path, _CACHE)
        if "target" not in cm:
            raise self.fail(node, f"{path}.target", "a cache mount needs a target")
        opts = ["type=cache", f"target={self.string(cm['target'][1], f'{path}.target')}"]
        for key in ("id", "sharing"):
            if key in cm:
                opts.append(f"{key}={self.string(cm[key][1], f'{path}.{key}')}")
        if "readonly" in cm and self.boolean(cm["readonly"][1], f"{path}.readonly"):
            opts.append("readonly")
        return ",".join(opts)


def compose(text: str, file: str) -> yaml.Node | None:
    """The YAML document with its positions; a syntax error is a :class:`SpecError` at its line."""
    try:
        return yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        p = Problem(file, (mark.line + 1) if mark else 0, (mark.column + 1) if mark else 0, "",
                    f"not valid YAML: {getattr(e, 'problem', None) or e}")  # fmt: skip
        raise SpecError(str(p), problems=[p]) from None


def _ins(r: YamlReader, node: yaml.Node, keyword: str, args: str, flags: tuple[tuple[str, str], ...] = (),
         exec_form: tuple[str, ...] | None = None) -> Instruction:  # fmt: skip
    shown = " ".join([keyword, *(f"--{k}={v}" for k, v in flags), args])
    return Instruction(keyword, args, r.file, node.start_mark.line + 1, flags, exec_form, (), shown)


def _quote_pairs(pairs: list[tuple[str, str]]) -> str:
    return " ".join(f"{k}={json.dumps(v)}" for k, v in pairs)


def _metadata(r: YamlReader, fields: dict[str, tuple[yaml.Node, yaml.Node]], path: str) -> list[Instruction]:
    out: list[Instruction] = []
    for name in _META:
        if name not in fields:
            continue
        k, v = fields[name]
        where = f"{path}.{name}" if path else name
        if name == "labels":
            out.append(_ins(r, k, "LABEL", _quote_pairs(r.pairs(v, where))))
        elif name == "expose":
            ports = [r.string(n, f"{where}[{i}]") for i, n in enumerate(v.value)] if isinstance(
                v, yaml.SequenceNode) else [r.string(v, where)]  # fmt: skip
            out.append(_ins(r, k, "EXPOSE", " ".join(ports)))
        elif name == "user":
            out.append(_ins(r, k, "USER", r.string(v, where)))
        elif name in ("cmd", "entrypoint"):
            text, words = r.command(v, where)
            out.append(_ins(r, k, name.upper(), text, exec_form=words))
        elif name == "volumes":
            vols = r.strings(v, where)
            out.append(_ins(r, k, "VOLUME", json.dumps(vols), exec_form=tuple(vols)))
        elif name == "stopsignal":
            out.append(_ins(r, k, "STOPSIGNAL", r.string(v, where)))
        elif name == "healthcheck":
            hc = r.mapping(v, where, _HEALTH)
            if "cmd" not in hc:
                raise r.fail(v, f"{where}.cmd", "a healthcheck needs cmd")
            flags = tuple((f.replace("_", "-"), r.string(hc[f][1], f"{where}.{f}"))
                          for f in ("interval", "timeout", "start_period", "retries") if f in hc)  # fmt: skip
            text, _ = r.command(hc["cmd"][1], f"{where}.cmd")
            out.append(_ins(r, k, "HEALTHCHECK", f"CMD {text}", flags))
    return out


def _steps(r: YamlReader, node: yaml.Node, path: str) -> list[Instruction]:
    if not isinstance(node, yaml.SequenceNode):
        raise r.fail(node, path, "expected a list of steps")
    out: list[Instruction] = []
    for i, step_node in enumerate(node.value):
        where = f"{path}[{i}]"
        step = r.mapping(step_node, where, _STEP)
        actions = [a for a in _ACTIONS if a in step]
        if len(actions) != 1:
            raise r.fail(step_node, where, "a step needs exactly one of: " + ", ".join(_ACTIONS))
        action = actions[0]
        _, v = step[action]
        at = f"{where}.{action}"
        if action == "run":
            text, words = r.command(v, at)
            flags: list[tuple[str, str]] = []
            if "cache" in step:
                cache_node = step["cache"][1]
                if not isinstance(cache_node, yaml.SequenceNode):
                    raise r.fail(cache_node, f"{where}.cache", "expected a list of cache mounts")
                for j, c in enumerate(cache_node.value):
                    flags.append(("mount", r.cache_mount(c, f"{where}.cache[{j}]")))
            out.append(_ins(r, step_node, "RUN", text, tuple(flags), words))
        elif action in ("copy", "add"):
            if "to" not in step:
                raise r.fail(step_node, f"{where}.to", f"a {action} step needs to: (its destination)")
            sources = r.strings(v, at)
            dest = r.string(step["to"][1], f"{where}.to")
            flags = []
            for key, flag in (("from", "from"), ("owner", "chown"), ("chmod", "chmod")):
                if key in step:
                    flags.append((flag, r.string(step[key][1], f"{where}.{key}")))
            words = (*sources, dest)
            out.append(_ins(r, step_node, action.upper(), json.dumps(list(words)), tuple(flags), words))
        elif action == "env":
            out.append(_ins(r, step_node, "ENV", _quote_pairs(r.pairs(v, at))))
        else:
            out.append(_ins(r, step_node, action.upper(), r.string(v, at)))
        for key in ("to", "from", "owner", "chmod", "cache"):
            if key in step and not (
                (action in ("copy", "add") and key != "cache") or (action == "run" and key == "cache")
            ):
                raise r.fail(step[key][0], f"{where}.{key}", f"does not apply to a {action} step")
    return out


def _stage(r: YamlReader, index: int, name: str | None, node: yaml.Node, fields: dict[str, tuple[yaml.Node, yaml.Node]],
           path: str, meta: bool) -> Stage:  # fmt: skip
    if "build" in fields:
        raise r.fail(fields["build"][0], f"{path}.build" if path else "build",
                     "building the base from a local context is not supported yet; build it first (zlayer build -t "
                     "NAME) and name it in base:")  # fmt: skip
    if "base" not in fields:
        raise r.fail(node, f"{path}.base" if path else "base", "needs base: (the image to start from)")
    k, v = fields["base"]
    base = r.string(v, f"{path}.base" if path else "base")
    platform = r.string(fields["platform"][1], "platform") if "platform" in fields else None
    source = _ins(r, k, "FROM", f"{base} AS {name}" if name else base, (("platform", platform),) if platform else ())
    stage = Stage(index, base, name, platform, source)
    prefix = f"{path}." if path else ""
    if "args" in fields and path:
        pairs = r.pairs(fields["args"][1], f"{prefix}args")
        stage.instructions.append(_ins(r, fields["args"][0], "ARG", _quote_pairs(pairs)))
    if "env" in fields:
        pairs = r.pairs(fields["env"][1], f"{prefix}env")
        stage.instructions.append(_ins(r, fields["env"][0], "ENV", _quote_pairs(pairs)))
    if "workdir" in fields:
        workdir = r.string(fields["workdir"][1], f"{prefix}workdir")
        stage.instructions.append(_ins(r, fields["workdir"][0], "WORKDIR", workdir))
    if "steps" in fields:
        stage.instructions += _steps(r, fields["steps"][1], f"{prefix}steps")
    if meta:
        stage.instructions += _metadata(r, fields, path)
    return stage


def _wasm(r: YamlReader, top: dict[str, tuple[yaml.Node, yaml.Node]]) -> WasmBuild:
    other = sorted(set(top) - {"version", "wasm"})
    if other:
        raise r.fail(top[other[0]][0], other[0], "does not apply to a wasm: build (it makes a WASM program, not an "
                     "image with a root filesystem)")  # fmt: skip
    k, v = top["wasm"]
    if isinstance(v, yaml.ScalarNode) and v.tag == "tag:yaml.org,2002:null":
        v = yaml.MappingNode("tag:yaml.org,2002:map", [], v.start_mark, v.end_mark)
    w = r.mapping(v, "wasm", _WASM)
    out = WasmBuild(r.file, k.start_mark.line + 1)

    def text(name: str) -> str:
        return r.string(w[name][1], f"wasm.{name}")

    for name in ("features", "adapter"):
        if name in w:
            raise r.fail(w[name][0], f"wasm.{name}", "not supported: zlayer wasm build takes no cargo "
                         "features and no component adapter (C and Rust make WASIp1 modules, Python WASIp2 "
                         "components)")  # fmt: skip
    if "target" in w:
        target = text("target")
        if target not in _WASM_TARGETS:
            raise r.fail(w["target"][1], "wasm.target", f"unknown target {target!r} (preview1 or preview2)")
        out.target = _WASM_TARGETS[target]
    if "language" in w:
        out.language = text("language").lower()
        if out.language not in _WASM_LANGUAGES:
            raise r.fail(w["language"][1], "wasm.language", f"zlayer wasm build does not compile {out.language!r} "
                         f"(it builds {', '.join(_WASM_LANGUAGES)})")  # fmt: skip
    if "opt_level" in w and text("opt_level") not in _OPT_LEVELS:
        raise r.fail(w["opt_level"][1], "wasm.opt_level", f"expected one of {', '.join(_OPT_LEVELS)}")
    for name in ("optimize", "oci"):
        if name in w:
            setattr(out, name, r.boolean(w[name][1], f"wasm.{name}"))
    out.wit = text("wit") if "wit" in w else None
    out.world = text("world") if "world" in w else None
    out.output = text("output") if "output" in w else None
    if "build_args" in w:
        out.build_args = dict(r.pairs(w["build_args"][1], "wasm.build_args"))
    for name in ("pre_build", "post_build"):
        if name in w:
            node = w[name][1]
            if not isinstance(node, yaml.SequenceNode):
                raise r.fail(node, f"wasm.{name}", "expected a list of commands")
            setattr(out, name, [r.command(c, f"wasm.{name}[{i}]") for i, c in enumerate(node.value)])
    return out


def parse_zimagefile(text: str, file: str = "ZImagefile", templates: Any = None) -> Dockerfile | WasmBuild:
    """Read a ZImagefile; ``templates`` (name → Dockerfile text) resolves ``runtime:``. A ``wasm:`` file gives a
    :class:`WasmBuild`, every other mode the instructions of a Dockerfile."""
    r = YamlReader(file)
    root = compose(text, file)
    if root is None:
        raise SpecError(f"{file}: empty ZImagefile", hint="give one of runtime:, base: + steps:, stages: or wasm:")
    top = r.mapping(root, "", _TOP)
    modes = [m for m in ("runtime", "base", "stages", "wasm") if m in top or (m == "base" and "build" in top)]
    if len(modes) != 1:
        said = ", ".join(modes) if modes else "none"
        raise r.fail(
            root, "", f"needs exactly one build mode: runtime:, base: (+ steps:), stages: or wasm: (got {said})"
        )
    mode = modes[0]
    meta_args = []
    if "args" in top:
        meta_args.append(_ins(r, top["args"][0], "ARG", _quote_pairs(r.pairs(top["args"][1], "args"))))
    if mode == "wasm":
        return _wasm(r, top)
    if mode == "runtime":
        v = top["runtime"][1]
        name = r.string(v, "runtime")
        template = (templates or {}).get(name.lower())
        if template is None:
            known = ", ".join(sorted(templates or {}))
            raise r.fail(v, "runtime", f"unknown runtime template {name!r} (zlayer runtimes lists them: {known})")
        df = parse(template, f"{file} (runtime {name})")
        df.meta_args = meta_args + df.meta_args
        last = df.stages[-1]
        if "env" in top:
            last.instructions.append(_ins(r, top["env"][0], "ENV", _quote_pairs(r.pairs(top["env"][1], "env"))))
        if "workdir" in top:
            last.instructions.append(_ins(r, top["workdir"][0], "WORKDIR", r.string(top["workdir"][1], "workdir")))
        last.instructions += _metadata(r, top, "")
        return df
    if mode == "base":
        stage = _stage(r, 0, None, root, top, "", meta=True)
        return Dockerfile(file, meta_args, [stage])
    v = top["stages"][1]
    if not isinstance(v, yaml.MappingNode) or not v.value:
        raise r.fail(v, "stages", "expected a map of stage names to stages")
    stages: list[Stage] = []
    for i, (name_node, stage_node) in enumerate(v.value):
        name = r.string(name_node, "stages")
        fields = r.mapping(stage_node, f"stages.{name}", _STAGE)
        stages.append(_stage(r, i, name.lower(), stage_node, fields, f"stages.{name}", meta=True))
    last = stages[-1]
    if "env" in top:
        last.instructions.append(_ins(r, top["env"][0], "ENV", _quote_pairs(r.pairs(top["env"][1], "env"))))
    if "workdir" in top:
        last.instructions.append(_ins(r, top["workdir"][0], "WORKDIR", r.string(top["workdir"][1], "workdir")))
    last.instructions += _metadata(r, top, "")
    return Dockerfile(file, meta_args, stages)
