"""`zlayer build` vs `buildah bud` of the same multi-stage Dockerfile, cold and after a one-file change.

The Dockerfile (below) has a build stage with several RUN steps writing files, a COPY of a few thousand small files
from the context (``src/``, ``FILES`` files in 50 directories) and a RUN over them, and a final stage that takes
the results with ``COPY --from``. The script starts Debian's docker-registry on a free loopback port with a busybox
base image, then, alternating which goes first:

- cold: each tool builds into fresh storage of its own (the base image pulled from the registry, no step cache):
  ``zlayer --data-dir FRESH build -t perf:1 CTX`` and ``buildah --root FRESH bud --layers -t perf:1 CTX``;
- rebuild: after one file of ``src/`` changes, each tool builds again on the storage of its last cold build (the
  steps before the COPY come from the cache; the COPY and what follows run again).

Run as root. Last line: one JSON object with the medians, ``build_vs_buildah`` (target <= 0.5) and
``rebuild_vs_buildah`` (target <= 0.2), and the seconds of each.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.builder import Buildah, push_build_base  # noqa: E402
from tests.fixtures.images_peers import start_registry, stop_registry  # noqa: E402

ROUNDS = int(os.environ.get("PERF_ROUNDS", "3"))
FILES = int(os.environ.get("PERF_BUILD_FILES", "3000"))

DOCKERFILE = """\
ARG BASE
FROM ${BASE} AS build
WORKDIR /work
RUN mkdir -p /work/gen && for i in $(seq 1 200); do echo "generated $i" > /work/gen/g$i; done
RUN for i in $(seq 1 50); do seq 1 100 > /work/gen/s$i; done && md5sum /work/gen/* > /work/sums
RUN mkdir -p /work/bin && cp /bin/busybox /work/bin/tool && echo built > /work/stamp
COPY src/ /work/src/
RUN find /work/src -type f | wc -l > /work/count && md5sum /work/src/d0/* > /work/src-sums

FROM ${BASE}
COPY --from=build /work/gen /app/gen
COPY --from=build /work/count /work/sums /work/src-sums /app/
COPY --from=build /work/src /app/src
RUN echo ready > /app/ready
CMD ["cat", "/app/count"]
"""


def make_context(ctx: Path) -> None:
    for i in range(FILES):
        d = ctx / "src" / f"d{i % 50}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.txt").write_text(f"small file {i}\n" * (1 + i % 7))
    (ctx / ".dockerignore").write_text("*.tmp\n")
    (ctx / "Dockerfile").write_text(DOCKERFILE)


def timed(argv: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True)
    took = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{argv[0]} failed:\n{r.stderr[-3000:]}")
    return took


def zlayer_build(data: Path, ctx: Path, base: str) -> float:
    return timed([sys.executable, "-m", "zlayer", "--data-dir", str(data), "build", "-q", "-t", "perf:1",
                  "--build-arg", f"BASE={base}", str(ctx)])  # fmt: skip


def buildah_build(b: Buildah, ctx: Path, base: str) -> float:
    argv = [*b.base, "bud", "--runtime", "runc", "--tls-verify=false", "--layers", "-q", "-t", "perf:1",
            "--build-arg", f"BASE={base}", str(ctx)]  # fmt: skip
    return timed(argv)


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("run as root (both builders mount overlayfs and run steps in namespaces)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    os.environ.update(env)
    with tempfile.TemporaryDirectory(prefix="zlayer-perf-build-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        ctx = work / "ctx"
        make_context(ctx)
        registry = start_registry(work / "registry")
        cold: dict[str, list[float]] = {"zlayer": [], "buildah": []}
        warm: dict[str, list[float]] = {"zlayer": [], "buildah": []}
        peers: list[Buildah] = []
        try:
            base = push_build_base(registry.host)
            for r in range(ROUNDS):
                data = work / f"zl-{r}"
                peer = Buildah(work / f"bh-{r}")
                peers.append(peer)
                runs = [
                    ("zlayer", lambda d=data: zlayer_build(d, ctx, base)),
                    ("buildah", lambda p=peer: buildah_build(p, ctx, base)),
                ]
                if r % 2:
                    runs.reverse()
                for name, fn in runs:
                    cold[name].append(fn())
                changed = ctx / "src" / "d0" / f"f{r * 50}.txt"
                changed.write_text(f"changed in round {r}\n")
                for name, fn in runs:
                    warm[name].append(fn())
                print(f"round {r + 1}: cold zlayer {cold['zlayer'][-1]:.2f}s buildah {cold['buildah'][-1]:.2f}s; "
                      f"rebuild zlayer {warm['zlayer'][-1]:.2f}s buildah {warm['buildah'][-1]:.2f}s",
                      file=sys.stderr)  # fmt: skip
                shutil.rmtree(data, ignore_errors=True)
        finally:
            stop_registry(registry)
            for peer in peers:
                peer.cleanup()
    zc, bc = statistics.median(cold["zlayer"]), statistics.median(cold["buildah"])
    zw, bw = statistics.median(warm["zlayer"]), statistics.median(warm["buildah"])
    print(json.dumps({
        "files": FILES,
        "rounds": ROUNDS,
        "zlayer_build_s": round(zc, 3),
        "buildah_build_s": round(bc, 3),
        "build_vs_buildah": round(zc / bc, 3),
        "zlayer_rebuild_s": round(zw, 3),
        "buildah_rebuild_s": round(bw, 3),
        "rebuild_vs_buildah": round(zw / bw, 3),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
