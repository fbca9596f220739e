"""`zlayer pull` vs `skopeo copy` + `umoci unpack` of one 5-layer ~300 MB image from a local docker-registry.

The script builds the image itself (deterministic for a given machine): real files copied from /usr (libraries,
binaries, documentation, the Python standard library — many small files and some big ones), a layer of
incompressible bytes, symlinks, hardlinks and whiteouts; each layer gzip-compressed as registries serve them. It
starts Debian's docker-registry on a free loopback port, pushes the image with skopeo, then times, alternating:

- zlayer: ``zlayer --data-dir FRESH pull -q REF`` until it exits (the layers are unpacked, ready to mount);
- peer:   ``skopeo copy docker://REF oci:DIR:tag`` then ``umoci unpack --image DIR:tag BUNDLE``.

It also measures unpacking alone from the same local blobs, one layer after the other: zlayer's layer unpacker
(uncompressed MB/s) beside ``tar -xzf``. Run as root. Last line: one JSON object with the medians,
``time_vs_skopeo_umoci`` (target <= 0.7), ``unpack_mb_s``, ``tar_xzf_mb_s`` and ``unpack_vs_tar_xzf``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.images_peers import start_registry, stop_registry  # noqa: E402

ROUNDS = int(os.environ.get("PERF_ROUNDS", "3"))
MB = 1_000_000
MTIME = 1_700_000_000
# (layer name, source directories under /usr or None for random bytes, byte budget)
LAYERS: list[tuple[str, list[str], int]] = [
    ("libraries", ["/usr/lib/x86_64-linux-gnu"], 80 * MB),
    ("docs", ["/usr/share/doc", "/usr/share/locale"], 40 * MB),
    ("binaries", ["/usr/bin"], 70 * MB),
    ("blobs", [], 60 * MB),
    ("python", ["/usr/lib/python3.11", "/usr/lib/python3"], 50 * MB),
]


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _info(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, MTIME
    info.uname = info.gname = "root"
    return info


def _tree_entries(tar: tarfile.TarFile, sources: list[str], budget: int) -> int:
    """Copy real files from ``sources`` (sorted walk) until ``budget`` bytes; returns the bytes written."""
    used = 0
    dirs_done: set[str] = set()
    for src in sources:
        for top, dirnames, filenames in os.walk(src):
            dirnames.sort()
            rel_top = top.lstrip("/")
            for part_end in range(len(rel_top.split("/"))):
                d = "/".join(rel_top.split("/")[: part_end + 1])
                if d not in dirs_done:
                    dirs_done.add(d)
                    tar.addfile(_info(d, tarfile.DIRTYPE, 0o755))
            for name in sorted(filenames):
                path = os.path.join(top, name)
                rel = path.lstrip("/")
                st = os.lstat(path)
                if os.path.islink(path):
                    link = os.readlink(path)
                    depth = rel.count("/")
                    level = depth
                    ok = True
                    for p in (x for x in link.split("/") if x not in ("", ".")):
                        level = level - 1 if p == ".." else level + 1
                        ok = ok and level >= 0
                    if ok or link.startswith("/"):
                        info = _info(rel, tarfile.SYMTYPE, 0o777)
                        info.linkname = link
                        tar.addfile(info)
                    continue
                if not os.path.isfile(path) or not os.access(path, os.R_OK):
                    continue
                if used + st.st_size > budget:
                    continue  # does not fit; a smaller one further on may
                with open(path, "rb") as f:
                    tar.addfile(_info(rel, mode=st.st_mode & 0o7777, size=st.st_size), f)
                used += st.st_size
    return used


def build_layer(index: int) -> tuple[bytes, bytes]:
    """(uncompressed tar, gzip blob) of one layer."""
    name, sources, budget = LAYERS[index]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_info(f"perf-{name}", tarfile.DIRTYPE, 0o755))
        if sources:
            _tree_entries(tar, sources, budget)
        else:
            rng = random.Random(index)
            sizes = [budget // 3, budget // 6, budget // 6] + [budget // 30] * 10
            for i, size in enumerate(sizes):
                tar.addfile(_info(f"perf-{name}/random-{i}.bin", size=size), io.BytesIO(rng.randbytes(size)))
        if index == len(LAYERS) - 1:  # whiteouts of lower files, an opaque dir, hardlinks
            tar.addfile(_info("perf-docs/.wh..wh..opq"))
            tar.addfile(_info("perf-blobs/.wh.random-12.bin"))
            data = b"hardlinked\n" * 1000
            tar.addfile(_info(f"perf-{name}/orig", size=len(data)), io.BytesIO(data))
            for i in range(3):
                info = _info(f"perf-{name}/hard-{i}", tarfile.LNKTYPE)
                info.linkname = f"perf-{name}/orig"
                tar.addfile(info)
    raw = buf.getvalue()
    return raw, gzip.compress(raw, 6, mtime=0)


def build_image(layout: Path) -> tuple[int, int]:
    """Write an OCI image layout with the perf image (tag 'bench'); returns (uncompressed, compressed) bytes."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    with ThreadPoolExecutor(2) as pool:  # zlib releases the GIL
        built = list(pool.map(build_layer, range(len(LAYERS))))
    descs, diff_ids = [], []
    for raw, blob in built:
        (blobs / _digest(blob)[7:]).write_bytes(blob)
        diff_ids.append(_digest(raw))
        descs.append(
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _digest(blob), "size": len(blob)}
        )
    cfg = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    (blobs / _digest(cfg)[7:]).write_bytes(cfg)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(cfg),
                "size": len(cfg),
            },
            "layers": descs,
        }
    ).encode()
    (blobs / _digest(manifest)[7:]).write_bytes(manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": _digest(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "bench"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return sum(len(r) for r, _ in built), sum(len(b) for _, b in built)


def timed(argv: list[str], **kw: object) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - start


def run_zlayer(ref: str, work: Path) -> float:
    data = work / "zlayer-data"
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "zlayer", "--data-dir", str(data), "pull", "-q", ref],
        capture_output=True,
        text=True,
    )
    took = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"zlayer pull failed: {res.stderr[-2000:]}")
    layers = [p for p in (data / "images" / "layers").iterdir() if (p / "diffid").is_file()]
    if len(layers) != len(LAYERS):
        raise SystemExit(f"zlayer pull left {len(layers)} complete layer dirs, expected {len(LAYERS)}")
    shutil.rmtree(data)
    return took


def run_peer(ref: str, work: Path) -> float:
    oci, bundle = work / "skopeo-oci", work / "umoci-bundle"
    took = timed(["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{oci}:bench"])
    took += timed(["umoci", "unpack", "--image", f"{oci}:bench", str(bundle)])
    if not (bundle / "rootfs" / "perf-python").is_dir():
        raise SystemExit("umoci unpack left no rootfs")
    shutil.rmtree(oci)
    shutil.rmtree(bundle)
    return took


def unpack_rates(layout: Path, work: Path, uncompressed: int) -> tuple[float, float]:
    """(zlayer MB/s, tar -xzf MB/s) unpacking the same blobs one layer after the other, uncompressed bytes/s."""
    from zlayer.images.unpack import unpack_layer

    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    blobs = [layout / "blobs/sha256" / d["digest"][7:] for d in manifest["layers"]]
    best_z = best_t = float("inf")
    for _ in range(2):
        for who in ("zlayer", "tar"):
            dirs = [work / f"{who}-{i}" for i in range(len(blobs))]
            for d in dirs:
                d.mkdir()
            start = time.perf_counter()
            for blob, d in zip(blobs, dirs, strict=True):
                if who == "zlayer":
                    with open(blob, "rb") as f:
                        unpack_layer(f, d, layer=blob.name)
                else:
                    subprocess.run(["tar", "-xzf", str(blob), "-C", str(d)], check=True)
            took = time.perf_counter() - start
            if who == "zlayer":
                best_z = min(best_z, took)
            else:
                best_t = min(best_t, took)
            for d in dirs:
                shutil.rmtree(d)
    return uncompressed / best_z / MB, uncompressed / best_t / MB


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("run as root (umoci unpack and zlayer's unpacker keep ownership and device nodes)")
    with tempfile.TemporaryDirectory(prefix="zlayer-perf-pull-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        uncompressed, compressed = build_image(work / "layout")
        print(
            f"image: {len(LAYERS)} layers, {uncompressed / MB:.0f} MB uncompressed, {compressed / MB:.0f} MB gzip "
            f"(built in {time.perf_counter() - t0:.1f}s)",
            file=sys.stderr,
        )
        registry = start_registry(work / "registry")
        try:
            ref = f"{registry.host}/perf/pull:1"
            subprocess.run(
                ["skopeo", "copy", "--dest-tls-verify=false", f"oci:{work / 'layout'}:bench", f"docker://{ref}"],
                check=True,
                capture_output=True,
            )
            zl: list[float] = []
            peer: list[float] = []
            for r in range(ROUNDS):
                order = (run_zlayer, run_peer) if r % 2 == 0 else (run_peer, run_zlayer)
                for fn in order:
                    took = fn(ref, work)
                    (zl if fn is run_zlayer else peer).append(took)
                print(f"round {r + 1}: zlayer {zl[-1]:.2f}s, skopeo+umoci {peer[-1]:.2f}s", file=sys.stderr)
        finally:
            stop_registry(registry)
        unpack_mb_s, tar_mb_s = unpack_rates(work / "layout", work, uncompressed)
    z, p = statistics.median(zl), statistics.median(peer)
    result = {
        "layers": len(LAYERS),
        "uncompressed_mb": round(uncompressed / MB, 1),
        "compressed_mb": round(compressed / MB, 1),
        "rounds": ROUNDS,
        "zlayer_pull_s": round(z, 3),
        "skopeo_umoci_s": round(p, 3),
        "time_vs_skopeo_umoci": round(z / p, 3),
        "unpack_mb_s": round(unpack_mb_s, 1),
        "tar_xzf_mb_s": round(tar_mb_s, 1),
        "unpack_vs_tar_xzf": round(unpack_mb_s / tar_mb_s, 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
