"""`zlayer build` (issue 18): a real multi-stage Dockerfile with a cache mount and a .dockerignore, built from a busybox
base image in a docker-registry, gives the same root filesystem as Debian's `buildah bud` of the same Dockerfile,
runs under zlayer's runtime, is read by skopeo and umoci, and a rebuild comes from the cache; bad input and a
cancelled build each give a clear message and leave no mount, container or half-written layer behind."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.fixtures.builder import (
    Buildah,
    BuildBase,
    mounts_under,
    no_mounts_left,
    oci_layout_of,
    tree,
    umoci_rootfs,
    zlayer_cmd,
)
from zlayer.images import ImageStore, export_archive
from zlayer.runtime import ContainerId
from zlayer.runtime.linux import shim
from zlayer.runtime.linux.backend import DirectoryImages, LinuxRuntime
from zlayer.spec.models import ServiceSpec

pytestmark = [pytest.mark.root, pytest.mark.peer, pytest.mark.slow]

DOCKERFILE = """\
# syntax=docker/dockerfile:1
ARG BASE
FROM ${BASE} AS build
ARG GREETING=hello
WORKDIR /src
COPY app/ ./
RUN --mount=type=cache,target=/cache echo "$GREETING" >> /cache/seen && \\
    wc -l < /cache/seen | tr -d ' ' > /src/cache-count && cat app.txt
RUN set -e; mkdir -p /out/nested; \
    for i in $(seq 1 5); do echo "file $i" > /out/nested/f$i; done; \
    ln -s nested/f1 /out/link
RUN rm /etc/base-only && chmod 0600 /out/nested/f2

FROM ${BASE}
COPY --from=build /out /opt/out
COPY --from=build /src/cache-count /opt/
COPY --chown=65534:65534 --chmod=0640 app/app.txt /opt/owned.txt
COPY app/*.txt /opt/globbed/
RUN rm /etc/base-only
ENV MODE=prod
LABEL org.example.built-by=test
EXPOSE 8080
WORKDIR /opt
USER nobody
CMD ["sh", "-c", "cat /opt/out/nested/f3 /opt/cache-count; id -u; pwd; echo $MODE"]
"""
LAYER_STEPS = 9  # RUN, COPY and ADD steps of both stages


def make_context(root: Path) -> Path:
    (root / "app" / "secret").mkdir(parents=True)
    (root / "app" / "app.txt").write_text("the app\n")
    (root / "app" / "other.txt").write_text("other\n")
    (root / "app" / "debug.log").write_text("left out by .dockerignore\n")
    (root / "app" / "secret" / "key").write_text("never in an image\n")
    (root / ".dockerignore").write_text("# logs and secrets stay home\n**/*.log\napp/secret\n")
    # a cache of its own: buildah keeps cache mounts of every build under /var/tmp
    (root / "Dockerfile").write_text(DOCKERFILE.replace("type=cache,", f"type=cache,id={uuid.uuid4().hex},"))
    return root


def zlayer_rootfs(data: Path, tag: str, out: Path) -> tuple[Path, Path]:
    """The image's root filesystem as umoci unpacks it from `zlayer export`'s archive, and that archive."""
    archive = out.parent / (out.name + ".tar")
    export_archive(ImageStore(data / "images"), tag, archive)
    layout = oci_layout_of(archive, out.parent / (out.name + "-layout"))
    return umoci_rootfs(layout, tag.rsplit(":", 1)[1], out), archive


def run_image(data: Path, tag: str) -> str:
    """Run the image's CMD under zlayer's Linux runtime; what it printed."""
    image = ImageStore(data / "images").get(tag)
    rt = LinuxRuntime(data / "rt", DirectoryImages({"built": (image.config, image.layer_dirs)}))
    rt.early_exit_window = 0  # the CMD prints and exits: that is all it does
    cid = ContainerId(f"zlbuild{uuid.uuid4().hex[:8]}", 1)

    async def go() -> str:
        await rt.create(cid, ServiceSpec.model_validate({"image": {"name": "built"}}))
        try:
            await rt.start(cid)
            await rt.wait(cid)
            return "".join([line.message + "\n" async for line in rt.logs(cid)])
        finally:
            await rt.remove(cid, force=True)

    return asyncio.run(go())


# What buildah's runtime leaves in a RUN step's layer (empty mount points of its own), which no Dockerfile wrote
RUNTIME_LEFTOVERS = {"dev", "proc", "sys", "run", "etc/hostname", "etc/hosts", "etc/resolv.conf", ".containerenv",
                     "run/.containerenv"}  # fmt: skip


def without_run_leftovers(
    peer: dict[str, tuple[str, ...]], ours: dict[str, tuple[str, ...]]
) -> dict[str, tuple[str, ...]]:
    empty = ("dir",), ("file", hashlib.sha256(b"").hexdigest()[:16])
    return {k: v for k, v in peer.items() if not (k in RUNTIME_LEFTOVERS and k not in ours and v[:-2] in empty)}


def left_behind(data: Path) -> list[str]:
    """Mounts, build work dirs and step containers a build left."""
    tmp = data / "images" / "tmp"
    leftovers = [str(p) for p in tmp.glob("build-*")] if tmp.exists() else []
    containers = data / "builder" / "containers"
    if containers.exists():
        leftovers += [str(p) for p in containers.iterdir() if not p.name.startswith(".")]
    return mounts_under(data) + leftovers


def test_a_multi_stage_build_matches_buildah_runs_and_rebuilds_from_cache(
    tmp_path: Path, builder_base: BuildBase, buildah: Buildah
) -> None:
    ctx = make_context(tmp_path / "ctx")
    data = tmp_path / "data"
    with no_mounts_left(tmp_path):
        r = zlayer_cmd(data, "build", "-t", "demo/app:1", "--build-arg", f"BASE={builder_base.reference}", str(ctx))
        assert r.returncode == 0, r.stderr
        image_id = r.stdout.strip().splitlines()[-1]
        # on a pipe: one plain line per step, and the step's own output
        assert "[build 3/19] WORKDIR /src" in r.stderr, r.stderr
        assert "[build 5/19] | the app" in r.stderr, r.stderr
        assert "CACHED" not in r.stderr

        peer = buildah.bud(ctx, "demo/app:1", "--build-arg", f"BASE={builder_base.reference}")
        assert peer.returncode == 0, peer.stderr
        ours, archive = zlayer_rootfs(data, "demo/app:1", tmp_path / "zl")
        theirs = buildah.rootfs("demo/app:1", tmp_path / "bh")
        mine, other = tree(ours), without_run_leftovers(tree(theirs), tree(ours))
        assert mine == other, {k: (mine.get(k), other.get(k)) for k in set(mine) ^ set(other) | {
            k for k in set(mine) & set(other) if mine[k] != other[k]}}  # fmt: skip
        assert "etc/base-only" not in mine and "opt/globbed/other.txt" in mine
        assert not any("debug.log" in k or "secret" in k for k in mine)
        assert mine["opt/owned.txt"][2:] == ("0o640", "65534:65534")

        # skopeo reads it, with Docker's config and a history entry per step
        inspect = json.loads(subprocess.run(["skopeo", "inspect", "--config", f"oci-archive:{archive}"],
                                            capture_output=True, text=True, check=True).stdout)  # fmt: skip
        cfg = inspect["config"]
        assert cfg["Cmd"][0] == "sh" and cfg["User"] == "nobody" and cfg["WorkingDir"] == "/opt"
        assert "MODE=prod" in cfg["Env"] and cfg["ExposedPorts"] == {"8080/tcp": {}}
        assert cfg["Labels"] == {"org.example.built-by": "test"}
        layers = [h for h in inspect["history"] if not h.get("empty_layer")]
        assert len(layers) == len(inspect["rootfs"]["diff_ids"]) == 1 + 5
        assert inspect["history"][-1]["created_by"].startswith("CMD")

        # it runs under zlayer's runtime as the user it names
        assert run_image(data, "demo/app:1") == "file 3\n1\n65534\n/opt\nprod\n"

        # the same build again: every step from the cache, the same image
        again = zlayer_cmd(data, "build", "-t", "demo/app:1", "--build-arg", f"BASE={builder_base.reference}",
                           str(ctx))  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert again.stderr.count("CACHED") == LAYER_STEPS and " | the app" not in again.stderr
        assert again.stdout.strip() == image_id

        # a change to an ignored file changes nothing; a change to a copied one rebuilds from that step on
        (ctx / "app" / "debug.log").write_text("changed\n")
        ignored = zlayer_cmd(data, "build", "-t", "demo/app:1", "--build-arg", f"BASE={builder_base.reference}",
                             str(ctx))  # fmt: skip
        assert ignored.stderr.count("CACHED") == LAYER_STEPS, ignored.stderr
        (ctx / "app" / "other.txt").write_text("changed\n")
        changed = zlayer_cmd(data, "build", "-t", "demo/app:2", "--build-arg", f"BASE={builder_base.reference}",
                             str(ctx))  # fmt: skip
        assert changed.returncode == 0, changed.stderr
        assert "[build 4/19] COPY app/ ./\n[build 5/19] RUN" in changed.stderr, changed.stderr
        assert "[build 5/19] | the app" in changed.stderr  # the cache mount keeps what the first run wrote:
        assert run_image(data, "demo/app:2").splitlines()[1] == "2"
        assert left_behind(data) == []


def test_heredocs_write_scripts_and_files(tmp_path: Path, builder_base: BuildBase) -> None:
    """Heredocs (which the buildah of Debian 12 does not read, so zlayer alone): a RUN script, a COPY'd file with
    the build's variables expanded, and one with a quoted delimiter left as written."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {builder_base.reference}\nARG WHO=world\n"
        'RUN <<EOT\nset -e\nmkdir -p /out\nfor i in 1 2; do echo "line $i" >> /out/script; done\nEOT\n'
        "COPY <<EOF /out/expanded\nhello $WHO\nEOF\n"
        "COPY <<-'EOF' /out/literal\n\thello $WHO\n\tEOF\n"
        'CMD ["sh", "-c", "cat /out/script /out/expanded /out/literal"]\n'
    )
    data = tmp_path / "data"
    with no_mounts_left(tmp_path):
        r = zlayer_cmd(data, "build", "-t", "here:1", "--build-arg", "WHO=zlayer", str(ctx))
        assert r.returncode == 0, r.stderr
        assert run_image(data, "here:1") == "line 1\nline 2\nhello zlayer\nhello $WHO\n"


BAD = [
    ("FROM {base}\nRUN true\nRUNN echo\n", "Dockerfile:3: unknown instruction RUNN"),
    ("FROM {base}\nCOPY nope.txt /x\n", "Dockerfile:2: COPY: source 'nope.txt' not found in the build context"),
    ("FROM {base}\nRUN echo first; echo second >&2; exit 3\n",
     "Dockerfile:2: RUN echo first; echo second >&2; exit 3: exited with code 3; its last output:\n  first\n  second"),
    ("FROM {host}/absent:1\n", "Dockerfile:1: FROM {host}/absent:1: the image cannot be pulled"),
]  # fmt: skip


@pytest.mark.parametrize(("dockerfile", "message"), BAD, ids=["syntax", "copy-source", "run-fails", "base-image"])
def test_bad_input_says_what_and_where_and_leaves_nothing(
    tmp_path: Path, builder_base: BuildBase, dockerfile: str, message: str
) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    fill = {"base": builder_base.reference, "host": builder_base.registry.host}
    (ctx / "Dockerfile").write_text(dockerfile.format(**fill))
    data = tmp_path / "data"
    with no_mounts_left(tmp_path):
        r = zlayer_cmd(data, "build", "-f", str(ctx / "Dockerfile"), str(ctx))
        assert r.returncode != 0
        assert message.format(**fill) in r.stderr.replace(str(ctx) + "/", ""), r.stderr
        assert "Traceback" not in r.stderr
        assert left_behind(data) == []


def test_a_build_cancelled_with_ctrl_c_leaves_nothing_and_keeps_the_cache(
    tmp_path: Path, builder_base: BuildBase
) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("x\n")
    first = f"FROM {builder_base.reference}\nCOPY f /f\n"
    (ctx / "Dockerfile").write_text(first + "RUN echo started && sleep 120\n")
    data = tmp_path / "data"
    with no_mounts_left(tmp_path):
        proc = subprocess.Popen([sys.executable, "-m", "zlayer", "--data-dir", str(data), "build", str(ctx)],
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "| started" in line:
                break
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
        assert rc != 0, seen
        assert "Traceback" not in proc.stderr.read()
        assert left_behind(data) == []
        assert asyncio.run(shim.list_containers(data / "builder" / "containers")) == []
        assert subprocess.run(["pgrep", "-f", "sleep 120"], capture_output=True).returncode != 0
        # the step that finished before the cancel is still in the cache
        (ctx / "Dockerfile").write_text(first + "RUN echo done\n")
        t = time.monotonic()
        r = zlayer_cmd(data, "build", str(ctx))
        assert r.returncode == 0 and "COPY f /f\n[stage-0 2/3] CACHED" in r.stderr, (r.stderr, time.monotonic() - t)


def test_a_zimagefile_builds_and_templates_take_their_base_from_the_configured_registry(
    tmp_path: Path, builder_base: BuildBase
) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "app.txt").write_text("from the context\n")
    (ctx / "ZImagefile").write_text(f"""\
stages:
  build:
    base: {builder_base.reference}
    env:
      WHO: zimage
    steps:
      - copy: app.txt
        to: /src/
      - run: echo "$WHO" > /src/who && cat /src/app.txt >> /src/who
        cache:
          - target: /cache
  final:
    base: {builder_base.reference}
    steps:
      - copy: /src/who
        from: build
        to: /who
        chmod: "0600"
cmd: [cat, /who]
""")
    data = tmp_path / "data"
    with no_mounts_left(tmp_path):
        r = zlayer_cmd(data, "build", "-t", "zimage:1", str(ctx))
        assert r.returncode == 0, r.stderr
        assert "[final 6/7] COPY --from=build" in r.stderr, r.stderr
        assert run_image(data, "zimage:1") == "zimage\nfrom the context\n"
        # a mistake names the ZImagefile's line and field
        (ctx / "ZImagefile").write_text(f"base: {builder_base.reference}\nsteps:\n  - copy: app.txt\n")
        bad = zlayer_cmd(data, "build", str(ctx))
        assert bad.returncode != 0 and "ZImagefile:3:5: steps[0].to: a copy step needs to:" in bad.stderr, bad.stderr
        # a runtime template's base image is asked of ZLAYER_DEFAULT_REGISTRY, and its absence named
        (ctx / "ZImagefile").unlink()
        (ctx / "go.mod").write_text("module example.com/x\n")
        host = builder_base.registry.host
        env_run = subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(data), "build", str(ctx)],
                                 capture_output=True, text=True, timeout=120,
                                 env={**os.environ, "ZLAYER_DEFAULT_REGISTRY": host})  # fmt: skip
        assert env_run.returncode != 0
        said = "runtime template go (detected):1: FROM golang:1-alpine: the image cannot be pulled"
        assert said in env_run.stderr and f"{host} answered 404" in env_run.stderr, env_run.stderr
        assert "Traceback" not in env_run.stderr
        assert left_behind(data) == []


def test_push_sends_the_built_image_to_the_registry(tmp_path: Path, builder_base: BuildBase) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "msg").write_text(f"pushed {tmp_path.name}\n")
    (ctx / "Dockerfile").write_text(f'FROM {builder_base.reference}\nCOPY msg /msg\nCMD ["cat", "/msg"]\n')
    ref = f"{builder_base.registry.host}/pushed/app:1"
    data = tmp_path / "data"
    with no_mounts_left(tmp_path):
        assert zlayer_cmd(data, "build", "--push", str(ctx)).returncode != 0  # nothing to push to without -t
        r = zlayer_cmd(data, "build", "--push", "-t", ref, str(ctx))
        assert r.returncode == 0, r.stderr
        digest = ImageStore(data / "images").get(ref).digest
        assert f"pushed {ref}: {digest}" in r.stderr, r.stderr
        raw = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert raw.returncode == 0 and json.loads(raw.stdout)["Digest"] == digest, raw.stderr
        # another node pulls it and runs it
        other = tmp_path / "other"
        assert zlayer_cmd(other, "pull", ref).returncode == 0
        assert run_image(other, ref) == f"pushed {tmp_path.name}\n"


def test_a_file_taken_from_another_stage_and_then_changed_leaves_that_stage_as_it_was(
    tmp_path: Path, builder_base: BuildBase
) -> None:
    """COPY --from links a file from the store's layer rather than copying it: a later step that writes to it must
    change the new stage only (overlayfs copies it up), never the layer it came from."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {builder_base.reference} AS a\n"
        "RUN echo original > /f && mkdir /d && echo 1 > /d/one && echo 3 > /d/three\n"
        "RUN echo 2 > /d/two && rm /d/one\n"  # /d in two layers, one of them with a whiteout
        f"FROM {builder_base.reference} AS b\nCOPY --from=a /f /f\nRUN echo appended >> /f\n"
        f"FROM {builder_base.reference}\nCOPY --from=a /f /from-a\nCOPY --from=b /f /from-b\nCOPY --from=a /d /d\n"
        'CMD ["sh", "-c", "cat /from-a /from-b; ls /d"]\n'
    )
    data = tmp_path / "data"
    with no_mounts_left(tmp_path):
        for _ in range(2):  # the second time from the cache: the layers the first build left
            r = zlayer_cmd(data, "build", "-t", "linked:1", str(ctx))
            assert r.returncode == 0, r.stderr
            assert run_image(data, "linked:1") == "original\noriginal\nappended\nthree\ntwo\n"


FEATURES = """\
ARG BASE
FROM --platform=linux/amd64 ${{BASE}} AS first
RUN ["sh", "-c", "echo exec form > /exec"]
SHELL ["/bin/sh", "-e", "-c"]
RUN echo "shell $0" > /shell

FROM ${{BASE}} AS tools
ADD archive.tar.gz /unpacked/
ADD http://127.0.0.1:{port}/remote.txt /downloaded.txt
RUN --mount=type=bind,source=bindme,target=/b cat /b/x > /bound
RUN --mount=type=secret,id=tok wc -c < /run/secrets/tok | tr -d ' ' > /secret-size
RUN --mount=type=tmpfs,target=/scratch touch /scratch/gone && ls /scratch > /tmpfs-seen
COPY --from=0 /exec /shell /
COPY --from={base} /etc/base-only /from-image
ONBUILD RUN echo triggered > /onbuild
VOLUME /data
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --retries=2 CMD true
ENTRYPOINT ["sh", "-c"]
CMD ["cat /exec /shell /unpacked/packed.txt /downloaded.txt /bound /secret-size /tmpfs-seen /from-image"]

FROM ${{BASE}} AS never
RUN exit 1
"""


def test_the_dockerfile_features_build_as_docker_builds_them(tmp_path: Path, builder_base: BuildBase) -> None:
    """Exec-form RUN, SHELL, ADD of a local archive and of a URL, RUN --mount bind/secret/tmpfs, COPY --from a
    stage index and an image, ONBUILD (run by the next build FROM the image), VOLUME, STOPSIGNAL, HEALTHCHECK,
    ENTRYPOINT, FROM --platform and --target (the stage after it, which would fail, is not built)."""
    import http.server
    import tarfile
    import threading
    from functools import partial

    served = tmp_path / "served"
    served.mkdir()
    (served / "remote.txt").write_text("downloaded\n")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ctx = tmp_path / "ctx"
    (ctx / "bindme").mkdir(parents=True)
    (ctx / "bindme" / "x").write_text("bound\n")
    (tmp_path / "packed.txt").write_text("unpacked\n")
    with tarfile.open(ctx / "archive.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "packed.txt", "packed.txt")
    (tmp_path / "token").write_text("s3cret")
    (ctx / "Dockerfile").write_text(FEATURES.format(port=server.server_address[1], base=builder_base.reference))
    data = tmp_path / "data"
    try:
        with no_mounts_left(tmp_path):
            secret = f"id=tok,src={tmp_path / 'token'}"
            r = zlayer_cmd(data, "build", "-t", "feat:1", "--target", "tools", "--build-arg",
                           f"BASE={builder_base.reference}", "--secret", secret, str(ctx))  # fmt: skip
            assert r.returncode == 0, r.stderr
            assert "RUN exit 1" not in r.stderr
            assert run_image(data, "feat:1") == ("exec form\nshell /bin/sh\nunpacked\ndownloaded\nbound\n6\ngone\n"
                                                 "in the base image\n")  # fmt: skip
            image = ImageStore(data / "images").get("feat:1")
            cfg = image.config
            assert cfg["Volumes"] == {"/data": {}} and cfg["StopSignal"] == "SIGINT"
            assert cfg["Healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Interval": 5_000_000_000, "Retries": 2}
            assert cfg["Entrypoint"] == ["sh", "-c"] and cfg["OnBuild"] == ["RUN echo triggered > /onbuild"]
            assert image.platform == "linux/amd64"
            # the secret was there for its step only: no layer holds it
            assert not any((d / "run" / "secrets" / "tok").exists() for d in image.layer_dirs)
            assert not any("s3cret" in p.read_text(errors="replace") for d in image.layer_dirs for p in d.rglob("*")
                           if p.is_file() and not p.is_symlink() and p.stat().st_size < 4096)  # fmt: skip

            # ONBUILD: the next build FROM this image runs the trigger first
            nxt = tmp_path / "next"
            nxt.mkdir()
            (nxt / "Dockerfile").write_text('FROM feat:1\nCMD ["cat /onbuild"]\n')
            r2 = zlayer_cmd(data, "build", "-t", "feat:2", str(nxt))
            assert r2.returncode == 0, r2.stderr
            assert run_image(data, "feat:2") == "triggered\n"
            assert "OnBuild" not in ImageStore(data / "images").get("feat:2").config
    finally:
        server.shutdown()
        server.server_close()


def test_a_rebuild_links_the_unchanged_files_of_a_copy_and_writes_the_changed_one(
    tmp_path: Path, builder_base: BuildBase
) -> None:
    """The second build of a COPY from the context links the files the first one wrote where their content is the
    same (by digest), and writes the one whose content changed — even with its size and mtime as they were."""
    from zlayer.builder import Builder, BuildOptions

    ctx = tmp_path / "ctx"
    (ctx / "src").mkdir(parents=True)
    (ctx / "src" / "same.txt").write_text("unchanged\n")
    (ctx / "src" / "edited.txt").write_text("before\n")
    (ctx / "Dockerfile").write_text(f'FROM {builder_base.reference}\nCOPY src/ /src/\nCMD ["cat", "/src/edited.txt"]\n')
    data = tmp_path / "data"
    store = ImageStore(data / "images")

    def build(tag: str) -> Path:
        asyncio.run(Builder(store, data / "builder").build(BuildOptions(context=ctx, tags=[tag])))
        return store.get(tag).layer_dirs[-1]

    with no_mounts_left(tmp_path):
        build("reuse:1")
        edited = ctx / "src" / "edited.txt"
        old = os.stat(edited)
        time.sleep(0.05)  # past the kernel's coarse clock tick: the edit gets a ctime of its own
        edited.write_text("after!\n")  # the same size, and the mtime put back
        os.utime(edited, ns=(old.st_atime_ns, old.st_mtime_ns))
        layer = build("reuse:2")
        assert run_image(data, "reuse:2") == "after!\n"
        assert os.stat(layer / "src" / "same.txt").st_nlink > 1  # linked from the first build's layer
        assert os.stat(layer / "src" / "edited.txt").st_nlink == 1


def test_a_copy_from_a_stage_stays_cached_when_that_stage_changed_other_paths(
    tmp_path: Path, builder_base: BuildBase
) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "changing.txt").write_text("one\n")
    (ctx / "Dockerfile").write_text(
        f"FROM {builder_base.reference} AS a\nRUN mkdir /stable && echo stable > /stable/f\nCOPY changing.txt /c\n"
        f"FROM {builder_base.reference}\nCOPY --from=a /stable /stable\nCOPY --from=a /c /c\n"
        'CMD ["cat", "/stable/f", "/c"]\n'
    )
    data = tmp_path / "data"
    with no_mounts_left(tmp_path):
        assert zlayer_cmd(data, "build", "-t", "partial:1", str(ctx)).returncode == 0
        (ctx / "changing.txt").write_text("two\n")
        r = zlayer_cmd(data, "build", "-t", "partial:2", str(ctx))
        assert r.returncode == 0, r.stderr
        assert "COPY --from=a /stable /stable\n[stage-1 5/7] CACHED\n" in r.stderr, r.stderr
        assert "COPY --from=a /c /c\n[stage-1 6/7] CACHED" not in r.stderr, r.stderr
        assert run_image(data, "partial:2") == "stable\ntwo\n"
