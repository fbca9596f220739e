"""ZImagefiles and runtime templates (issue 18): the four modes read into the instructions a Dockerfile gives, each
mistake named by its line and field as spec errors are, and a template chosen by name or by the context's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from zlayer.builder import templates
from zlayer.builder.executor import BuildOptions, load_build_file
from zlayer.builder.zimage import parse_zimagefile
from zlayer.errors import NotFoundError, SpecError, UsageError

MULTI = """\
args:
  BASE: 127.0.0.1:5000/busybox:1
stages:
  Builder:
    base: ${BASE}
    workdir: /src
    env:
      GREETING: hello world
    steps:
      - copy: [app.txt, other.txt]
        to: ./
        chmod: "0640"
      - run: echo "$GREETING" > /src/out
        cache:
          - target: /cache
            id: mine
      - run: [sh, -c, "echo exec"]
  runtime:
    base: ${BASE}
    steps:
      - copy: /src/out
        from: builder
        to: /app/out
        owner: "65534:65534"
      - user: nobody
expose: [8080, "53/udp"]
cmd: ["cat", "/app/out"]
labels:
  org.example.mode: test
healthcheck:
  cmd: "cat /app/out"
  interval: 5s
  retries: 2
"""


def test_a_multi_stage_zimagefile_reads_into_dockerfile_instructions() -> None:
    df = parse_zimagefile(MULTI, "ZImagefile")
    assert [a.args for a in df.meta_args] == ['BASE="127.0.0.1:5000/busybox:1"']
    build, final = df.stages
    assert (build.name, build.base, final.name) == ("builder", "${BASE}", "runtime")
    kinds = [(i.keyword, i.line) for i in build.instructions]
    assert kinds == [("ENV", 7), ("WORKDIR", 6), ("COPY", 10), ("RUN", 13), ("RUN", 17)]
    copy, run, run_exec = build.instructions[2:]
    assert copy.exec_form == ("app.txt", "other.txt", "./") and copy.flag("chmod") == "0640"
    assert run.flag_values("mount") == ["type=cache,target=/cache,id=mine"] and run.exec_form is None
    assert run_exec.exec_form == ("sh", "-c", "echo exec")
    cp = final.instructions[0]
    assert cp.flags == (("from", "builder"), ("chown", "65534:65534"))
    assert [i.keyword for i in final.instructions] == ["COPY", "USER", "LABEL", "EXPOSE", "CMD", "HEALTHCHECK"]
    assert final.instructions[3].args == "8080 53/udp" and final.instructions[4].exec_form == ("cat", "/app/out")
    assert final.instructions[5].flag("interval") == "5s" and final.instructions[5].args == "CMD cat /app/out"


def test_single_stage_and_runtime_modes() -> None:
    single = parse_zimagefile("base: busybox\nsteps:\n  - run: echo hi\nenv:\n  A: b\ncmd: echo done\n")
    (stage,) = single.stages
    assert stage.base == "busybox" and [i.keyword for i in stage.instructions] == ["ENV", "RUN", "CMD"]
    rt = parse_zimagefile("runtime: node22\ncmd: [node, server.js]\n", templates=templates.dockerfiles())
    assert rt.stages[0].base == "node:22-alpine" and rt.stages[-1].instructions[-1].exec_form == ("node", "server.js")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("base: a\nsteps:\n  - run: x\n    bogus: 1\n", "ZImagefile:4:5: steps[0].bogus: unknown field"),
        ("base: a\nsteps:\n  - copy: x\n", "ZImagefile:3:5: steps[0].to: a copy step needs to:"),
        ("base: a\nsteps:\n  - run: x\n    workdir: /y\n", "ZImagefile:3:5: steps[0]: a step needs exactly one of"),
        ("base: a\nstages:\n  x:\n    base: b\n", "ZImagefile:1:1: needs exactly one build mode"),
        ("stages:\n  one:\n    steps: []\n", "ZImagefile:3:5: stages.one.base: needs base:"),
        ("runtime: cobol\n", "ZImagefile:1:10: runtime: unknown runtime template 'cobol'"),
        ("wasm:\n  language: go\n", "ZImagefile:2:13: wasm.language: zlayer wasm build does not compile 'go'"),
        ("wasm:\n  target: preview3\n", "ZImagefile:2:11: wasm.target: unknown target 'preview3'"),
        ("wasm: {}\ncmd: [run]\n", "ZImagefile:2:1: cmd: does not apply to a wasm: build"),
        ("wasm:\n  features: [json]\n", "ZImagefile:2:3: wasm.features: not supported"),
        ("base: a\nsteps:\n  - run: x\n    to: /y\n", "ZImagefile:4:5: steps[0].to: does not apply to a run step"),
        ("base: [a\n", "ZImagefile:2:1: not valid YAML"),
    ],
)
def test_each_zimagefile_mistake_names_line_and_field(text: str, message: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_zimagefile(text, "ZImagefile", templates.dockerfiles())
    assert str(e.value).startswith(message), str(e.value)


def test_runtime_detection_follows_zlayers_order(tmp_path: Path) -> None:
    def detected(*files: str) -> str | None:
        d = tmp_path / "-".join(files or ("empty",))
        d.mkdir()
        for f in files:
            (d / f).write_text("3.13\n" if f == ".python-version" else "{}")
        found = templates.detect(d)
        return found.name if found else None

    assert detected("package.json") == "node20"
    assert detected("package.json", "bun.lockb") == "bun"
    assert detected("package.json", "deno.json") == "deno"
    assert detected("deno.jsonc") == "deno"
    assert detected("Cargo.toml", "requirements.txt") == "rust"
    assert detected("requirements.txt") == "python312"
    assert detected("pyproject.toml", ".python-version") == "python313"
    assert detected("go.mod") == "go"
    assert detected() is None
    assert templates.template("Golang") is templates.TEMPLATES["go"]


def test_what_to_build_follows_template_then_zimagefile_then_dockerfile(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM from-dockerfile\n")
    (tmp_path / "ZImagefile").write_text("base: from-zimagefile\n")
    (tmp_path / "go.mod").write_text("module x\n")
    other = tmp_path / "Other.zimage"
    other.write_text("base: from-z-option\n")

    def base(**kw: object) -> str:
        return load_build_file(BuildOptions(context=tmp_path, **kw), tmp_path).stages[0].base  # type: ignore[arg-type]

    assert base(runtime="python") == "python:3.12-slim"
    assert base(runtime_auto=True) == "golang:1-alpine"
    assert base(zimagefile=other, dockerfile=tmp_path / "Dockerfile") == "from-z-option"
    assert base(dockerfile=tmp_path / "Dockerfile") == "from-dockerfile"
    assert base() == "from-zimagefile"
    (tmp_path / "ZImagefile").unlink()
    assert base() == "from-dockerfile"
    (tmp_path / "Dockerfile").unlink()
    assert base() == "golang:1-alpine"
    (tmp_path / "go.mod").unlink()
    with pytest.raises(NotFoundError, match="nothing to build"):
        base()
    with pytest.raises(UsageError, match="--runtime cobol: no such runtime template"):
        base(runtime="cobol")


def test_a_wasm_zimagefile_becomes_the_zlayer_wasm_build_command(tmp_path: Path) -> None:
    from zlayer.builder.wasm import wasm_build_argv
    from zlayer.builder.zimage import WasmBuild

    w = parse_zimagefile(
        "version: '1'\nwasm:\n  target: preview2\n  language: Python\n  optimize: true\n  wit: wit\n"
        "  world: zlayer-plugin\n  output: out/p.wasm\n  build_args: {A: b}\n  pre_build: [make gen]\n"
        "  post_build: [[ls, out]]\n  oci: false\n"
    )
    assert isinstance(w, WasmBuild)
    assert (w.target, w.language, w.oci, w.build_args, w.line) == ("wasip2", "python", False, {"A": "b"}, 2)
    assert w.pre_build == [("make gen", None)] and w.post_build == [('["ls", "out"]', ("ls", "out"))]
    argv = wasm_build_argv(w, tmp_path, tmp_path / "out" / "p.wasm")
    out, wit = str(tmp_path / "out" / "p.wasm"), str(tmp_path / "wit")
    assert argv[3:] == ["wasm", "build", str(tmp_path), "-t", "wasip2", "-o", out, "-l", "python", "--optimize",
                        "--wit", wit, "--world", "zlayer-plugin"]  # fmt: skip
    assert parse_zimagefile("wasm:\n").target == "wasip2"  # type: ignore[union-attr]  # ZLayer's default


def test_zlayer_runtimes_lists_zlayers_templates_and_what_selects_them() -> None:
    from click.testing import CliRunner

    from zlayer.cli.build import runtimes

    out = CliRunner().invoke(runtimes, []).output
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert list(rows) == ["node20", "node22", "python312", "python313", "rust", "go", "deno", "bun"], out
    assert "Cargo.toml" in rows["rust"] and "go.mod" in rows["go"] and "bun.lockb" in rows["bun"]
