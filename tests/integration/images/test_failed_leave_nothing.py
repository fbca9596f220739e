"""Issue 11: failed imports left orphaned blobs behind (71 blobs for 6 images). A failed import or pull leaves the
store as it was — but for a pull's downloads, kept as partial downloads the next pull resumes — and `zlayer system
prune` collects what nothing refers to, sparing what an import or pull in progress holds."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.images import (
    Entry,
    busybox_entries,
    docker_archive,
    oci_archive,
    retold,
    rewrite_archive,
    tar_bytes,
)
from tests.fixtures.images_peers import OCI_MANIFEST, Proxy, Registry, push_image, raw_push_manifest
from zlayer.errors import ImageError
from zlayer.images import ImageStore, pull

pytestmark = [pytest.mark.root, pytest.mark.peer]


def zl(data: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zlayer", "--data-dir", str(data), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def snapshot(root: Path) -> dict[str, Any]:
    names = root / "repositories.json"
    return {
        "blobs": sorted(p.name for p in (root / "blobs" / "sha256").iterdir()),
        "layers": sorted(p.name for p in (root / "layers").iterdir()),
        "names": json.loads(names.read_text()) if names.exists() else {},
    }


def _hostile_archives(tmp: Path) -> list[tuple[str, Path, list[str], dict[str, str]]]:
    """(what, archive, extra import arguments, environment) of imports that must each fail after copying something."""
    base = busybox_entries()
    fresh = [Entry("etc/fresh", data=os.urandom(4096))]  # blobs the store does not have yet
    good = oci_archive(tmp / "good2.tar", [base, fresh])

    def drop_layer(m: dict[str, bytes]) -> None:
        index = json.loads(m["index.json"])
        manifest = json.loads(m[f"blobs/sha256/{index['manifests'][0]['digest'][7:]}"])
        del m[f"blobs/sha256/{manifest['layers'][-1]['digest'][7:]}"]

    def swap_layer(m: dict[str, bytes]) -> None:
        index = json.loads(m["index.json"])
        manifest = json.loads(m[f"blobs/sha256/{index['manifests'][0]['digest'][7:]}"])
        name = f"blobs/sha256/{manifest['layers'][-1]['digest'][7:]}"
        m[name] = gzip.compress(tar_bytes([Entry("etc/other", data=os.urandom(len(m[name])))]))[: len(m[name])]

    def deep_index(m: dict[str, bytes]) -> None:
        index = json.loads(m["index.json"])
        for depth in range(6):
            body = json.dumps(index).encode()
            digest = "sha256:" + __import__("hashlib").sha256(body).hexdigest()
            m[f"blobs/sha256/{digest[7:]}"] = body
            entry = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": len(body)}
            index = {"schemaVersion": 2, "manifests": [entry], "annotations": {"depth": str(depth)}}
        m["index.json"] = json.dumps(index).encode()

    def other_config(m: dict[str, bytes]) -> None:
        entry = json.loads(m["manifest.json"])[0]
        m[entry["Config"]] = m[entry["Config"]].replace(b'"amd64"', b'"arm64"')

    def not_json(m: dict[str, bytes]) -> None:
        m["index.json"] = b"[" * 100_000

    truncated = tmp / "truncated.tar.gz"
    truncated.write_bytes(gzip.compress(good.read_bytes())[:-20000])
    unnamed = oci_archive(tmp / "unnamed.tar", [base, fresh])
    return [
        (
            "a layer whose size lies",
            retold(good, tmp / "size.tar", lambda m: m["layers"][-1].update(size=10**15)),
            [],
            {},
        ),
        ("a blob missing", rewrite_archive(good, tmp / "missing.tar", drop_layer), [], {}),
        ("a layer whose content is another", rewrite_archive(good, tmp / "swapped.tar", swap_layer), [], {}),
        (
            "a hostile entry in the last layer",
            oci_archive(tmp / "evil.tar", [base, fresh, [Entry("../x", data=b"x")]]),
            [],
            {},
        ),
        (
            "a decompression bomb",
            oci_archive(tmp / "bomb.tar", [base, fresh, [Entry("z", data=bytes(32 << 20))]]),
            [],
            {"ZLAYER_MAX_LAYER_SIZE": "16Mi"},
        ),
        ("layers past the image limit", good, [], {"ZLAYER_MAX_IMAGE_SIZE": "1Mi"}),
        (
            "a docker archive with a hostile layer",
            docker_archive(tmp / "saved.tar", [base, fresh, [Entry("/etc/evil", data=b"x")]], repo_tag="evil/saved:1"),
            [],
            {},
        ),
        (
            "a docker archive whose config is not what its name says",
            rewrite_archive(docker_archive(tmp / "s2.tar", [base, fresh]), tmp / "s2-other.tar", other_config),
            [],
            {},
        ),
        ("indexes nested too deep", rewrite_archive(good, tmp / "deep.tar", deep_index), [], {}),
        ("an index.json that is not JSON", rewrite_archive(good, tmp / "notjson.tar", not_json), [], {}),
        ("a truncated archive", truncated, [], {}),
        ("an archive that names no image", unnamed, ["--change", "ENV A=1"], {}),
        ("an unsupported --change", good, ["-t", "x/y:1", "--change", "RUN rm -rf /"], {}),
    ]


def test_a_series_of_failed_imports_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    data = tmp_path / "data"
    root = data / "images"
    ok = zl(data, "import", str(oci_archive(tmp_path / "good.tar", [busybox_entries()])), "-t", "keep/good:1")
    assert ok.returncode == 0, ok.stderr
    before = snapshot(root)
    for what, archive, args, env in _hostile_archives(tmp_path):
        name = [] if "-t" in args or "names no" in what else ["-t", "hostile/x:1"]
        out = zl(data, "import", str(archive), *name, *args, env=env)
        assert out.returncode != 0, what
        assert "Traceback" not in out.stderr and "internal error" not in out.stderr, (what, out.stderr)
        assert snapshot(root) == before, what
        assert list((root / "tmp").iterdir()) == [], what
        assert list((root / "leases").iterdir()) == [], what
    pruned = zl(data, "system", "prune", "-y")
    assert pruned.returncode == 0 and snapshot(root) == before
    assert json.loads(zl(data, "image", "ls", "-o", "json").stdout)[0]["reference"] == "docker.io/keep/good:1"


def test_a_failed_pull_keeps_only_its_downloads_and_the_next_pull_resumes_them(
    tmp_path: Path, images_registry: Registry, images_proxy_factory: Callable[[str], Proxy]
) -> None:
    host, repo = images_registry.host, "leftover/pull"
    store = ImageStore(tmp_path / "images")
    asyncio.run(pull(store, push_image(host, repo, "base", [busybox_entries()]).reference))
    before = snapshot(store.root)
    layers = [busybox_entries(), [Entry("one", data=os.urandom(1 << 20))], [Entry("../escape", data=b"x")]]
    pushed = push_image(host, repo, "evil", layers)
    with pytest.raises(ImageError, match="escape"):
        asyncio.run(pull(store, pushed.reference, policy="always"))
    assert snapshot(store.root) == before
    kept = sorted(p.name for p in (store.root / "tmp").iterdir() if p.name.startswith("partial-"))
    assert f"partial-{pushed.layers[1][7:]}" in kept  # the sound new layer, ready to resume
    had = (store.root / "tmp" / f"partial-{pushed.layers[1][7:]}").stat().st_size
    # a pull of a sound image sharing that layer takes it from the partial download: what the failed pull had fetched
    # (all of it, unless the failure cut the download short) is not fetched again
    proxy = images_proxy_factory(host)
    sound = push_image(host, repo, "sound", layers[:2])
    assert sound.layers[1] == pushed.layers[1]
    image = asyncio.run(pull(store, f"{proxy.host}/{repo}:sound", policy="always"))
    fetched = [(s.range, s.status) for s in proxy.requests("GET", f"/blobs/{pushed.layers[1]}")]
    whole = pushed.manifest["layers"][1]["size"]
    resumed = [] if had == whole else [(None, 200)] if had == 0 else [(f"bytes={had}-", 206)]
    assert fetched == resumed, (had, whole, fetched)
    assert (image.layer_dirs[1] / "one").stat().st_size == 1 << 20
    # a manifest lying about a layer's size fails after the config was fetched: that goes too
    lie = json.loads(json.dumps(sound.manifest))
    lie["layers"][1]["size"] += 1
    raw_push_manifest(host, repo, "lie", json.dumps(lie).encode(), OCI_MANIFEST)
    fresh = ImageStore(tmp_path / "fresh")
    with pytest.raises(ImageError, match="its descriptor says"):
        asyncio.run(pull(fresh, f"{host}/{repo}:lie", policy="always"))
    assert snapshot(fresh.root)["blobs"] == [] and snapshot(fresh.root)["layers"] == []
    assert list((fresh.root / "leases").iterdir()) == []


def test_prune_spares_what_a_live_import_holds_and_collects_it_once_its_owner_died(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time\n"
            "from zlayer.images import ImageStore\n"
            "store = ImageStore(sys.argv[1])\n"
            "lease = store.lease()\n"
            "digest = store.put_blob(b'in progress', lease=lease)\n"
            "print(digest, flush=True)\n"
            "time.sleep(600)\n"
        ), str(store.root)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        digest = holder.stdout.readline().strip()
        stray = store.put_blob(b"nobody's")
        assert zl(tmp_path, "system", "prune", "-y", env={"ZLAYER_DATA_DIR": str(tmp_path)}).returncode == 0
        items, _ = store.prune()
        assert store.has_blob(digest) and not store.has_blob(stray)
        assert items == 0  # the first prune took the stray blob already
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    store.prune()
    assert not store.has_blob(digest)
    assert list((store.root / "leases").iterdir()) == []


def test_imports_failing_and_succeeding_at_once_with_a_prune_running_leave_exactly_the_good_images(
    tmp_path: Path,
) -> None:
    import threading

    from zlayer.images import import_archive

    store = ImageStore(tmp_path / "images")
    base = busybox_entries()
    good = [oci_archive(tmp_path / f"good{i}.tar", [base, [Entry(f"g{i}", data=os.urandom(1 << 16))]])
            for i in range(3)]  # fmt: skip
    bad = [oci_archive(tmp_path / f"bad{i}.tar", [base, [Entry(f"b{i}", data=b"x")], [Entry("../out", data=b"x")]])
           for i in range(3)]  # fmt: skip
    stop = threading.Event()
    errors: list[BaseException] = []

    def prune_loop() -> None:
        while not stop.is_set():
            try:
                store.prune()
            except BaseException as e:
                errors.append(e)
                return

    def run(archive: Path, tag: str, fails: bool) -> None:
        for _ in range(3):
            try:
                import_archive(store, archive, tag=tag)
                assert not fails, f"{archive} imported"
            except ImageError as e:
                if not fails:
                    errors.append(e)
            except BaseException as e:
                errors.append(e)

    pruner = threading.Thread(target=prune_loop)
    workers = [threading.Thread(target=run, args=(a, f"race/good:{i}", False)) for i, a in enumerate(good)]
    workers += [threading.Thread(target=run, args=(a, f"race/bad:{i}", True)) for i, a in enumerate(bad)]
    pruner.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    pruner.join()
    assert errors == []
    want_blobs: set[str] = set()
    want_layers: set[str] = set()
    for i in range(3):
        image = store.get(f"race/good:{i}")
        assert (image.layer_dirs[0] / "bin" / "busybox").is_file() and (image.layer_dirs[1] / f"g{i}").is_file()
        want_blobs |= {image.digest[7:], image.id[7:], *(d["digest"][7:] for d in image.manifest["layers"])}
        want_layers |= {d.parent.name for d in image.layer_dirs}
    assert set(snapshot(store.root)["blobs"]) == want_blobs
    assert set(snapshot(store.root)["layers"]) == want_layers
    assert list((store.root / "leases").iterdir()) == []
    assert [p.name for p in (store.root / "tmp").iterdir()] == []
