"""Other host users and a node's data dir (issue 11, items 1 and 2), tried as ``nobody`` against a live daemon
running a container: a setuid-root file from an image, or one that root in the container made in its own filesystem
or in a volume, cannot be run or even read through the host path (the class of Moby CVE-2021-41091); nothing under
the data dir is open to other users — the bundle's config.json with the container's env secret, tokens, the JWT
secret, the state DB, logs, daemon.json, the run dir — and a data dir an older version left open is closed when the
daemon starts."""

from __future__ import annotations

import fnmatch
import os
import shutil
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.daemon_live import LiveNode, live_node
from tests.fixtures.host_users import as_nobody, open_root
from tests.fixtures.images import BUSYBOX, Entry, busybox_entries, oci_archive

pytestmark = [pytest.mark.root, pytest.mark.slow]

SECRET = "hunter2-s3cret-in-env"
NAME = "hostusers"
VOLUME = "hostusers-vol"
MAKE_SUID = (
    "cp /bin/busybox /made-suid && chmod 4755 /made-suid && cp /bin/busybox /data/vol-suid && "
    "chmod 4755 /data/vol-suid && exec /bin/busybox httpd -f -p 8080 -h /www"
)
SPEC = f"""version: v1
deployment: {NAME}
services:
  web:
    image: {{name: 'zlayer-test/suid:v1', pull_policy: never}}
    command: {{entrypoint: ['/bin/sh', '-c'], args: ['{MAKE_SUID}']}}
    env: {{DB_PASSWORD: {SECRET}}}
    storage: [{{type: named, name: {VOLUME}, target: /data}}, {{type: anonymous, target: /scratch}}]
    stop_grace_period: 1s
    scale: {{mode: fixed, replicas: 1}}
"""
# Directories whose insides are the container's files with the modes the image or the container gave them (a 0755
# /bin, /etc/hosts 0644): other users must not reach them at all, whatever is inside.
CONTENT = ["bundles/*/rootfs", "bundles/*/upper", "bundles/*/work", "bundles/*/etc", "images/layers/*/fs",
           "images/tmp/*", "volumes/_anon/*", "volumes/[!_]*"]  # fmt: skip
PASSAGES = ["", "run"]  # 0711: the zlayer group reaches the socket in run/ through them; nothing is listed


@pytest.fixture(scope="module")
def node() -> Iterator[LiveNode]:
    root = open_root("zl-hostusers-")
    try:
        with live_node(root) as n:
            suid = Entry("bin/suid-shell", data=BUSYBOX.read_bytes(), mode=0o4755)
            tar = oci_archive(root / "suid.tar", [busybox_entries([suid])], config={"Env": ["PATH=/bin"]})
            r = n.zl("import", str(tar), "-t", "zlayer-test/suid:v1")
            assert r.returncode == 0, r.stdout + r.stderr
            n.deploy(SPEC)
            n.expect(NAME)
            n.wait_for(lambda: (n.data / "bundles/web-rep-1/upper/made-suid").exists(), 30, "the container made it")
            yield n
            n.delete(NAME)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _is_setuid_root(path: Path) -> bool:
    st = path.stat()
    return bool(st.st_mode & stat.S_ISUID) and st.st_uid == 0 and bool(st.st_mode & 0o001)


def _content(rel: str) -> bool:
    return any(fnmatch.fnmatch(rel, pat) for pat in CONTENT)


def _tree(data: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """(path relative to the data dir, path, lstat) of everything under it, not descending into container content."""
    yield "", data, data.lstat()
    for top, dirs, files in os.walk(data):
        for name in [*dirs, *files]:
            path = Path(top, name)
            rel = str(path.relative_to(data))
            yield rel, path, path.lstat()
        dirs[:] = [d for d in dirs if not _content(str(Path(top, d).relative_to(data)))]


def _reachable(data: Path, rel: str) -> bool:
    """Whether another user could get to ``rel``: every directory from the data dir down to it lets them through."""
    parts = Path(rel).parts if rel else ()
    return all(os.stat(data.joinpath(*parts[:i])).st_mode & 0o001 for i in range(len(parts)))


def _open_to_others(data: Path, literal: bool) -> list[str]:
    """What other users could read, write or list; with ``literal``, also any mode that lets them anything at all
    except passing through the passage dirs (what a fresh node must look like)."""
    found = []
    for rel, _, st in _tree(data):
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            continue
        if _content(rel):
            if _reachable(data, rel):
                found.append(f"{rel} (container content) is reachable")
            continue
        if not (literal or _reachable(data, rel)):
            continue
        allowed = 0o001 if rel in PASSAGES else 0
        if mode & 0o007 & ~allowed:
            found.append(f"{rel or '.'} {oct(mode)}")
    return found


def test_a_host_user_cannot_run_or_read_a_setuid_file_of_an_image_or_a_container(node: LiveNode) -> None:
    data = node.data
    layer_suid = next(data.glob("images/layers/*/fs/bin/suid-shell"))
    setuid_files = [
        layer_suid,  # in the image
        data / "bundles/web-rep-1/rootfs/bin/suid-shell",  # the image's, through the running container's rootfs
        data / "bundles/web-rep-1/rootfs/made-suid",  # made by root in the container, in its filesystem
        data / "bundles/web-rep-1/upper/made-suid",
        data / f"volumes/{VOLUME}/vol-suid",  # made by root in the container, in a volume
    ]
    assert all(_is_setuid_root(p) for p in setuid_files)
    # the probe itself works: the same setuid file where nobody may reach it runs
    control = node.root / "control-suid"
    shutil.copy2(layer_suid, control)
    assert _is_setuid_root(control) and as_nobody([("exec", control), ("read", control)]) == ["ok", "ok"]

    answers = as_nobody([(op, p) for p in setuid_files for op in ("exec", "read", "stat")])
    assert answers == ["EACCES"] * len(answers), list(zip(setuid_files, answers[::3], strict=True))
    inside = [
        data / "bundles/web-rep-1/rootfs/etc/passwd",
        data / "bundles/web-rep-1/rootfs/www/index.html",
        data / "bundles/web-rep-1/etc/hosts",
        layer_suid.parent.parent / "etc/passwd",
    ]
    dirs = [data / "bundles/web-rep-1/rootfs", data / "bundles/web-rep-1/upper", layer_suid.parent.parent,
            data / f"volumes/{VOLUME}", data / "bundles", data / "images", data / "volumes"]  # fmt: skip
    answers = as_nobody([("read", p) for p in inside] + [("list", d) for d in dirs])
    assert answers == ["EACCES"] * len(answers), list(zip(inside + dirs, answers, strict=True))


def test_inside_the_container_files_keep_the_standard_modes(node: LiveNode) -> None:
    """The daemon's own umask (077) stays out of containers: their processes get 022 as under runc, their root,
    fresh volumes and their cgroup are 0755, so a service running as a non-root user works as before."""
    script = "grep Umask /proc/1/status; umask; mkdir /made-dir; ls -ld / /data /scratch /made-dir /sys/fs/cgroup"
    got = node.api("POST", "/api/v1/containers/web-rep-1/exec", {"command": ["/bin/sh", "-c", script]})
    lines = got["stdout"].split("\n")
    assert lines[0].split() == ["Umask:", "0022"] and lines[1] == "0022", got
    assert [ln.split()[0] for ln in lines[2:7]] == ["drwxr-xr-x"] * 5, got


def test_nothing_under_the_data_dir_is_open_to_other_users(node: LiveNode) -> None:
    data = node.data
    assert SECRET in (data / "bundles/web-rep-1/config.json").read_text()  # what is at stake
    assert _open_to_others(data, literal=True) == []

    entries = [(rel, path, st) for rel, path, st in _tree(data) if not stat.S_ISLNK(st.st_mode)]
    probes: list[tuple[str, Path]] = []
    for _, path, st in entries:
        kind = "list" if stat.S_ISDIR(st.st_mode) else "connect" if stat.S_ISSOCK(st.st_mode) else "read"
        probes.append((kind, path))
    answers = as_nobody(probes)
    got = [(rel, op, a) for (rel, _, _), (op, _), a in zip(entries, probes, answers, strict=True) if a != "EACCES"]
    assert got == [], got
    assert len(entries) > 40  # the walk saw the node: bundles, state, images, logs, tokens


def test_a_data_dir_an_older_version_left_open_is_closed_when_the_daemon_starts(node: LiveNode) -> None:
    data = node.data
    assert node.signal_and_wait(signal.SIGTERM) == 0
    for _, path, st in list(_tree(data)):
        if not stat.S_ISLNK(st.st_mode) and not stat.S_ISSOCK(st.st_mode):
            os.chmod(path, stat.S_IMODE(st.st_mode) | (0o755 if stat.S_ISDIR(st.st_mode) else 0o644))
    assert _open_to_others(data, literal=False) != []
    node.start()
    node.wait_for(lambda: node.request("GET", "/health/ready")[0] == 200, 30, "the daemon is ready")
    assert _open_to_others(data, literal=False) == []
    assert node.deployment(NAME)["status"] == "running"  # the container it re-adopted runs on
