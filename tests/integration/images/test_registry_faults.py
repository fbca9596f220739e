"""Pulls that go wrong against a real docker-registry: corrupt blobs, error answers, the wrong platform, a pull
killed half-way, two pulls at once, a full disk. Each must give one clear line and leave the store consistent.

Faults the registry cannot be made to produce by itself (403, 429, 5xx) come from a small reverse proxy in front of
it; everything else the proxy passes through unchanged while counting what it served.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fixtures.images import Entry, busybox_entries, tar_bytes
from tests.fixtures.images_peers import Fault, Proxy, PushedImage, Registry, multi_layer_image, push_image, push_index
from zlayer.images import ImageStore

pytestmark = [pytest.mark.root, pytest.mark.peer]
BIG = 40 << 20


def zl(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zlayer", "--data-dir", str(data), *args], capture_output=True, text=True, timeout=120
    )


def zl_popen(data: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "zlayer", "--data-dir", str(data), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def error_line(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr and "internal error" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out.stderr
    return lines[0]


def assert_store_consistent(root: Path) -> None:
    """Every blob matches its name, every named image is complete, every finished layer is marked, no stray temp."""
    for blob in (root / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, f"half-valid blob {blob}"
    store = ImageStore(root)
    for image in store.list():
        full = store.get(image.reference)
        for desc in [full.manifest["config"], *full.manifest["layers"]]:
            assert store.has_blob(desc["digest"])
        for d in full.layer_dirs:
            assert (d.parent / "diffid").is_file()
    leftovers = [p.name for p in (root / "tmp").iterdir() if not p.name.startswith("partial-")]
    assert leftovers == [], leftovers


def big_layer() -> bytes:
    return tar_bytes([Entry("big", "dir", mode=0o755), Entry("big/random.bin", data=os.urandom(BIG))])


@pytest.fixture
def big_image(images_registry: Registry) -> PushedImage:
    """busybox plus an incompressible 40 MB layer (uncompressed tar), pushed to the registry."""
    return push_image(images_registry.host, "big/app", "1", [tar_bytes(busybox_entries()), big_layer()], compress=False)


def test_corrupt_blob_in_the_registry_is_named_discarded_and_a_repaired_pull_succeeds(
    tmp_path: Path, images_registry: Registry
) -> None:
    pushed = push_image(images_registry.host, "bad/app", "1", multi_layer_image())
    victim = pushed.layers[1]
    blob_file = images_registry.blob_file(victim)
    good = blob_file.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF  # same size, different content: only the digest can tell
    blob_file.write_bytes(bytes(bad))
    data = tmp_path / "data"

    line = error_line(zl(data, "pull", "-q", pushed.reference))
    assert f"layer {victim}" in line and "discarded" in line
    hex_ = victim.split(":", 1)[1]
    root = data / "images"
    assert not (root / "blobs" / "sha256" / hex_).exists()
    assert not list((root / "tmp").glob(f"partial-{hex_}*")), "the corrupt download was kept"
    assert json.loads(zl(data, "image", "ls", "-o", "json").stdout) == []
    assert_store_consistent(root)

    blob_file.write_bytes(good)
    ok = zl(data, "pull", "-q", pushed.reference)
    assert ok.returncode == 0, ok.stderr
    assert pushed.digest in ok.stdout
    assert_store_consistent(root)
    image = ImageStore(root).get(pushed.reference)
    assert (image.layer_dirs[1] / "data" / "new.txt").read_bytes() == b"new"


@pytest.mark.parametrize(
    ("fault", "expect"),
    [
        (Fault("GET", r"/manifests/1$", 403), ["manifest bad/app:1", "403", "access denied"]),
        (
            Fault("GET", r"/manifests/1$", 429, headers={"Retry-After": "30"}),
            ["manifest bad/app:1", "429", "rate limited", "asks to wait 30 s"],
        ),
        (Fault("GET", r"/manifests/1$", 502), ["manifest bad/app:1", "502", "registry error"]),
        (Fault("GET", r"/blobs/sha256:", 503), ["blob sha256:", "of bad/app", "503", "registry error"]),
        (Fault("GET", r"/blobs/sha256:", 500), ["blob sha256:", "of bad/app", "500"]),
    ],
    ids=["403-manifest", "429-manifest", "502-manifest", "503-blob", "500-blob"],
)
def test_error_answers_are_one_line_saying_which_and_for_what(
    tmp_path: Path,
    images_registry: Registry,
    images_proxy_factory: Callable[[str], Proxy],
    fault: Fault,
    expect: list[str],
) -> None:
    push_image(images_registry.host, "bad/app", "1", [busybox_entries()])
    proxy = images_proxy_factory(images_registry.host)
    proxy.faults.append(fault)
    data = tmp_path / "data"
    line = error_line(zl(data, "pull", "-q", f"{proxy.host}/bad/app:1"))
    for word in expect:
        assert word in line, line
    assert proxy.host in line
    # 5xx is tried three times before giving up; 403, and 429 asking for a longer pause than a pull waits, once
    tries = [s for s in proxy.seen if s.status == fault.status]
    assert len(tries) == (3 if fault.status >= 500 else 1), [(s.method, s.path, s.status) for s in proxy.seen]
    assert_store_consistent(data / "images")
    assert json.loads(zl(data, "image", "ls", "-o", "json").stdout) == []


@pytest.mark.parametrize(
    "fault",
    [
        Fault("GET", r"/blobs/sha256:", 503, times=2),
        Fault("GET", r"/manifests/1$", 429, times=1, headers={"Retry-After": "1"}),
        Fault("HEAD", r"/manifests/1$", 502, times=1),
    ],
    ids=["503-blob-twice", "429-retry-after-1s", "502-head"],
)
def test_brief_registry_trouble_is_retried(
    tmp_path: Path, images_registry: Registry, images_proxy_factory: Callable[[str], Proxy], fault: Fault
) -> None:
    pushed = push_image(images_registry.host, "flaky/app", "1", [busybox_entries()])
    proxy = images_proxy_factory(images_registry.host)
    data = tmp_path / "data"
    if fault.method == "HEAD":  # `newer` asks with HEAD once the image is local
        assert zl(data, "pull", "-q", f"{proxy.host}/flaky/app:1").returncode == 0
    proxy.faults.append(fault)
    out = zl(data, "pull", "-q", "--policy", "newer", f"{proxy.host}/flaky/app:1")
    assert out.returncode == 0, out.stderr
    assert pushed.digest in out.stdout
    assert fault.times == 0, "the fault was never hit"
    statuses = [s.status for s in proxy.seen if s.method == fault.method and re.search(fault.path, s.path)]
    assert fault.status in statuses and statuses[-1] == 200, statuses
    assert_store_consistent(data / "images")


def test_real_404s_name_the_tag_and_the_blob(tmp_path: Path, images_registry: Registry) -> None:
    pushed = push_image(images_registry.host, "gone/app", "1", [busybox_entries()])
    data = tmp_path / "data"
    line = error_line(zl(data, "pull", "-q", f"{images_registry.host}/gone/app:2"))
    assert "manifest gone/app:2" in line and "404" in line and "not found" in line
    line = error_line(zl(data, "pull", "-q", f"{images_registry.host}/never/pushed:1"))
    assert "never/pushed:1" in line and "404" in line
    # the layer blob vanishes from the registry's storage: a real 404 for the blob itself
    images_registry.blob_file(pushed.layers[0]).unlink()
    line = error_line(zl(data, "pull", "-q", pushed.reference))
    assert f"blob {pushed.layers[0]} of gone/app" in line and "404" in line
    assert_store_consistent(data / "images")


def test_only_other_platforms_lists_which_exist(tmp_path: Path, images_registry: Registry) -> None:
    host = images_registry.host
    push_index(host, "multi/app", "1", [("linux", "arm64", "v8"), ("linux", "s390x", None), ("linux", "arm", "v7")])
    data = tmp_path / "data"
    line = error_line(zl(data, "pull", "-q", f"{host}/multi/app:1"))
    assert "multi/app:1" in line and "no image for linux/amd64" in line
    assert "linux/arm64/v8, linux/s390x, linux/arm/v7" in line
    ok = zl(data, "pull", "-q", "--platform", "linux/arm/v7", f"{host}/multi/app:1")
    assert ok.returncode == 0, ok.stderr
    image = ImageStore(data / "images").get(f"{host}/multi/app:1")
    assert image.platform == "linux/arm/v7"
    assert (image.layer_dirs[0] / "etc" / "platform").read_text() == "linux/arm/v7\n"


def test_single_manifest_for_another_platform_says_which_it_is(tmp_path: Path, images_registry: Registry) -> None:
    host = images_registry.host
    push_image(host, "arm/only", "1", [busybox_entries()], arch="arm64", variant="v8")
    data = tmp_path / "data"
    line = error_line(zl(data, "pull", "-q", f"{host}/arm/only:1"))
    assert "arm/only:1" in line and "no image for linux/amd64" in line and "linux/arm64/v8 only" in line, line
    assert not list((data / "images" / "layers").iterdir()), "layers of the wrong platform were unpacked"
    ok = zl(data, "pull", "-q", "--platform", "linux/arm64", f"{host}/arm/only:1")
    assert ok.returncode == 0, ok.stderr
    assert ImageStore(data / "images").get(f"{host}/arm/only:1").platform == "linux/arm64/v8"


def _wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_pull_killed_mid_layer_resumes_with_a_range_request(
    tmp_path: Path, images_registry: Registry, images_proxy_factory: Callable[[str], Proxy], big_image: PushedImage
) -> None:
    proxy = images_proxy_factory(images_registry.host)
    proxy.blob_rate = 10 << 20
    big = big_image.layers[1]
    ref = f"{proxy.host}/big/app:1"
    data = tmp_path / "data"
    proc = zl_popen(data, "pull", "-q", ref)
    try:
        _wait_for(lambda: proxy.blob_bytes(big) > 12 << 20, 60, "the big layer to be half-way")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    partial = data / "images" / "tmp" / f"partial-{big.split(':', 1)[1]}"
    have = partial.stat().st_size
    assert 0 < have < BIG
    assert json.loads(zl(data, "image", "ls", "-o", "json").stdout) == []
    assert_store_consistent(data / "images")

    proxy.blob_rate = None
    proxy.seen.clear()
    ok = zl(data, "pull", "-q", ref)
    assert ok.returncode == 0, ok.stderr
    resumed = proxy.requests("GET", f"/blobs/{big}$")
    assert [s.range for s in resumed] == [f"bytes={have}-"]
    assert resumed[0].status == 206
    size = images_registry.blob_file(big).stat().st_size
    assert proxy.blob_bytes(big) == size - have, "more than the missing part was downloaded"
    assert_store_consistent(data / "images")
    image = ImageStore(data / "images").get(ref)
    with tarfile.open(images_registry.blob_file(big)) as tar:
        member = tar.extractfile("big/random.bin")
        assert member is not None
        want = hashlib.sha256(member.read()).hexdigest()
    assert hashlib.sha256((image.layer_dirs[1] / "big" / "random.bin").read_bytes()).hexdigest() == want


@pytest.mark.parametrize("extra", [b"", b"junk after the last byte"], ids=["complete", "too-long"])
def test_partial_download_as_long_as_the_blob_or_longer_does_not_wedge_later_pulls(
    tmp_path: Path, images_registry: Registry, big_image: PushedImage, extra: bytes
) -> None:
    # killed after the last byte was written but before the rename (or left with junk): the Range request for
    # what is missing is answered 416 by the registry; the pull must recover, not fail now and every time after
    data = tmp_path / "data"
    ImageStore(data / "images")
    big = big_image.layers[1]
    partial = data / "images" / "tmp" / f"partial-{big.split(':', 1)[1]}"
    partial.write_bytes(images_registry.blob_file(big).read_bytes() + extra)
    ok = zl(data, "pull", "-q", big_image.reference)
    assert ok.returncode == 0, ok.stderr
    assert_store_consistent(data / "images")
    assert not partial.exists()
    image = ImageStore(data / "images").get(big_image.reference)
    assert (image.layer_dirs[1] / "big" / "random.bin").stat().st_size == BIG


def test_two_pulls_of_one_image_at_once_fetch_each_blob_once(
    tmp_path: Path, images_registry: Registry, images_proxy_factory: Callable[[str], Proxy], big_image: PushedImage
) -> None:
    proxy = images_proxy_factory(images_registry.host)
    proxy.blob_rate = 40 << 20  # long enough for the two pulls to overlap
    ref = f"{proxy.host}/big/app:1"
    data = tmp_path / "data"
    procs = [zl_popen(data, "pull", "-q", ref) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert big_image.digest in out
    for digest in [big_image.manifest["config"]["digest"], *big_image.layers]:
        gets = [s for s in proxy.requests("GET", f"/blobs/{digest}$") if s.status == 200]
        assert len(gets) == 1, f"{digest} fetched {len(gets)} times"
    root = data / "images"
    blobs = sorted(p.name for p in (root / "blobs" / "sha256").iterdir())
    want = sorted(d.split(":", 1)[1] for d in [big_image.digest, big_image.manifest["config"]["digest"]])
    assert blobs == sorted(want + [d.split(":", 1)[1] for d in big_image.layers])
    assert len(list((root / "layers").iterdir())) == 2
    assert_store_consistent(root)


@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "zlayer-test-small", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("kind", ["blob-too-big", "unpacked-too-big"])
def test_disk_full_is_a_clear_error_and_the_pull_completes_once_space_is_freed(
    small_mount: Path, images_registry: Registry, kind: str
) -> None:
    # 24 MB holds neither the 40 MB incompressible blob, nor the 40 MB of zeros a 40 kB gzip blob unpacks to
    if kind == "blob-too-big":
        pushed = push_image(images_registry.host, "full/app", "1", [busybox_entries(), big_layer()], compress=False)
    else:
        zeros = tar_bytes([Entry("big", "dir", mode=0o755), Entry("big/random.bin", data=bytes(BIG))])
        pushed = push_image(images_registry.host, "full/app", "1", [busybox_entries(), zeros])
    data = small_mount / "data"
    line = error_line(zl(data, "pull", "-q", pushed.reference))
    assert "No space left on device" in line and pushed.layers[1] in line and str(small_mount) in line, line
    assert "not a valid layer" not in line, line  # the disk is full, the layer is fine
    if kind == "blob-too-big":  # the download or the unpack streaming beside it hits the full disk first
        assert "cannot write" in line or "cannot unpack into" in line, line
    else:
        assert "cannot unpack into" in line, line
    assert json.loads(zl(data, "image", "ls", "-o", "json").stdout) == []
    assert_store_consistent(data / "images")

    subprocess.run(["mount", "-o", "remount,size=160m", str(small_mount)], check=True)
    ok = zl(data, "pull", "-q", pushed.reference)
    assert ok.returncode == 0, ok.stderr
    assert_store_consistent(data / "images")
    image = ImageStore(data / "images").get(pushed.reference)
    assert (image.layer_dirs[1] / "big" / "random.bin").stat().st_size == BIG
    assert not list((data / "images" / "tmp").iterdir())
