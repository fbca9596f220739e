"""The Dockerfile reader (issue 18): what users write is read into typed instructions, and every mistake is named
with its file, line and instruction."""

from __future__ import annotations

import pytest

from zlayer.builder.dockerfile import arg_declarations, expand, key_values, parse, split_words
from zlayer.errors import UsageError

MULTI = """\
# syntax=docker/dockerfile:1
ARG BASE=127.0.0.1:5000/busybox:1
ARG VERSION

FROM --platform=linux/amd64 ${BASE} AS build
RUN --mount=type=cache,target=/cache --mount=type=secret,id=tok \\
    # a comment inside the instruction
    echo hi > /a && \\
    echo there
RUN <<EOT bash
echo a
  echo b
EOT
COPY <<-"EOF" /etc/motd
\thello $USER
\tEOF
COPY --from=0 --chown=1:2 --chmod=0640 a b /dst/
CMD ["sh", "-c", "echo"]
ENTRYPOINT echo [not json
ONBUILD RUN echo later
HEALTHCHECK --interval=5s --retries=3 CMD wget -q localhost
ENV A=1 B="two words" C=$A
ENV LEGACY value with spaces

FROM build
COPY --from=build /a /a
"""


def test_a_real_multi_stage_file_reads_into_typed_instructions_with_lines() -> None:
    df = parse(MULTI, "ctx/Dockerfile")
    assert [(a.line, a.args) for a in df.meta_args] == [(2, "BASE=127.0.0.1:5000/busybox:1"), (3, "VERSION")]
    build, final = df.stages
    assert (build.base, build.name, build.platform, build.source.line) == ("${BASE}", "build", "linux/amd64", 5)
    assert (final.base, final.name, final.index) == ("build", None, 1)
    run, here, copy_here, copy, cmd, ep, onbuild, hc, env, legacy = build.instructions
    assert run.line == 6 and run.args == "echo hi > /a &&     echo there"
    assert run.flag_values("mount") == ["type=cache,target=/cache", "type=secret,id=tok"]
    assert here.line == 10 and here.heredocs[0].body == "echo a\n  echo b\n" and here.heredocs[0].expand
    assert copy_here.heredocs[0].body == "hello $USER\n" and not copy_here.heredocs[0].expand
    assert copy.flags == (("from", "0"), ("chown", "1:2"), ("chmod", "0640")) and copy.args == "a b /dst/"
    assert cmd.exec_form == ("sh", "-c", "echo")
    assert ep.exec_form is None and ep.args == "echo [not json"
    assert onbuild.onbuild is not None and onbuild.onbuild.keyword == "RUN"
    assert hc.flag("interval") == "5s" and hc.args == "CMD wget -q localhost"
    assert key_values(env, {}) == [("A", "1"), ("B", "two words"), ("C", "")]
    assert key_values(legacy, {}) == [("LEGACY", "value with spaces")]
    assert df.stage("build") is build and df.stage("1") is final and df.stage("nope") is None


def test_the_escape_directive_changes_the_continuation_character() -> None:
    df = parse("# escape=`\nFROM scratch\nRUN echo a `\n  b\nCOPY c:\\x\\ d\n")
    run, copy = df.stages[0].instructions
    assert run.args == "echo a   b" and copy.args == "c:\\x\\ d"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM busybox\nRUNN echo\n", "Dockerfile:2: unknown instruction RUNN"),
        ("RUN echo\nFROM busybox\n", "Dockerfile:1: RUN: only ARG may come before the first FROM"),
        ("FROM busybox\nCOPY --form=x a b\n", "Dockerfile:2: COPY: unknown flag --form"),
        ("FROM busybox\nRUN <<EOF\necho\n", "Dockerfile:2: RUN: heredoc <<EOF is not closed"),
        ("FROM a AS x\nFROM b AS x\n", "Dockerfile:2: FROM: stage name 'x' is used twice"),
        ("FROM a b\n", "Dockerfile:1: FROM: 'a b': expected 'FROM IMAGE [AS NAME]'"),
        ("FROM a\nWORKDIR\n", "Dockerfile:2: WORKDIR: needs an argument"),
        ("FROM a\nONBUILD FROM b\n", "Dockerfile:2: ONBUILD: FROM is not allowed"),
        ("# just a comment\n", "Dockerfile: no FROM instruction"),
    ],
)
def test_each_mistake_names_file_line_and_instruction(text: str, message: str) -> None:
    with pytest.raises(UsageError) as e:
        parse(text)
    assert str(e.value).startswith(message), str(e.value)


def test_variables_expand_as_docker_expands_them() -> None:
    env = {"A": "1", "E": ""}
    assert expand("$A-${A}-${B:-d}-${E:-x}-${E-y}-${A:+set}-${B+no}-\\$A", env) == "1-1-d-x--set--$A"
    assert expand("'$A' \"$A\"", env) == "'$A' \"1\""
    assert split_words('a \'b c\' "d\\"e" f\\ g') == ["a", "b c", 'd"e', "f g"]
    arg = parse("ARG X Y=$A\nFROM s\n").meta_args[0]
    assert arg_declarations(arg, env) == [("X", None), ("Y", "1")]
