"""Docker's ``/images`` routes over the node's image store: list, inspect, pull (streamed JSON progress), tag,
remove, push, save, load, prune."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zlayer.dockerapi.server import DockerError, Request, Response, Router, json_lines, json_response
from zlayer.errors import NotFoundError, ZLayerError

if TYPE_CHECKING:
    from zlayer.dockerapi.app import DockerApi
    from zlayer.images import ImageStore
    from zlayer.images.store import LocalImage


def familiar(reference: str) -> str:
    """Docker's short form: ``docker.io/library/busybox:latest`` → ``busybox:latest``."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if reference.startswith(prefix):
            return reference[len(prefix) :]
    return reference


def _created(img: LocalImage) -> str:
    return str(img.image_config.get("created") or "1970-01-01T00:00:00Z")


def _unix(iso: str) -> int:
    """Seconds since the epoch of an RFC 3339 time (nanoseconds cut to what Python parses); 0 when unparsable."""
    text = iso.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    with contextlib.suppress(ValueError):
        return int(datetime.fromisoformat(text).timestamp())
    return 0


def summary(group: list[LocalImage], containers: int) -> dict[str, Any]:
    img = group[0]
    tags = sorted({familiar(i.reference) for i in group})
    repo = sorted({familiar(i.reference).rsplit(":", 1)[0] + "@" + i.digest for i in group})
    return {"Id": img.id, "ParentId": "", "RepoTags": tags, "RepoDigests": repo, "Created": _unix(_created(img)),
            "Size": img.size, "VirtualSize": img.size, "SharedSize": -1, "Labels": (img.config.get("Labels") or {}),
            "Containers": containers}  # fmt: skip


def inspect(img: LocalImage, names: list[str]) -> dict[str, Any]:
    cfg = img.config
    return {
        "Id": img.id, "RepoTags": names, "RepoDigests": [familiar(img.reference).rsplit(":", 1)[0] + "@" + img.digest],
        "Parent": "", "Comment": "", "Created": _created(img), "Container": "", "DockerVersion": "",
        "Author": img.image_config.get("author", ""), "Config": {"Hostname": "", "Domainname": "", "User": "",
        "AttachStdin": False, "AttachStdout": False, "AttachStderr": False, "Tty": False, "OpenStdin": False,
        "StdinOnce": False, "Env": cfg.get("Env"), "Cmd": cfg.get("Cmd"), "Image": "", "Volumes": cfg.get("Volumes"),
        "WorkingDir": cfg.get("WorkingDir", ""), "Entrypoint": cfg.get("Entrypoint"), "OnBuild": None,
        "Labels": cfg.get("Labels"), "ExposedPorts": cfg.get("ExposedPorts"), "User_": None},
        "Architecture": img.image_config.get("architecture", "amd64"), "Os": img.image_config.get("os", "linux"),
        "Size": img.size, "VirtualSize": img.size, "GraphDriver": {"Name": "overlay2", "Data": None},
        "RootFS": {"Type": "layers", "Layers": (img.image_config.get("rootfs") or {}).get("diff_ids", [])},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
    }  # fmt: skip


def register(router: Router, api: DockerApi) -> None:
    def store() -> ImageStore:
        if api.images is None:
            raise DockerError(500, "this node has no image store")
        return api.images

    def groups() -> dict[str, list[LocalImage]]:
        by_id: dict[str, list[LocalImage]] = {}
        for img in store().list():
            by_id.setdefault(img.id, []).append(img)
        return by_id

    async def get(name: str) -> LocalImage:
        try:
            return await asyncio.to_thread(store().get, name)
        except (NotFoundError, ZLayerError):
            pass
        ident = name.removeprefix("sha256:")
        if all(ch in "0123456789abcdef" for ch in ident) and ident:
            every = await asyncio.to_thread(groups)
            hits = {i: g for i, g in every.items() if i.removeprefix("sha256:").startswith(ident)}
            if len(hits) == 1:
                return next(iter(hits.values()))[0]
        raise DockerError(404, f"No such image: {name}")

    def users() -> dict[str, int]:
        n: dict[str, int] = {}
        for c in api.names.by_id.values():
            n[c.image_id] = n.get(c.image_id, 0) + 1
        return n

    @router.route("GET", "/images/json")
    async def list_images(req: Request) -> Response:
        filters = req.filters()
        used = users()
        out = []
        for img_id, group in (await asyncio.to_thread(groups)).items():
            s = summary(group, used.get(img_id, 0))
            ref = filters.get("reference")
            if ref and not any(t.split(":")[0] == r.split(":")[0] and (":" not in r or t == r) for t in s["RepoTags"]
                               for r in ref):  # fmt: skip
                continue
            if filters.get("dangling") == ["true"] and s["RepoTags"]:
                continue
            out.append(s)
        out.sort(key=lambda s: s["Created"], reverse=True)
        return json_response(out)

    @router.route("GET", "/images/{name:path}/json")
    async def inspect_image(req: Request) -> Response:
        img = await get(req.params["name"])
        names = sorted(familiar(i.reference) for i in (await asyncio.to_thread(groups)).get(img.id, [img]))
        return json_response(inspect(img, names))

    @router.route("GET", "/images/{name:path}/history")
    async def image_history(req: Request) -> Response:
        img = await get(req.params["name"])
        hist = img.image_config.get("history") or [{}]
        out = [{"Id": img.id if i == len(hist) - 1 else "<missing>", "Created": _unix(h.get("created", "")),
                "CreatedBy": h.get("created_by", ""), "Tags": None, "Size": 0, "Comment": h.get("comment", "")}
               for i, h in enumerate(hist)]  # fmt: skip
        return json_response(list(reversed(out)))

    @router.route("POST", "/images/create")
    async def pull_image(req: Request) -> Response:
        image = req.q("fromImage")
        if req.q("fromSrc"):
            raise DockerError(400, "import from a URL or stream (fromSrc) is not supported by this node; use "
                                   "`docker load` or `zlayer import`")  # fmt: skip
        if not image:
            raise DockerError(400, "fromImage is required")
        tag = req.q("tag")
        if tag:
            image += ("@" if tag.startswith("sha256:") else ":") + tag
        elif "@" not in image and ":" not in image.rsplit("/", 1)[-1]:
            image += ":latest"
        short = familiar(image)

        async def progress() -> AsyncIterator[dict[str, Any]]:
            repo, _, ref = short.rpartition(":") if "@" not in short else short.partition("@")
            first = repo.split("/", 1)[0]
            if "/" in repo and ("." in first or ":" in first or first == "localhost"):
                repo = repo.split("/", 1)[1]  # Docker names the repository without its registry here
            yield {"status": f"Pulling from {repo}", "id": ref}
            task = asyncio.ensure_future(api.runtime.pull(image, policy="always"))
            while not task.done():
                await asyncio.wait({task}, timeout=1.0)
                if not task.done():
                    yield {"status": "Downloading", "id": ref, "progressDetail": {}}
            try:
                task.result()
                img = await asyncio.to_thread(store().get, image)
            except ZLayerError as e:
                yield {"errorDetail": {"message": e.message}, "error": e.message}
                return
            yield {"status": f"Digest: {img.digest}"}
            yield {"status": f"Status: Downloaded newer image for {short}"}

        return Response(200, stream=json_lines(progress()))

    @router.route("POST", "/images/{name:path}/tag")
    async def tag_image(req: Request) -> Response:
        img = await get(req.params["name"])
        repo = req.q("repo")
        if not repo:
            raise DockerError(400, "repository name must have at least one component")
        target = repo + (":" + (req.q("tag") or "latest") if "@" not in repo else "")
        try:
            await asyncio.to_thread(store().tag, img.reference, target)
        except ZLayerError as e:
            raise DockerError(400, f"invalid reference format: {e.message}") from None
        api.events.add("image", "tag", img.id, {"name": target})
        return Response(201, b"", content_type="")

    @router.route("DELETE", "/images/{name:path}")
    async def remove_image(req: Request) -> Response:
        name = req.params["name"]
        img = await get(name)
        used = [c for c in api.names.by_id.values() if c.image_id == img.id]
        if used and not req.flag("force"):
            raise DockerError(409, f'conflict: unable to remove repository reference "{name}" (must force) - '
                                   f"container {used[0].id[:12]} is using its referenced image "
                                   f"{img.id[7:19]}")  # fmt: skip
        group = (await asyncio.to_thread(groups)).get(img.id, [img])
        by_id = not any(familiar(i.reference) == familiar(name) or i.reference == name for i in group)
        targets = group if by_id else [i for i in group if familiar(i.reference) == familiar(name)
                                       or i.reference == name] or [img]  # fmt: skip
        out: list[dict[str, str]] = []
        for i in targets:
            await asyncio.to_thread(store().remove, i.reference, force=True)
            out.append({"Untagged": familiar(i.reference)})
        if len(targets) == len(group):
            out.append({"Deleted": img.id})
        api.events.add("image", "delete", img.id, {"name": familiar(name)})
        return json_response(out)

    @router.route("POST", "/images/{name:path}/push")
    async def push_image(req: Request) -> Response:
        name = req.params["name"]
        tag = req.q("tag")
        ref = f"{name}:{tag}" if tag else name
        await get(ref)

        async def progress() -> AsyncIterator[dict[str, Any]]:
            from zlayer.images.distribution import push

            yield {"status": f"The push refers to repository [{name}]"}
            try:
                digest = await push(store(), ref, insecure=_insecure(ref))
            except ZLayerError as e:
                yield {"errorDetail": {"message": e.message}, "error": e.message}
                return
            yield {"status": f"{tag or 'latest'}: digest: {digest} size: 0"}
            yield {"progressDetail": {}, "aux": {"Tag": tag or "latest", "Digest": digest, "Size": 0}}

        return Response(200, stream=json_lines(progress()))

    async def save(names: list[str]) -> Response:
        if len(names) != 1:
            raise DockerError(400, "this node saves one image per archive")
        await get(names[0])
        from zlayer.images.archive import export_archive

        with tempfile.TemporaryDirectory(prefix="zlayer-save-") as tmp:
            out = Path(tmp) / "image.tar"
            await asyncio.to_thread(export_archive, store(), names[0], out)
            data = await asyncio.to_thread(out.read_bytes)
        return Response(200, data, content_type="application/x-tar")

    @router.route("GET", "/images/get")
    async def save_images(req: Request) -> Response:
        return await save(req.query.get("names", []))

    @router.route("GET", "/images/{name:path}/get")
    async def save_image(req: Request) -> Response:
        return await save([req.params["name"]])

    @router.route("POST", "/images/load")
    async def load_images(req: Request) -> Response:
        from zlayer.images.archive import import_archive

        fd, tmp = tempfile.mkstemp(prefix="zlayer-load-", suffix=".tar")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(req.body)
            try:
                img = await asyncio.to_thread(import_archive, store(), Path(tmp))
            except ZLayerError as e:
                raise DockerError(400, f"loading the archive: {e.message}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        msg = {"stream": f"Loaded image: {familiar(img.reference)}\n"}
        return Response(200, content_type="application/json", stream=json_lines(_one(msg)))

    @router.route("POST", "/images/prune")
    async def prune_images(req: Request) -> Response:
        _, space = await asyncio.to_thread(store().prune)
        return json_response({"ImagesDeleted": None, "SpaceReclaimed": space})


async def _one(doc: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    yield doc


def _insecure(ref: str) -> tuple[str, ...]:
    host = ref.split("/", 1)[0]
    return (host,) if host.startswith(("127.", "localhost")) else ()


__all__ = ["familiar", "register"]
