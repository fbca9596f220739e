"""Pulls and pushes against Debian's docker-registry on loopback, anonymous and with htpasswd basic auth."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.images import busybox_entries, oci_archive
from zlayer.errors import AuthError, NotFoundError
from zlayer.images import Credentials, ImageStore, import_archive, pull, push

pytestmark = [pytest.mark.root, pytest.mark.peer]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_registry(root: Path, htpasswd: Path | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    root.mkdir(parents=True, exist_ok=True)
    auth = f"auth:\n  htpasswd:\n    realm: zlayer-test\n    path: {htpasswd}\n" if htpasswd else ""
    config = root / "config.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth}"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"127.0.0.1:{port}"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("docker-registry did not start")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    proc, host = _start_registry(tmp_path / "registry")
    try:
        yield host
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "auth-registry"
    root.mkdir()
    htpasswd = root / "htpasswd"
    out = subprocess.run(["htpasswd", "-Bbn", "alice", "secret"], capture_output=True, text=True, check=True)
    htpasswd.write_text(out.stdout)
    proc, host = _start_registry(root, htpasswd)
    try:
        yield host
    finally:
        proc.kill()
        proc.wait()


def _local_image(tmp_path: Path, tag: str) -> ImageStore:
    store = ImageStore(tmp_path / "src-store")
    import_archive(store, oci_archive(tmp_path / "img.tar", [busybox_entries()]), tag=tag)
    return store


def test_push_then_pull_into_a_fresh_store(tmp_path: Path, registry: str) -> None:
    ref = f"{registry}/demo/busybox:1"
    src = _local_image(tmp_path, ref)
    digest = asyncio.run(push(src, ref))
    fresh = ImageStore(tmp_path / "fresh")
    seen: list[str] = []
    image = asyncio.run(pull(fresh, ref, policy="always", progress=lambda d, done, total: seen.append(d)))
    assert image.digest == digest
    assert (image.layer_dirs[0] / "bin" / "busybox").is_file()
    assert seen, "progress was reported"


def test_skopeo_reads_what_we_pushed(tmp_path: Path, registry: str) -> None:
    ref = f"{registry}/demo/peer:1"
    asyncio.run(push(_local_image(tmp_path, ref), ref))
    out = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"], capture_output=True, text=True, check=True
    )
    assert '"Architecture": "amd64"' in out.stdout


def test_pull_policies(tmp_path: Path, registry: str) -> None:
    ref = f"{registry}/demo/policy:1"
    fresh = ImageStore(tmp_path / "fresh")
    with pytest.raises(NotFoundError, match="pull_policy is never"):
        asyncio.run(pull(fresh, ref, policy="never"))
    asyncio.run(push(_local_image(tmp_path, ref), ref))
    first = asyncio.run(pull(fresh, ref, policy="if_not_present"))
    again = asyncio.run(pull(fresh, ref, policy="never"))
    assert again.digest == first.digest
    assert asyncio.run(pull(fresh, ref, policy="newer")).digest == first.digest


def test_missing_tag_is_one_line_naming_it(tmp_path: Path, registry: str) -> None:
    with pytest.raises(NotFoundError) as err:
        asyncio.run(pull(ImageStore(tmp_path / "s"), f"{registry}/demo/nothing:9", policy="always"))
    assert "demo/nothing:9" in str(err.value) and "404" in str(err.value)
    assert "\n" not in str(err.value)


def test_basic_auth_registry_needs_the_right_credentials(tmp_path: Path, auth_registry: str) -> None:
    ref = f"{auth_registry}/private/app:1"
    src = _local_image(tmp_path, ref)
    with pytest.raises(AuthError, match="needs a username and password"):
        asyncio.run(push(src, ref))
    asyncio.run(push(src, ref, credentials=Credentials("alice", "secret")))
    with pytest.raises(AuthError, match="401"):
        asyncio.run(pull(ImageStore(tmp_path / "w"), ref, policy="always", credentials=Credentials("alice", "wrong")))
    image = asyncio.run(
        pull(ImageStore(tmp_path / "r"), ref, policy="always", credentials=Credentials("alice", "secret"))
    )
    assert (image.layer_dirs[0] / "bin" / "busybox").is_file()


def _pull_cli(data: Path, ref: str, *flags: str, tty: bool) -> str:
    """``zlayer pull`` with its stderr (and stdout) on a pseudo-terminal or on a pipe; returns everything printed."""
    import os
    import pty
    import sys

    cmd = [sys.executable, "-m", "zlayer", "--data-dir", str(data), "pull", *flags, ref]
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    if not tty:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        assert res.returncode == 0, res.stderr
        return res.stdout + res.stderr
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary, env=env)
    os.close(secondary)
    out = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        out += chunk
    os.close(primary)
    assert proc.wait(timeout=120) == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


def test_pull_shows_a_progress_bar_per_layer_only_on_a_terminal(tmp_path: Path, registry: str) -> None:
    ref = f"{registry}/demo/progress:1"
    asyncio.run(push(_local_image(tmp_path, ref), ref))
    layer = ImageStore(tmp_path / "src-store").get(ref).manifest["layers"][0]["digest"]
    short = layer[7:19]
    on_tty = _pull_cli(tmp_path / "d1", ref, tty=True)
    assert short in on_tty and "\x1b[" in on_tty, on_tty  # the layer's own bar, drawn with terminal codes
    piped = _pull_cli(tmp_path / "d2", ref, tty=False)
    assert short not in piped and "\x1b[" not in piped, piped
    quiet = _pull_cli(tmp_path / "d3", ref, "--quiet", tty=True)
    assert short not in quiet, quiet
