"""Reading a Dockerfile into typed instructions, each with the file and line it came from.

What BuildKit's front end reads, as users write it: parser directives (``# escape=``, ``# syntax=`` is ignored),
line continuations with the escape character, comments inside a continued instruction, heredocs (``<<EOF``,
``<<-EOF``, quoted delimiters) on RUN, COPY and ADD, ``--flag=value`` options, the exec (JSON) and shell forms,
ARG before the first FROM, ONBUILD with its nested instruction. Variables are not expanded here: what they expand
to depends on the build (``--build-arg``, ENV of the stage), so :func:`expand` does it when the step runs.

Every problem is a :class:`~zlayer.errors.UsageError` that reads ``FILE:LINE: INSTRUCTION: what is wrong``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from zlayer.errors import UsageError

# instruction -> the flags it takes (a flag named twice is kept twice: RUN --mount can repeat)
FLAGS: dict[str, frozenset[str]] = {
    "FROM": frozenset({"platform"}),
    "RUN": frozenset({"mount", "network", "security"}),
    "COPY": frozenset({"from", "chown", "chmod", "link", "parents", "exclude"}),
    "ADD": frozenset({"chown", "chmod", "checksum", "keep-git-dir", "link", "exclude"}),
    "HEALTHCHECK": frozenset({"interval", "timeout", "start-period", "start-interval", "retries"}),
}
KEYWORDS = frozenset(
    {
        *FLAGS,
        "ARG", "CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "MAINTAINER", "ONBUILD", "SHELL", "STOPSIGNAL",
        "USER", "VOLUME", "WORKDIR",
    }
)  # fmt: skip
HEREDOC_KEYWORDS = frozenset({"RUN", "COPY", "ADD"})
JSON_FORMS = frozenset({"RUN", "CMD", "ENTRYPOINT", "SHELL", "COPY", "ADD", "VOLUME", "HEALTHCHECK"})
_HEREDOC = re.compile(r"<<(-?)(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")
_DIRECTIVE = re.compile(r"^#\s*([A-Za-z]+)\s*=\s*(.*?)\s*$")


@dataclass(frozen=True)
class Heredoc:
    """One heredoc: its delimiter word, its body (with the final newline), and whether variables expand in it
    (an unquoted delimiter)."""

    name: str
    body: str
    expand: bool = True


@dataclass(frozen=True)
class Instruction:
    """One instruction. ``args`` is the text after the flags (shell form), ``exec_form`` the JSON array when the
    instruction was written in that form. ``line`` is the 1-based line of its keyword in ``file``."""

    keyword: str
    args: str
    file: str
    line: int
    flags: tuple[tuple[str, str], ...] = ()
    exec_form: tuple[str, ...] | None = None
    heredocs: tuple[Heredoc, ...] = ()
    original: str = ""
    onbuild: Instruction | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def flag(self, name: str) -> str | None:
        """The last value of ``--name`` (``"true"`` for a bare ``--name``), or None when not given."""
        values = self.flag_values(name)
        return values[-1] if values else None

    def flag_values(self, name: str) -> list[str]:
        return [v for k, v in self.flags if k == name]

    def error(self, message: str, *, hint: str | None = None) -> UsageError:
        """A problem with this instruction, said as ``FILE:LINE: KEYWORD: message``."""
        return UsageError(f"{self.where}: {self.keyword}: {message}", hint=hint)


@dataclass
class Stage:
    """One ``FROM`` and what follows it. ``base`` is unexpanded (it may name ``$ARG``s from before the first FROM)."""

    index: int
    base: str
    name: str | None
    platform: str | None
    source: Instruction
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    """The parsed file: ARGs declared before the first FROM (visible to FROM lines), then the stages in order."""

    file: str
    meta_args: list[Instruction]
    stages: list[Stage]

    def stage(self, ref: str) -> Stage | None:
        """The stage named ``ref`` (case-insensitive, as Docker's) or with that index; None when there is none."""
        for stage in self.stages:
            if stage.name is not None and stage.name == ref.lower():
                return stage
        if ref.isdigit() and int(ref) < len(self.stages):
            return self.stages[int(ref)]
        return None


def _directives(lines: list[str]) -> tuple[str, int]:
    """The escape character from the parser directives at the top, and how many lines they take."""
    escape, n = "\\", 0
    for line in lines:
        m = _DIRECTIVE.match(line.strip())
        if not m:
            break
        key, value = m.group(1).lower(), m.group(2)
        if key == "escape":
            if value not in ("\\", "`"):
                raise UsageError(f"line {n + 1}: escape directive: {value!r} is not a valid escape character",
                                 hint="use \\ or `")  # fmt: skip
            escape = value
        n += 1
    return escape, n


def _continues(line: str, escape: str) -> tuple[bool, str]:
    stripped = line.rstrip()
    if stripped.endswith(escape):
        # an escaped escape character at the end does not continue the line
        run = len(stripped) - len(stripped.rstrip(escape))
        if run % 2 == 1:
            return True, stripped[:-1]
    return False, line


def parse(text: str, file: str = "Dockerfile") -> Dockerfile:
    """Parse Dockerfile ``text`` (named ``file`` in messages)."""
    lines = text.replace("\r\n", "\n").split("\n")
    escape, i = _directives(lines)
    instructions: list[Instruction] = []
    while i < len(lines):
        raw = lines[i]
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        start = i
        parts: list[str] = []
        original: list[str] = []
        while True:
            line = lines[i]
            i += 1
            if parts and line.strip().startswith("#"):
                continue  # a comment inside a continued instruction is dropped
            original.append(line)
            more, body = _continues(line, escape)
            parts.append(body)
            if not more or i >= len(lines):
                break
        logical = "".join(parts).strip()
        keyword = logical.split(None, 1)[0].upper()
        heredocs: list[Heredoc] = []
        if keyword in HEREDOC_KEYWORDS or (keyword == "ONBUILD" and _nested_keyword(logical) in HEREDOC_KEYWORDS):
            for m in _HEREDOC.finditer(logical):
                strip_tabs, quote, name = m.group(1) == "-", m.group(2), m.group(3)
                text_lines: list[str] = []
                while True:
                    if i >= len(lines):
                        raise UsageError(f"{file}:{start + 1}: {keyword}: heredoc <<{name} is not closed",
                                         hint=f"end it with a line holding only {name}")  # fmt: skip
                    line = lines[i]
                    i += 1
                    check = line.lstrip("\t") if strip_tabs else line
                    if check == name:
                        break
                    text_lines.append(check)
                heredocs.append(Heredoc(name, "".join(t + "\n" for t in text_lines), expand=not quote))
        instructions.append(_instruction(logical, file, start + 1, heredocs, "\n".join(original).strip()))
    return _stages(instructions, file)


def parse_instruction(text: str, file: str, line: int) -> Instruction:
    """One instruction on its own (an image's ONBUILD trigger)."""
    return _instruction(text.strip(), file, line, [], text.strip())


def _nested_keyword(logical: str) -> str:
    words = logical.split(None, 2)
    return words[1].upper() if len(words) > 1 else ""


def _instruction(logical: str, file: str, line: int, heredocs: list[Heredoc], original: str) -> Instruction:
    head, _, rest = logical.partition(" ")
    keyword = head.upper()
    rest = rest.strip()
    if keyword not in KEYWORDS:
        raise UsageError(f"{file}:{line}: unknown instruction {head}",
                         hint="see https://docs.docker.com/reference/dockerfile/")  # fmt: skip
    if keyword == "ONBUILD":
        nested = _instruction(rest, file, line, heredocs, rest) if rest else None
        if nested is None:
            raise UsageError(f"{file}:{line}: ONBUILD: needs an instruction to run later")
        if nested.keyword in ("ONBUILD", "FROM", "MAINTAINER"):
            raise UsageError(f"{file}:{line}: ONBUILD: {nested.keyword} is not allowed as an ONBUILD trigger")
        return Instruction(keyword, rest, file, line, original=original, onbuild=nested)
    flags: list[tuple[str, str]] = []
    allowed = FLAGS.get(keyword, frozenset())
    while rest.startswith("--"):
        word, _, after = rest.partition(" ")
        if word == "--":
            break
        name, eq, value = word[2:].partition("=")
        if name not in allowed:
            known = ", ".join(f"--{f}" for f in sorted(allowed)) or "none"
            raise UsageError(f"{file}:{line}: {keyword}: unknown flag --{name} (it takes: {known})")
        flags.append((name, _unquote(value) if eq else "true"))
        rest = after.strip()
    exec_form = None
    if keyword in JSON_FORMS and rest.startswith("["):
        try:
            words: object = json.loads(rest)
        except ValueError:
            words = None  # not JSON: Docker runs it in the shell form, as written
        if isinstance(words, list) and all(isinstance(v, str) for v in words):
            exec_form = tuple(words)
    if not rest and keyword not in ("RUN", "COPY", "ADD") and not heredocs:
        raise UsageError(f"{file}:{line}: {keyword}: needs an argument")
    if keyword in ("RUN", "COPY", "ADD") and not rest:
        raise UsageError(f"{file}:{line}: {keyword}: needs an argument")
    return Instruction(keyword, rest, file, line, tuple(flags), exec_form, tuple(heredocs), original)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _stages(instructions: list[Instruction], file: str) -> Dockerfile:
    meta: list[Instruction] = []
    stages: list[Stage] = []
    names: set[str] = set()
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.args.split()
            if len(words) not in (1, 3) or (len(words) == 3 and words[1].lower() != "as"):
                raise ins.error(f"{ins.args!r}: expected 'FROM IMAGE [AS NAME]'")
            name = words[2].lower() if len(words) == 3 else None
            if name is not None:
                if not re.fullmatch(r"[a-z][a-z0-9\-_.]*", name):
                    raise ins.error(f"stage name {words[2]!r} is not valid",
                                    hint="start with a letter; use letters, digits, '-', '_' and '.'")  # fmt: skip
                if name in names:
                    raise ins.error(f"stage name {name!r} is used twice")
                names.add(name)
            stages.append(Stage(len(stages), words[0], name, ins.flag("platform"), ins))
        elif not stages:
            if ins.keyword != "ARG":
                raise ins.error("only ARG may come before the first FROM", hint="start the file with FROM IMAGE")
            meta.append(ins)
        else:
            stages[-1].instructions.append(ins)
    if not stages:
        raise UsageError(f"{file}: no FROM instruction: nothing to build", hint="start the file with FROM IMAGE")
    return Dockerfile(file, meta, stages)


# ---------------------------------------------------------------- words and variables


def expand(text: str, env: Mapping[str, str], *, escape: str = "\\", where: Instruction | None = None) -> str:
    """Expand ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:+alt}``, ``${VAR+alt}`` the way
    Docker does in COPY, ENV, WORKDIR, ...; quotes are kept (word splitting removes them); ``\\$`` is a dollar."""
    out: list[str] = []
    i, n = 0, len(text)
    quote = ""
    while i < n:
        c = text[i]
        if c == escape and i + 1 < n and quote != "'":
            out.append(c + text[i + 1] if text[i + 1] != "$" else "$")
            i += 2
            continue
        if c in "\"'":
            quote = "" if quote == c else (quote or c)
        if c != "$" or quote == "'" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        if text[i + 1] == "{":
            end = text.find("}", i + 2)
            if end < 0:
                raise (where.error(f"missing '}}' in {text!r}") if where else UsageError(f"missing '}}' in {text!r}"))
            body = text[i + 2 : end]
            m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+])(.*))?", body, re.S)
            if not m:
                msg = f"bad substitution ${{{body}}}"
                raise where.error(msg) if where else UsageError(msg)
            name, op, word = m.group(1), m.group(2), m.group(3) or ""
            value = env.get(name)
            if op in (":-", "-"):
                use_default = value is None or (op == ":-" and value == "")
                out.append(expand(word, env, escape=escape) if use_default else str(value))
            elif op in (":+", "+"):
                set_ = value is not None and (op == "+" or value != "")
                out.append(expand(word, env, escape=escape) if set_ else "")
            else:
                out.append(value or "")
            i = end + 1
            continue
        m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i + 1 :])
        if not m:
            out.append(c)
            i += 1
            continue
        out.append(env.get(m.group(), ""))
        i += 1 + m.end()
    return "".join(out)


def split_words(text: str, *, escape: str = "\\") -> list[str]:
    """Split on unquoted whitespace, dropping the quotes and escapes (Docker's word rules for ENV, LABEL, ARG)."""
    words: list[str] = []
    cur: list[str] = []
    in_word = False
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if c == escape and quote != "'" and i + 1 < len(text):
            nxt = text[i + 1]
            if quote == '"' and nxt not in ('"', escape, "$"):
                cur.append(c)
            cur.append(nxt)
            in_word = True
            i += 2
            continue
        if quote:
            if c == quote:
                quote = ""
            else:
                cur.append(c)
        elif c in "\"'":
            quote = c
            in_word = True
        elif c.isspace():
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
        else:
            cur.append(c)
            in_word = True
        i += 1
    if quote:
        raise UsageError(f"unmatched {quote} in {text!r}")
    if in_word:
        words.append("".join(cur))
    return words


def key_values(ins: Instruction, env: Mapping[str, str]) -> list[tuple[str, str]]:
    """The ``KEY=value`` pairs of ENV or LABEL (``ENV KEY value`` is the legacy one-pair form), expanded."""
    if ins.keyword == "ENV" and "=" not in ins.args.split(None, 1)[0]:
        key, _, value = ins.args.partition(" ")
        value = value.strip()
        if not value:
            raise ins.error(f"{key} needs a value (ENV KEY=value)")
        return [(key, split_words(expand(value, env, where=ins))[0] if value[0] in "\"'" else expand(value, env))]
    pairs = []
    for word in split_words(expand(ins.args, env, where=ins)):
        key, eq, value = word.partition("=")
        if not key:
            raise ins.error(f"{word!r}: a name is missing before '='")
        if not eq:
            raise ins.error(f"{word!r}: expected KEY=value")
        pairs.append((key, value))
    return pairs


def arg_declarations(ins: Instruction, env: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """The names an ARG declares, each with its default (expanded) or None when it has none."""
    out: list[tuple[str, str | None]] = []
    for word in split_words(ins.args):
        key, eq, value = word.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ins.error(f"{key!r} is not a valid argument name")
        out.append((key, expand(value, env, where=ins) if eq else None))
    return out
