"""``docker cp``: ``GET``/``HEAD``/``PUT /containers/{id}/archive`` — a path of a running container as a tar, and a
tar unpacked into one.

The tar is read and written by a helper process chrooted into the container's root (``/proc/PID/root``), so every
path and symlink in it resolves inside the container, as Docker resolves them: nothing a container holds can point
the copy at the host's files.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from typing import TYPE_CHECKING, Any

from zlayer.dockerapi.server import DockerError, Request, Response, Router, no_content

if TYPE_CHECKING:
    from zlayer.dockerapi.app import DockerApi

_HELPER = r"""
import io, json, os, stat, sys, tarfile, time
op, root, path = sys.argv[1], sys.argv[2], sys.argv[3]
os.chroot(root); os.chdir("/")
def fail(code, msg):
    sys.stderr.write(json.dumps({"code": code, "message": msg})); sys.exit(3)
if op == "stat" or op == "get":
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        fail(404, "Could not find the file " + path + " in container")
    link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
    mode = st.st_mode & 0o7777
    if stat.S_ISDIR(st.st_mode): mode |= 1 << 31
    if stat.S_ISLNK(st.st_mode): mode |= 1 << 27
    mtime = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime))
    doc = {"name": os.path.basename(path.rstrip("/")) or "/", "size": st.st_size, "mode": mode, "mtime": mtime,
           "linkTarget": link}
    sys.stderr.write(json.dumps({"stat": doc})); sys.stderr.flush()
    if op == "get":
        out = sys.stdout.buffer
        with tarfile.open(fileobj=out, mode="w|") as tar:
            tar.add(path, arcname=doc["name"])
else:
    if not os.path.isdir(path):
        fail(404 if not os.path.exists(path) else 400, "Could not find the directory " + path + " in container")
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|*") as tar:
        tar.extractall(path, filter="tar")
"""


async def helper(pid: int, op: str, path: str, data: bytes = b"") -> tuple[bytes, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-c", _HELPER, op, f"/proc/{pid}/root", path,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate(data)
    info: dict[str, Any] = {}
    try:
        info = json.loads(err.decode() or "{}")
    except ValueError:
        info = {"code": 500, "message": err.decode(errors="replace")[-500:]}
    if proc.returncode != 0:
        raise DockerError(int(info.get("code") or 500), str(info.get("message") or f"copy failed ({path})"))
    return out, info


def register(router: Router, api: DockerApi) -> None:
    def target(req: Request) -> tuple[int, str]:
        c = api.names.find(req.params["id"])
        path = req.q("path")
        if not path:
            raise DockerError(400, "path is required")
        if not c.sa.running or not c.sa.record.pid:
            raise DockerError(409, f"container {c.name} is not running: copying needs its filesystem mounted")
        return c.sa.record.pid, path if path.startswith("/") else "/" + path

    @router.route("HEAD", "/containers/{id}/archive")
    async def stat_path(req: Request) -> Response:
        pid, path = target(req)
        _, info = await helper(pid, "stat", path)
        stat = base64.b64encode(json.dumps(info["stat"]).encode()).decode()
        return Response(200, b"", headers=[("X-Docker-Container-Path-Stat", stat)])

    @router.route("GET", "/containers/{id}/archive")
    async def get_archive(req: Request) -> Response:
        pid, path = target(req)
        out, info = await helper(pid, "get", path)
        stat = base64.b64encode(json.dumps(info["stat"]).encode()).decode()
        return Response(200, out, content_type="application/x-tar",
                        headers=[("X-Docker-Container-Path-Stat", stat)])  # fmt: skip

    @router.route("PUT", "/containers/{id}/archive")
    async def put_archive(req: Request) -> Response:
        pid, path = target(req)
        await helper(pid, "put", path, req.body)
        return no_content(200)


__all__ = ["register"]
