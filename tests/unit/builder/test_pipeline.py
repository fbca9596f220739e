"""ZPipeline manifests (issue 18): ZLayer's fields merged with the defaults and variables substituted; every mistake
named by its line and field as spec errors are."""

from __future__ import annotations

from pathlib import Path

import pytest

from zlayer.builder.pipeline import parse_pipeline
from zlayer.errors import SpecError, UsageError


@pytest.fixture
def base(tmp_path: Path) -> Path:
    for name in ("Dockerfile", "ZImagefile.app", "sub/Dockerfile"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("FROM scratch\n")
    return tmp_path


FULL = """\
version: "1"
vars:
  REGISTRY: reg.example:5000
  VERSION: dev
defaults:
  build_args: {RUST: "1.90", SHARED: default}
  no_cache: true
  retries: 2
  cache_mounts:
    - target: /root/.cache
      id: shared
images:
  app:
    file: ZImagefile.app
    context: sub
    depends_on: [base]
    tags: ["${REGISTRY}/app:${VERSION}", "app:latest"]
    build_args: {SHARED: mine, TAG: "${VERSION}"}
    no_cache: false
    cache_mounts:
      - {target: /tmp/x, readonly: true}
  base:
    file: sub/Dockerfile
    platforms: [linux/amd64]
push:
  after_all: true
"""


def test_a_full_pipeline_merges_defaults_and_substitutes_variables(base: Path) -> None:
    p = parse_pipeline(FULL, "ZPipeline.yaml", base, {"VERSION": "2"})
    assert list(p.images) == ["app", "base"] and p.push_after_all
    app = p.images["app"]
    assert app.tags == ["reg.example:5000/app:2", "app:latest"] and app.depends_on == ["base"]
    assert app.build_args == {"RUST": "1.90", "SHARED": "mine", "TAG": "2"}
    assert (app.no_cache, app.retries, app.context) == (False, 2, base / "sub")
    assert app.cache_mounts == ["type=cache,target=/root/.cache,id=shared", "type=cache,target=/tmp/x,readonly"]
    opts = app.options()
    assert opts.zimagefile == base / "ZImagefile.app" and opts.dockerfile is None
    b = p.images["base"]
    assert b.no_cache and b.platform == "linux/amd64" and b.options().dockerfile == base / "sub" / "Dockerfile"
    assert p.select(["app"]) == ["app"]
    with pytest.raises(UsageError, match="--only nope: nope is not an image"):
        p.select(["nope"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("images:\n  a:\n    file: Dockerfile\n    depends_on: [b]\n",
         "P:4:18: images.a.depends_on[0]: no image named 'b' in this pipeline (it has: a)"),
        ("images:\n  a:\n    file: Dockerfile\n    depends_on: [b]\n  b:\n    file: Dockerfile\n    depends_on: a\n",
         "P:4:5: images.a.depends_on: a dependency cycle: a -> b -> a"),
        ("images:\n  a:\n    file: Dockerfile\n    tag: [x]\n", "P:4:5: images.a.tag: unknown field"),
        ("images:\n  a:\n    file: Dockerfile\n    tags: ['${NOPE}/a']\n",
         "P:4:12: images.a.tags[0]: ${NOPE} is not a variable of this pipeline"),
        ("images:\n  a:\n    file: missing/Dockerfile\n", "P:3:11: images.a.file: "),
        ("images:\n  a:\n    context: sub\n", "P:3:5: images.a.file: an image needs file:"),
        ("defaults:\n  format: docker\nimages:\n  a:\n    file: Dockerfile\n",
         "P:2:11: defaults.format: format 'docker': zlayer writes OCI images only"),
        ("images:\n  a:\n    file: Dockerfile\n    platforms: [linux/amd64, linux/arm64]\n",
         "P:4:16: images.a.platforms: one platform per image"),
        ("images:\n  a:\n    file: Dockerfile\n    retries: many\n",
         "P:4:14: images.a.retries: expected a whole number"),
        ("push:\n  after_all: maybe\nimages:\n  a:\n    file: Dockerfile\n",
         "P:2:14: push.after_all: expected true or false"),
        ("vars: {}\n", "P:1:1: images: a pipeline needs images:"),
    ],
)  # fmt: skip
def test_each_pipeline_mistake_names_line_and_field(base: Path, text: str, message: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_pipeline(text, "P", base)
    assert str(e.value).startswith(message), str(e.value)
