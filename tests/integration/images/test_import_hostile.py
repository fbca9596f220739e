"""`zlayer import` as a user runs it: every archive kind from a file, from stdin and from a URL with basic auth,
`--change` instructions, and hostile tarballs that try to write outside the layer directory."""

from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.images import Entry, busybox_entries, docker_archive, oci_archive, tar_bytes
from zlayer.images import ImageStore, mount_rootfs, unmount_rootfs

pytestmark = pytest.mark.root
TAG = uuid.uuid4().hex[:12]


def zl(data: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "zlayer", "--data-dir", str(data), *args], capture_output=True, input=stdin, timeout=120
    )


def _hostile_cases() -> list[tuple[str, list[Entry], str]]:
    return [
        ("dotdot", [Entry("../../../../../../tmp/zlayer-evil-" + TAG, data=b"x")], "../"),
        ("absolute", [Entry(f"/tmp/zlayer-evil-{TAG}", data=b"x")], f"/tmp/zlayer-evil-{TAG}"),
        ("symlink-abs", [Entry("esc", "symlink", link="/tmp"), Entry(f"esc/zlayer-evil-{TAG}", data=b"x")], "esc"),
        (
            "symlink-rel",
            [Entry("up", "symlink", link="../../../../../../../tmp"), Entry(f"up/zlayer-evil-{TAG}", data=b"x")],
            "up",
        ),
        ("hardlink", [Entry("pw", "hardlink", link="../../../../../../../etc/passwd")], "pw"),
    ]


def _nothing_outside(tmp_path: Path, passwd_links: int) -> None:
    assert not Path(f"/tmp/zlayer-evil-{TAG}").exists()
    assert not [p for p in tmp_path.rglob(f"zlayer-evil-{TAG}")]
    assert os.stat("/etc/passwd").st_nlink == passwd_links


@pytest.mark.parametrize(("case", "entries", "culprit"), _hostile_cases(), ids=[c[0] for c in _hostile_cases()])
@pytest.mark.parametrize("kind", ["rootfs", "docker-save-stdin", "oci"])
def test_hostile_tarball_is_rejected_naming_the_entry(
    tmp_path: Path, kind: str, case: str, entries: list[Entry], culprit: str
) -> None:
    links = os.stat("/etc/passwd").st_nlink
    data = tmp_path / "data"
    layers = [busybox_entries(), entries]
    if kind == "rootfs":
        path = tmp_path / "rootfs.tar"
        path.write_bytes(tar_bytes(busybox_entries(entries)))
        out = zl(data, "import", str(path), "-t", "evil/rootfs")
    elif kind == "docker-save-stdin":
        path = docker_archive(tmp_path / "saved.tar", layers, repo_tag="evil/saved:1")
        out = zl(data, "import", "-", stdin=path.read_bytes())
    else:
        out = zl(data, "import", str(oci_archive(tmp_path / "oci.tar", layers)), "-t", "evil/oci")
    err = out.stderr.decode()
    assert out.returncode != 0 and "Traceback" not in err and "internal error" not in err, err
    root = data / "images"
    line = next(line for line in err.splitlines() if line.startswith("error:"))
    assert culprit in line and "layer sha256:" in line, line
    _nothing_outside(tmp_path, links)
    assert ImageStore(root).list() == []
    assert [p.name for p in (root / "tmp").iterdir()] == [], "the half-unpacked layer was left behind"
    # a failed import leaves the store as it was (issue 11): not even the harmless base layer or any blob stays
    assert list((root / "layers").iterdir()) == []
    assert list((root / "blobs" / "sha256").iterdir()) == []


@pytest.fixture
def basic_auth_url(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server that serves files of tmp_path/www only to alice:secret; yields (base URL, log)."""
    www = tmp_path / "www"
    www.mkdir()
    expected = "Basic " + base64.b64encode(b"alice:secret").decode()
    log: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            log.append(self.headers.get("Authorization") or "")
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="images"')
                self.end_headers()
                return
            path = www / self.path.lstrip("/")
            if not path.is_file():
                self.send_response(404)
                self.end_headers()
                return
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        thread.join(5)


def test_every_archive_kind_from_file_stdin_and_url(tmp_path: Path, basic_auth_url: tuple[str, list[str]]) -> None:
    base, log = basic_auth_url
    data = tmp_path / "data"
    www = tmp_path / "www"
    (www / "rootfs.tar").write_bytes(tar_bytes(busybox_entries()))
    changes = [
        "CMD httpd -f -p 8080 -h /www",
        'ENTRYPOINT ["/bin/env"]',
        "ENV GREETING=hello WHO=world",
        "WORKDIR /www",
        "EXPOSE 8080 9090/udp",
        "USER nobody",
    ]
    args = [a for c in changes for a in ("--change", c)]

    out = zl(data, "import", f"{base}/rootfs.tar", "-t", "url/rootfs:1", "-u", "alice", "-p", "secret", *args)
    assert out.returncode == 0, out.stderr
    assert log and log[-1].startswith("Basic ")
    cfg = json.loads(zl(data, "image", "inspect", "url/rootfs:1").stdout)["config"]["config"]
    assert cfg["Cmd"] == ["/bin/sh", "-c", "httpd -f -p 8080 -h /www"]
    assert cfg["Entrypoint"] == ["/bin/env"]
    assert {"GREETING=hello", "WHO=world"} <= set(cfg["Env"])
    assert (cfg["WorkingDir"], cfg["User"]) == ("/www", "nobody")
    assert set(cfg["ExposedPorts"]) == {"8080/tcp", "9090/udp"}

    wrong = zl(data, "import", f"{base}/rootfs.tar", "-u", "alice", "-p", "nope")
    assert wrong.returncode != 0 and b"401" in wrong.stderr and b"Traceback" not in wrong.stderr
    missing = zl(data, "import", f"{base}/nothing.tar", "-u", "alice", "-p", "secret")
    assert missing.returncode != 0 and b"404" in missing.stderr and b"nothing.tar" in missing.stderr

    saved = docker_archive(tmp_path / "saved.tar", [busybox_entries(), [Entry("etc/saved", data=b"docker")]])
    out = zl(data, "import", "-", stdin=saved.read_bytes())
    assert out.returncode == 0, out.stderr
    assert b"docker.io/demo/docker:1" in out.stdout

    oci = oci_archive(tmp_path / "oci.tar", [busybox_entries(), [Entry("etc/oci", data=b"oci")]])
    out = zl(data, "import", str(oci), "-t", "file/oci:1", "--change", "ENV FROM=oci")
    assert out.returncode == 0, out.stderr
    assert "FROM=oci" in json.loads(zl(data, "image", "inspect", "file/oci:1").stdout)["config"]["config"]["Env"]

    store = ImageStore(data / "images")
    for ref, probe, want in [
        ("url/rootfs:1", "cat /www/index.html", "hello from busybox"),
        ("demo/docker:1", "cat /etc/saved", "docker"),
        ("file/oci:1", "cat /etc/oci", "oci"),
    ]:
        image = store.get(ref)
        target = tmp_path / f"mnt-{len(probe)}-{want}"
        mount_rootfs(image.layer_dirs, target.with_suffix(".u"), target.with_suffix(".w"), target)
        try:
            run = subprocess.run(["chroot", str(target), "/bin/sh", "-c", probe], capture_output=True, text=True)
        finally:
            unmount_rootfs(target)
        assert run.stdout.strip() == want, (ref, run.stderr)


def test_import_onto_a_full_disk_is_one_clear_line_and_leaves_nothing(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "zlayer-test-import", str(mnt)], check=True)
    try:
        tarball = tmp_path / "big-rootfs.tar"
        tarball.write_bytes(tar_bytes(busybox_entries([Entry("big.bin", data=os.urandom(24 << 20))])))
        data = mnt / "data"
        out = zl(data, "import", str(tarball), "-t", "big/rootfs")
        err = out.stderr.decode()
        assert out.returncode != 0 and "Traceback" not in err and "internal error" not in err, err
        assert "No space left on device" in err and str(mnt) in err, err
        assert [p.name for p in (data / "images" / "tmp").iterdir()] == []
        assert list((data / "images" / "blobs" / "sha256").iterdir()) == []
        subprocess.run(["mount", "-o", "remount,size=96m", str(mnt)], check=True)
        ok = zl(data, "import", str(tarball), "-t", "big/rootfs")
        assert ok.returncode == 0, ok.stderr
        image = ImageStore(data / "images").get("big/rootfs")
        assert (image.layer_dirs[0] / "big.bin").stat().st_size == 24 << 20
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
