"""Issue 11, item 9: every blob must match its descriptor's digest and size — from an OCI archive, a registry (Debian's
docker-registry, with a hostile proxy in front where a real registry would not misbehave) and on push — and a layer
that unpacks past the configured limit (per layer, per image) is refused naming it, with nothing of it kept."""

from __future__ import annotations

import asyncio
import functools
import gzip
import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.images import Entry, busybox_entries, oci_archive, retold, tar_bytes
from tests.fixtures.images_peers import (
    OCI_CONFIG,
    OCI_MANIFEST,
    Proxy,
    Registry,
    push_image,
    raw_push_blob,
    raw_push_manifest,
)
from zlayer.errors import ImageError
from zlayer.images import ImageStore, pull
from zlayer.images.unpack import UnpackLimits

pytestmark = [pytest.mark.root, pytest.mark.peer]
PETA = 10**15


def zl(data: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zlayer", "--data-dir", str(data), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _store_content(data: Path) -> tuple[set[str], set[str]]:
    root = data / "images"
    blobs = {p.name for p in (root / "blobs" / "sha256").iterdir()} if root.exists() else set()
    layers = {p.name for p in (root / "layers").iterdir()} if root.exists() else set()
    return blobs, layers


def _bomb(size: int, name: str = "zeros") -> list[Entry]:
    """A layer whose gzip blob is about a thousandth of what it unpacks to."""
    return [Entry(name, data=bytes(size))]


@pytest.mark.parametrize("claimed", [PETA, "smaller", "larger"])
def test_archive_layer_whose_descriptor_lies_about_its_size_is_refused_naming_both_sizes(
    tmp_path: Path, claimed: int | str
) -> None:
    good = oci_archive(tmp_path / "good.tar", [busybox_entries()])
    real: dict[str, int] = {}

    def lie(manifest: dict[str, Any]) -> None:
        layer = manifest["layers"][0]
        real.update(digest=layer["digest"], size=layer["size"])
        layer["size"] = {"smaller": layer["size"] - 1, "larger": layer["size"] + 1}.get(str(claimed), claimed)

    archive = retold(good, tmp_path / "lie.tar", lie)
    data = tmp_path / "data"
    out = zl(data, "import", str(archive), "-t", "sizes/lie:1")
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    said = {"smaller": real["size"] - 1, "larger": real["size"] + 1}.get(str(claimed), claimed)
    assert real["digest"] in out.stderr and f"says {said} bytes" in out.stderr, out.stderr
    assert f"has {real['size']}" in out.stderr or f"has more than {said}" in out.stderr, out.stderr
    assert json.loads(zl(data, "image", "ls", "-o", "json").stdout) == []
    assert _store_content(data) == (set(), set())


def test_pulled_layer_whose_descriptor_claims_a_petabyte_is_refused_before_any_download(
    tmp_path: Path, images_registry: Registry, images_proxy_factory: Callable[[str], Proxy]
) -> None:
    host, repo = images_registry.host, "sizes/peta"
    pushed = push_image(host, repo, "1", [busybox_entries()])
    manifest = json.loads(json.dumps(pushed.manifest))
    manifest["layers"][0]["size"] = PETA
    raw_push_manifest(host, repo, "lie", json.dumps(manifest).encode(), OCI_MANIFEST)
    proxy = images_proxy_factory(host)
    store = ImageStore(tmp_path / "images")
    with pytest.raises(ImageError) as err:
        asyncio.run(pull(store, f"{proxy.host}/{repo}:lie", policy="always"))
    assert f"layer {pushed.layers[0]} is 909.5 TiB ({PETA} bytes), more than the 64 GiB allowed" in str(err.value)
    assert proxy.blob_bytes(pushed.layers[0]) == 0
    # with a limit that lets it through, the length the registry announces gives it away
    roomy = ImageStore(tmp_path / "roomy", UnpackLimits(layer=2 * PETA, image=2 * PETA))
    with pytest.raises(ImageError) as err:
        asyncio.run(pull(roomy, f"{proxy.host}/{repo}:lie", policy="always"))
    real = len(gzip.compress(tar_bytes(busybox_entries()), 1, mtime=0))
    assert f"blob {pushed.layers[0]}: its descriptor says {PETA} bytes, its content has {real}" in str(err.value)
    for s in (store, roomy):
        assert list((s.root / "blobs" / "sha256").iterdir()) == [] and list((s.root / "layers").iterdir()) == []


def test_registry_that_sends_an_endless_blob_or_manifest_is_cut_off(
    tmp_path: Path, images_registry: Registry, images_proxy_factory: Callable[[str], Proxy]
) -> None:
    host, repo = images_registry.host, "sizes/endless"
    pushed = push_image(host, repo, "1", [busybox_entries()])
    proxy = images_proxy_factory(host)
    proxy.endless = f"/blobs/{pushed.layers[0]}$"
    store = ImageStore(tmp_path / "images")
    with pytest.raises(ImageError) as err:
        asyncio.run(pull(store, f"{proxy.host}/{repo}:1", policy="always"))
    size = pushed.manifest["layers"][0]["size"]
    assert f"blob {pushed.layers[0]}: its descriptor says {size} bytes, its content has more than {size}" in str(
        err.value
    )
    assert not (store.root / "tmp" / f"partial-{pushed.layers[0][7:]}").exists()  # junk is not kept to resume
    assert list((store.root / "blobs" / "sha256").iterdir()) == []
    proxy.endless = r"/manifests/"
    with pytest.raises(ImageError, match=r"more than the 4 MiB a manifest may have"):
        asyncio.run(pull(store, f"{proxy.host}/{repo}:1", policy="always"))


@pytest.mark.parametrize("kind", ["oci", "rootfs", "pull"])
def test_layer_unpacking_past_the_layer_limit_is_refused_and_nothing_of_it_is_kept(
    tmp_path: Path, kind: str, images_registry: Registry
) -> None:
    layers = [busybox_entries(), _bomb(64 << 20)]
    bomb_blob = gzip.compress(tar_bytes(layers[1]), 1, mtime=0)
    assert len(bomb_blob) < 1 << 20
    data = tmp_path / "data"
    env = {"ZLAYER_MAX_LAYER_SIZE": "8Mi"}
    if kind == "oci":
        out = zl(data, "import", str(oci_archive(tmp_path / "bomb.tar", layers)), "-t", "bomb/oci:1", env=env)
    elif kind == "rootfs":
        rootfs = tmp_path / "bomb-rootfs.tar.gz"
        bomb_blob = gzip.compress(tar_bytes(busybox_entries(_bomb(64 << 20))), 1, mtime=0)
        rootfs.write_bytes(bomb_blob)
        out = zl(data, "import", str(rootfs), "-t", "bomb/rootfs:1", env=env)
    else:
        pushed = push_image(images_registry.host, "bomb/pull", "1", layers)
        out = zl(data, "pull", "-q", pushed.reference, env=env)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    line = next(x for x in out.stderr.splitlines() if x.startswith("error:"))
    assert f"layer {_digest(bomb_blob)}: unpacks to more than 8 MiB, the limit per layer" in line, out.stderr
    assert "ZLAYER_MAX_LAYER_SIZE" in out.stderr
    root = data / "images"
    assert list((root / "layers").iterdir()) == []
    assert [p.name for p in (root / "tmp").iterdir() if not p.name.startswith("partial-")] == []
    assert list((root / "blobs" / "sha256").iterdir()) == []
    assert (zl(data, "import", str(oci_archive(tmp_path / "ok.tar", [busybox_entries()])), "-t", "ok/x:1", env=env)
            .returncode == 0)  # fmt: skip


def test_image_limit_counts_all_its_layers(tmp_path: Path) -> None:
    layers = [busybox_entries(), _bomb(6 << 20, "a"), _bomb(6 << 20, "b")]
    data = tmp_path / "data"
    env = {"ZLAYER_MAX_IMAGE_SIZE": "10Mi"}
    out = zl(data, "import", str(oci_archive(tmp_path / "big.tar", layers)), "-t", "big/image:1", env=env)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    third = _digest(gzip.compress(tar_bytes(layers[2]), 1, mtime=0))
    assert f"layer {third}: the image unpacks to more than 10 MiB, the limit per image" in out.stderr, out.stderr
    assert _store_content(data) == (set(), set())
    bad = zl(data, "import", str(tmp_path / "big.tar"), "-t", "big/image:1", env={"ZLAYER_MAX_IMAGE_SIZE": "lots"})
    assert bad.returncode != 0 and "ZLAYER_MAX_IMAGE_SIZE" in bad.stderr and "Traceback" not in bad.stderr


def test_push_refuses_a_blob_the_store_damaged(tmp_path: Path, images_registry: Registry) -> None:
    data = tmp_path / "data"
    assert (
        zl(data, "import", str(oci_archive(tmp_path / "a.tar", [busybox_entries()])), "-t", "dmg/a:1").returncode == 0
    )
    image = ImageStore(data / "images").get("dmg/a:1")
    layer = image.manifest["layers"][0]
    with open(data / "images" / "blobs" / "sha256" / layer["digest"][7:], "ab") as f:
        f.write(b"\0")
    target = f"{images_registry.host}/dmg/a:1"
    out = zl(data, "image", "push", "dmg/a:1", target)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert f"blob {layer['digest']} in the store is {layer['size'] + 1} bytes, its descriptor says {layer['size']}" in (
        out.stderr
    )
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://{images_registry.host}/v2/dmg/a/blobs/{layer['digest']}", timeout=10)
    assert missing.value.code == 404


def test_index_entry_whose_manifest_differs_from_its_descriptor_is_refused(
    tmp_path: Path, images_registry: Registry
) -> None:
    host, repo = images_registry.host, "sizes/index"
    pushed = push_image(host, repo, "1", [busybox_entries()])
    body = json.dumps(pushed.manifest).encode()
    entry = {"mediaType": OCI_MANIFEST, "digest": pushed.digest, "size": len(body) + 7,
             "platform": {"os": "linux", "architecture": "amd64"}}  # fmt: skip
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [entry]}
    raw_push_manifest(host, repo, "multi", json.dumps(index).encode(), "application/vnd.oci.image.index.v1+json")
    store = ImageStore(tmp_path / "images")
    with pytest.raises(ImageError, match=f"its descriptor says {len(body) + 7} bytes"):
        asyncio.run(pull(store, f"{host}/{repo}:multi", policy="always"))
    cfg = raw_push_blob(host, repo, b"{}")
    huge = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
            "config": {"mediaType": OCI_CONFIG, "digest": cfg, "size": 64 << 20}}  # fmt: skip
    raw_push_manifest(host, repo, "hugeconfig", json.dumps(huge).encode(), OCI_MANIFEST)
    with pytest.raises(
        ImageError, match=r"image config sha256:[0-9a-f]{64} is 64 MiB \(67108864 bytes\), more than the 8 MiB"
    ):
        asyncio.run(pull(store, f"{host}/{repo}:hugeconfig", policy="always"))
    assert list((store.root / "blobs" / "sha256").iterdir()) == []


@pytest.mark.slow
def test_daemon_serve_max_layer_size_refuses_a_bomb_it_pulls_and_says_so_in_the_api(tmp_path: Path) -> None:
    from tests.fixtures.daemon_live import live_node

    with live_node(tmp_path / "node", serve_args=["--bind", "none", "--max-layer-size", "8Mi"]) as node:
        host = node.registry()
        layers = [busybox_entries(), _bomb(64 << 20)]
        bomb = node.in_ns(lambda: push_image(host, "bomb/api", "1", layers))
        status, answer = node.request("POST", "/api/v1/images/pull", {"reference": bomb.reference})
        # a refused image is bad input from outside the node: 422, not the 500 of a bug
        assert status == 422 and answer["code"] == "image", (status, answer)
        assert f"layer {bomb.layers[1]}: unpacks to more than 8 MiB, the limit per layer" in str(answer), answer
        manifest = json.loads(json.dumps(bomb.manifest))
        manifest["layers"][0]["size"] = PETA
        node.in_ns(lambda: raw_push_manifest(host, "bomb/api", "lie", json.dumps(manifest).encode(), OCI_MANIFEST))
        status, answer = node.request("POST", "/api/v1/images/pull", {"reference": f"{host}/bomb/api:lie"})
        assert status == 422 and answer["code"] == "image", (status, answer)
        assert f"layer {bomb.layers[0]} is 909.5 TiB ({PETA} bytes)" in answer["message"], answer
        gone = f"127.0.0.1:{node.free_port()}/svc/httpd:v1"  # a registry that is not there: the upstream failed
        status, answer = node.request("POST", "/api/v1/images/pull", {"reference": gone})
        assert status == 502 and answer["code"] == "registry" and "cannot reach" in answer["message"], answer
        status, answer = node.request("POST", "/api/v1/images/pull", {"reference": f"{host}/svc/httpd:v1"})
        assert status == 200 and answer["id"].startswith("sha256:"), answer
        listed = {i["reference"]: i["id"] for i in node.api("GET", "/api/v1/images")}
        assert listed[f"{host}/svc/httpd:v1"] == answer["id"] and bomb.reference not in listed


@pytest.mark.parametrize(
    ("answer", "said"),
    [(b"[" * 100_000, "not accepted as JSON"), (b"x" * (2 << 20), "more than 1 MiB"), (b'{"token": 5}', "no token")],
    ids=["deep", "huge", "not-a-token"],
)
def test_token_service_answering_junk_is_one_clear_error(tmp_path: Path, answer: bytes, said: str) -> None:
    from aiohttp import web

    from tests.fixtures.images_peers import _Loop, _serve, free_port
    from zlayer.errors import ZLayerError

    port = free_port()
    challenge = f'Bearer realm="http://127.0.0.1:{port}/token",service="junk"'

    async def v2(request: web.Request) -> web.Response:
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    async def token(request: web.Request) -> web.Response:
        return web.Response(body=answer)

    app = web.Application()
    app.router.add_get("/v2/{tail:.*}", v2)
    app.router.add_get("/token", token)
    loop = _Loop()
    runner = loop.run(_serve(app, port))
    try:
        with pytest.raises(ZLayerError) as err:
            asyncio.run(pull(ImageStore(tmp_path / "images"), f"127.0.0.1:{port}/junk/image:1", policy="always"))
        assert f"the token service http://127.0.0.1:{port}/token" in str(err.value) and said in str(err.value)
    finally:
        loop.run(runner.cleanup())
        loop.close()


def test_archive_from_stdin_or_a_url_larger_than_an_image_may_unpack_to_is_refused_while_copying(
    tmp_path: Path,
) -> None:
    import http.server
    import threading

    endless = tmp_path / "www" / "big.tar"
    endless.parent.mkdir()
    endless.write_bytes(bytes(3 << 20))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(endless.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    data, env = tmp_path / "data", {"ZLAYER_MAX_IMAGE_SIZE": "1Mi"}
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/big.tar"
        for source, stdin in ((url, None), ("-", endless.read_bytes())):
            out = subprocess.run(
                [sys.executable, "-m", "zlayer", "--data-dir", str(data), "import", source, "-t", "cap/x:1"],
                input=stdin, capture_output=True, timeout=120, env={**os.environ, **env},
            )  # fmt: skip
            err = out.stderr.decode()
            assert out.returncode != 0 and "more than 1 MiB, what an image may unpack to" in err, err
            assert list((data / "images" / "tmp").iterdir()) == []
    finally:
        server.shutdown()
