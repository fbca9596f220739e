"""The image commands as a user runs them: import, ls, inspect, tag, export, rm, prune, and their errors."""

from __future__ import annotations

import base64
import http.server
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.images import busybox_entries, tar_bytes

pytestmark = pytest.mark.root


def zl(data: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zlayer", "--data-dir", str(data), *args],
        capture_output=True,
        text=stdin is None,
        input=stdin,
        timeout=120,
    )


def test_import_ls_inspect_tag_export_rm_prune(tmp_path: Path, images_busybox_oci: Path) -> None:
    data = tmp_path / "data"
    out = zl(data, "import", str(images_busybox_oci), "-t", "demo/cli:1")
    assert out.returncode == 0, out.stderr
    assert "docker.io/demo/cli:1" in out.stdout
    listed = json.loads(zl(data, "image", "ls", "--output", "json").stdout)
    assert [i["reference"] for i in listed] == ["docker.io/demo/cli:1"]
    inspect = json.loads(zl(data, "image", "inspect", "demo/cli:1").stdout)
    assert inspect["config"]["config"]["Cmd"] == ["/bin/sh"]
    assert zl(data, "image", "tag", "demo/cli:1", "demo/other:2").returncode == 0
    archive = tmp_path / "out.tar.gz"
    assert zl(data, "export", "demo/other:2", "-o", str(archive), "--gzip").returncode == 0
    assert archive.read_bytes()[:2] == b"\x1f\x8b"
    assert zl(data, "image", "rm", "demo/cli:1", "demo/other:2").returncode == 0
    assert json.loads(zl(data, "image", "ls", "-o", "json").stdout) == []
    pruned = zl(data, "system", "prune", "-y")
    assert pruned.returncode == 0 and "freed" in pruned.stdout
    assert not list((data / "images" / "layers").iterdir())


def test_image_ls_on_a_pipe_prints_whole_references(tmp_path: Path, images_busybox_oci: Path) -> None:
    # a listing piped into grep must find the name (docker and kubectl never cut one); the table used to print
    # `127.0.0.1:15123/acme/…` once the columns did not fit 80 characters
    data = tmp_path / "data"
    ref = "127.0.0.1:15123/acme/app-with-a-name-long-enough-to-be-cut:2026.12.04-build.1234"
    assert zl(data, "import", str(images_busybox_oci), "-t", ref).returncode == 0
    cmd = f"{sys.executable} -m zlayer --data-dir {data} image ls | grep 127.0.0.1:15123/acme/app"
    grep = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60, env={"COLUMNS": "80"})
    assert grep.returncode == 0, grep.stderr
    assert grep.stdout.split()[0] == ref
    header = zl(data, "image", "ls").stdout.splitlines()[0]
    assert header.split() == ["REFERENCE", "IMAGE", "ID", "PLATFORM", "SIZE", "CREATED"]


def test_import_from_stdin_with_changes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    out = zl(data, "import", "-", "-t", "stdin/img", "-c", 'CMD ["httpd"]', stdin=tar_bytes(busybox_entries()))
    assert out.returncode == 0, out.stderr
    inspect = json.loads(zl(data, "image", "inspect", "stdin/img").stdout)
    assert inspect["config"]["config"]["Cmd"] == ["httpd"]


@pytest.fixture
def basic_auth_server(tmp_path: Path) -> Iterator[str]:
    payload = tar_bytes(busybox_entries())
    expected = "Basic " + base64.b64encode(b"alice:secret").decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="x"')
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/rootfs.tar"
    finally:
        server.shutdown()


def test_url_import_uses_basic_auth(tmp_path: Path, basic_auth_server: str) -> None:
    data = tmp_path / "data"
    refused = zl(data, "import", basic_auth_server, "-t", "url/img")
    assert refused.returncode != 0
    assert "401" in refused.stderr and "Traceback" not in refused.stderr
    ok = zl(data, "import", basic_auth_server, "-t", "url/img", "-u", "alice", "-p", "secret")
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["import", "/no/such/file.tar"], "no such file"),
        (["image", "inspect", "missing/image"], "not in the local store"),
        (["image", "rm", "Bad Ref"], "invalid image reference"),
        (["export", "missing/image", "-o", "/tmp/zlayer-never.tar"], "not in the local store"),
        (["pull", "127.0.0.1:1/nothing-listens"], "cannot reach 127.0.0.1:1"),
    ],
)
def test_bad_input_gets_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    out = zl(tmp_path / "data", *args)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_corrupt_archive_is_rejected_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar archive at all" * 100)
    out = zl(tmp_path / "data", "import", str(bad))
    assert out.returncode != 0
    assert "bad.tar" in out.stderr and "Traceback" not in out.stderr


def test_one_image_id_in_import_ls_inspect_and_rm(tmp_path: Path, images_busybox_oci: Path) -> None:
    data = tmp_path / "data"
    out = zl(data, "import", str(images_busybox_oci), "-t", "ids/one:1")
    assert out.returncode == 0, out.stderr
    image_id = re.search(r"image ID (sha256:[0-9a-f]{64})", out.stdout)
    assert image_id, out.stdout
    shown = image_id.group(1)
    listed = json.loads(zl(data, "image", "ls", "-o", "json").stdout)
    assert [i["id"] for i in listed] == [shown]
    table = zl(data, "image", "ls").stdout
    assert shown[7:19] in table, table
    inspect = json.loads(zl(data, "image", "inspect", shown[7:19]).stdout)
    assert inspect["id"] == shown == inspect["manifest"]["config"]["digest"]
    assert inspect["digest"] != shown  # the manifest digest, a separate name that registries use
    assert json.loads(zl(data, "image", "inspect", shown).stdout)["reference"] == "docker.io/ids/one:1"
    assert zl(data, "image", "tag", shown[:19], "ids/two:1").returncode == 0
    assert {i["id"] for i in json.loads(zl(data, "image", "ls", "-o", "json").stdout)} == {shown}
    removed = zl(data, "image", "rm", shown[7:19])
    assert removed.returncode == 0 and "Untagged: docker.io/ids/one:1" in removed.stdout, removed.stderr


def test_an_id_prefix_two_images_share_is_refused_as_ambiguous(tmp_path: Path) -> None:
    from zlayer.images import ImageStore, import_archive

    data = tmp_path / "data"
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(tar_bytes(busybox_entries()))
    store = ImageStore(data / "images")
    # 17 images: by pigeonhole two IDs share their first hex digit
    ids = [import_archive(store, rootfs, tag=f"ids/many:{i}", changes=[f"ENV N={i}"]).id[7:] for i in range(17)]
    digit = next(d for d in "0123456789abcdef" if sum(i.startswith(d) for i in ids) >= 2)
    out = zl(data, "image", "inspect", digit)
    assert out.returncode != 0 and "ambiguous" in out.stderr and "Traceback" not in out.stderr, out.stderr
