"""`zlayer pipeline` (issue 18): the images of a ZPipeline.yaml built in dependency order — the independent ones side
by side (each waits, over a cache mount both share, to see the other start), the dependent one from the images just
built — pushed to the fixture's docker-registry once all are built; a failed image skips what depends on it and,
without --fail-fast, lets the others finish."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.builder import BuildBase, no_mounts_left, zlayer_cmd
from tests.integration.builder.test_build import left_behind, run_image
from zlayer.images import ImageStore

pytestmark = [pytest.mark.root, pytest.mark.peer, pytest.mark.slow]

# each of the two independent images starts, then waits (up to 20 s) to see the other one started
WAIT_FOR = ('RUN touch /shared/{me} && for i in $(seq 1 200); do [ -e /shared/{other} ] && break; sleep 0.1; done; '
            '[ -e /shared/{other} ] && echo "saw {other}" > /{me}.seen\n')  # fmt: skip

PIPELINE = """\
version: "1"
vars:
  REGISTRY: {registry}
  VERSION: "1"
defaults:
  build_args:
    BASE: {base}
  cache_mounts:
    - target: /shared
      id: {cache_id}
images:
  app:
    file: app/Dockerfile
    context: app
    depends_on: [base, tool]
    tags: ["${{REGISTRY}}/pl-app:${{VERSION}}"]
    build_args:
      REGISTRY: ${{REGISTRY}}
      VERSION: ${{VERSION}}
  base:
    file: base/Dockerfile
    tags: ["${{REGISTRY}}/pl-base:${{VERSION}}"]
  tool:
    file: tool/ZImagefile
    context: tool
    tags: ["${{REGISTRY}}/pl-tool:${{VERSION}}"]
"""


def write_pipeline(root: Path, bb: BuildBase) -> Path:
    for d in ("app", "base", "tool"):
        (root / d).mkdir(parents=True)
    (root / "base" / "Dockerfile").write_text(
        "ARG BASE\nFROM ${BASE}\n" + WAIT_FOR.format(me="base", other="tool") + "RUN echo base > /from-base\n"
    )
    (root / "tool" / "ZImagefile").write_text(
        "args:\n  BASE: none\nbase: ${BASE}\nsteps:\n"
        f"  - run: '{WAIT_FOR.format(me='tool', other='base')[4:].strip()}'\n"
        "  - run: echo tool > /from-tool\n"
    )
    (root / "app" / "msg").write_text("app\n")
    (root / "app" / "Dockerfile").write_text(
        "ARG REGISTRY\nARG VERSION\nFROM ${REGISTRY}/pl-tool:${VERSION} AS tool\n"
        "FROM ${REGISTRY}/pl-base:${VERSION}\nCOPY --from=tool /from-tool /tool.seen /\nCOPY msg /\n"
        'CMD ["sh", "-c", "cat /from-base /from-tool /msg /base.seen /tool.seen"]\n'
    )
    return root


def test_a_pipeline_builds_in_dependency_order_in_parallel_and_pushes(tmp_path: Path, builder_base: BuildBase) -> None:
    root = write_pipeline(tmp_path / "proj", builder_base)
    host = builder_base.registry.host
    (root / "ZPipeline.yaml").write_text(PIPELINE.format(registry=host, base=builder_base.reference,
                                                         cache_id=tmp_path.name))  # fmt: skip
    data = tmp_path / "data"
    with no_mounts_left(tmp_path):
        r = subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(data), "pipeline", "--set", "VERSION=2",
                            "--push"], cwd=root, capture_output=True, text=True, timeout=600)  # fmt: skip
        rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:]}
        assert r.returncode == 0, r.stderr + r.stdout
        assert [rows[n][1] for n in ("app", "base", "tool")] == ["built"] * 3, r.stdout
        assert "[tool] [stage-0 2/3] RUN touch /shared/tool" in r.stderr, r.stderr
        # app started only once base and tool were done
        lines = r.stderr.splitlines()
        first_app = next(i for i, line in enumerate(lines) if line.startswith("[app]"))
        assert any(line.startswith("[base] built in") for line in lines[:first_app]), r.stderr
        assert any(line.startswith("[tool] built in") for line in lines[:first_app]), r.stderr
        # the two independent images ran at once: each saw the other start; ${VERSION} came from --set
        assert run_image(data, f"{host}/pl-app:2") == "base\ntool\napp\nsaw tool\nsaw base\n"
        assert ImageStore(data / "images").get(f"{host}/pl-app:2").id == rows["app"][4]
        # every tag was pushed to the registry once all were built
        for name in ("pl-app", "pl-base", "pl-tool"):
            inspect = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{host}/{name}:2"],
                                     capture_output=True, text=True, timeout=60)  # fmt: skip
            assert inspect.returncode == 0, (name, inspect.stderr)
        assert left_behind(data) == []


def test_a_failed_image_skips_its_dependents_and_the_rest_finish_without_fail_fast(
    tmp_path: Path, builder_base: BuildBase
) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "bad.Dockerfile").write_text(f"FROM {builder_base.reference}\nRUN echo broken; exit 3\n")
    (root / "ok.Dockerfile").write_text(f"FROM {builder_base.reference}\nRUN echo ok > /ok\n")
    (root / "zlayer-pipeline.yaml").write_text(
        "images:\n"
        "  bad:\n    file: bad.Dockerfile\n    retries: 1\n"
        "  after-bad:\n    file: ok.Dockerfile\n    depends_on: [bad]\n"
        "  fine:\n    file: ok.Dockerfile\n    tags: [pl-fine:1]\n"
    )
    data = tmp_path / "data"
    with no_mounts_left(tmp_path):
        r = zlayer_cmd(data, "pipeline", "-f", str(root / "zlayer-pipeline.yaml"), "--no-fail-fast")
        assert r.returncode == 1, r.stderr + r.stdout
        rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
        assert "failed" in rows["bad"] and "exited with code 3" in rows["bad"] and "broken" in rows["bad"]
        assert "skipped" in rows["after-bad"] and "not built: bad failed" in rows["after-bad"]
        assert rows["fine"].split()[1] == "built"
        assert r.stderr.count("[bad] [stage-0 2/2] | broken") == 2, r.stderr  # retries: 1 ran the step again
        assert "Traceback" not in r.stderr
        # failing fast (the default): the build still running is cancelled, cleanly
        (root / "slow.Dockerfile").write_text(f"FROM {builder_base.reference}\nRUN echo started; sleep 1238\n")
        (root / "fast.yaml").write_text(
            "images:\n  slow:\n    file: slow.Dockerfile\n  bad:\n    file: bad.Dockerfile\n    depends_on: [gate]\n"
            "  gate:\n    file: ok.Dockerfile\n"
        )
        ff = zlayer_cmd(data, "pipeline", "-f", str(root / "fast.yaml"))
        rows = {line.split()[0]: line for line in ff.stdout.splitlines()[1:]}
        assert ff.returncode == 1 and rows["slow"].split()[1] == "cancelled", ff.stdout + ff.stderr
        assert rows["bad"].split()[1] == "failed" and rows["gate"].split()[1] == "built"
        assert subprocess.run(["pgrep", "-f", "sleep 1238"], capture_output=True).returncode != 0
        assert left_behind(data) == []
        # a mistake in the manifest names its line and field
        (root / "zlayer-pipeline.yaml").write_text("images:\n  a:\n    file: ok.Dockerfile\n    depends_on: [b]\n")
        bad = zlayer_cmd(data, "pipeline", "-f", str(root / "zlayer-pipeline.yaml"))
        assert bad.returncode != 0 and "zlayer-pipeline.yaml:4:18: images.a.depends_on[0]: no image named 'b'" in (
            bad.stderr), bad.stderr  # fmt: skip
        assert left_behind(data) == []
