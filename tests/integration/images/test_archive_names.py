"""`zlayer import` reads an archive by the names its members have once extracted, as docker load, podman and skopeo
do: a layout packed the usual way (`tar -C layout -cf image.tar .`, members named `./index.json`) imports; one packed
inside its directory is refused with the command that packs it right. Layouts are written by skopeo (root, peer)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.fixtures.images import Entry, busybox_entries, oci_archive
from zlayer.images import ImageStore

pytestmark = [pytest.mark.root, pytest.mark.peer]


def zl(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zlayer", "--data-dir", str(data), *args], capture_output=True, text=True, timeout=120
    )


def _skopeo_layout(tmp_path: Path, transport: str) -> Path:
    """A directory written by skopeo: an OCI layout (`oci:`) or an unpacked docker-save archive (`docker-archive:`)."""
    source = oci_archive(tmp_path / "source.tar", [busybox_entries(), [Entry("etc/marker", data=b"skopeo")]])
    layout = tmp_path / "layout"
    if transport == "oci":
        subprocess.run(["skopeo", "copy", "-q", f"oci-archive:{source}", f"oci:{layout}:v1"], check=True)
    else:
        saved = tmp_path / "saved.tar"
        subprocess.run(
            ["skopeo", "copy", "-q", f"oci-archive:{source}", f"docker-archive:{saved}:names/saved:1"], check=True
        )
        layout.mkdir()
        subprocess.run(["tar", "-C", str(layout), "-xf", str(saved)], check=True)
    return layout


@pytest.mark.parametrize("transport", ["oci", "docker-archive"])
@pytest.mark.parametrize("packing", ["dot", "names", "absolute"])
def test_layout_packed_with_tar_imports_whatever_its_member_names(tmp_path: Path, transport: str, packing: str) -> None:
    layout = _skopeo_layout(tmp_path, transport)
    archive = tmp_path / "image.tar"
    if packing == "dot":  # ./index.json, ./blobs/sha256/...
        subprocess.run(["tar", "-C", str(layout), "-cf", str(archive), "."], check=True)
    elif packing == "names":  # index.json, blobs/sha256/...
        names = sorted(p.name for p in layout.iterdir())
        subprocess.run(["tar", "-C", str(layout), "-cf", str(archive), *names], check=True)
    else:  # /index.json: GNU tar -P keeps the leading slash its --transform puts there
        cmd = ["tar", "-C", str(layout), "-P", "--transform", "s,^\\./,/,", "-cf", str(archive), "."]
        subprocess.run(cmd, check=True)
    with tarfile.open(archive) as tar:
        members = tar.getnames()
    assert any(n.startswith({"dot": "./", "names": "", "absolute": "/"}[packing]) for n in members), members
    data = tmp_path / "data"
    out = zl(data, "import", str(archive), "-t", "names/imported:1")
    assert out.returncode == 0, out.stderr
    image = ImageStore(data / "images").get("names/imported:1")
    assert (image.layer_dirs[-1] / "etc" / "marker").read_bytes() == b"skopeo"
    assert (image.layer_dirs[0] / "bin" / "busybox").is_file()


def test_layout_packed_inside_its_directory_is_refused_with_the_command_that_packs_it(tmp_path: Path) -> None:
    layout = _skopeo_layout(tmp_path, "oci")
    archive = tmp_path / "nested.tar"
    subprocess.run(["tar", "-C", str(tmp_path), "-cf", str(archive), "layout"], check=True)
    data = tmp_path / "data"
    out = zl(data, "import", str(archive), "-t", "names/nested:1")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "inside the directory layout/" in out.stderr and "tar -C layout -cf IMAGE.tar ." in out.stderr, out.stderr
    assert ImageStore(data / "images").list() == []  # not taken for a root filesystem tarball
    assert layout.is_dir()
