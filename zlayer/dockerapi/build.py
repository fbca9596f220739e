"""Docker's ``POST /build`` (the classic builder's API, which ``docker build`` without BuildKit, Compose and docker-py
use): the body is the context as a tarball, the query says what to build; it runs on the node's builder
(:mod:`zlayer.builder`, the same :class:`~zlayer.builder.service.BuildService` work dir and step cache as ZLayer's
build API) and answers Docker's JSON progress stream: ``Step n/m : INSTRUCTION``, the steps' output, ``Using cache``,
``{"aux": {"ID": …}}``, ``Successfully built``/``tagged`` — or ``{"error": …}`` with the builder's reason."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from zlayer.dockerapi.server import DockerError, Request, Response, Router, json_lines
from zlayer.errors import ZLayerError
from zlayer.images.reference import parse_reference

if TYPE_CHECKING:
    from zlayer.builder.service import BuildService
    from zlayer.dockerapi.app import DockerApi


NO_BUILDKIT = ("BuildKit builds are not supported by this node (zlayer builds with its own builder through the "
               "classic API): build with DOCKER_BUILDKIT=0")  # fmt: skip


def _unpack(data: bytes, into: Path) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DockerError(400, f"the build context is not a readable tarball: {e}") from None


def _json_query(req: Request, name: str) -> dict[str, str]:
    raw = req.q(name)
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError:
        raise DockerError(400, f"{name}: not a JSON object: {raw[:80]!r}") from None
    if not isinstance(doc, dict):
        raise DockerError(400, f"{name}: not a JSON object")
    return {str(k): "" if v is None else str(v) for k, v in doc.items()}


def _dockerfile(context: Path, name: str) -> Path:
    """The Dockerfile named by the ``dockerfile`` parameter, inside the context (Docker's default: ``Dockerfile``)."""
    rel = PurePosixPath(name or "Dockerfile")
    if rel.is_absolute() or ".." in rel.parts:
        raise DockerError(400, f"dockerfile: {name!r} must be a path inside the build context")
    path = context / rel
    if not path.is_file():
        raise DockerError(500, f"Cannot locate specified Dockerfile: {rel}")  # Docker's words and status
    return path


def _lines(kind: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    """One builder event as Docker's progress messages (steps numbered within their stage, as the builder does)."""
    if kind == "instruction_started":
        return [{"stream": f"Step {data['index']}/{data['total']} : {data['instruction']}\n"}]
    if kind == "instruction_complete" and data.get("cached"):
        return [{"stream": " ---> Using cache\n"}]
    if kind == "output":
        line = str(data.get("line", ""))
        return [{"stream": line if line.endswith("\n") else line + "\n"}]
    return []


def register(router: Router, api: DockerApi) -> None:
    def builds() -> BuildService:
        if api.builds is None:
            if api.images is None:
                raise DockerError(500, "this node has no image store to build into")
            from zlayer.builder.service import BuildService

            api.builds = BuildService(api.images, api.images.root.parent / "builder")
        return api.builds

    @router.route("POST", "/build")
    async def build(req: Request) -> Response:
        from zlayer.builder.executor import BuildOptions

        if req.q("version") == "2":
            raise DockerError(400, NO_BUILDKIT)
        if req.q("remote"):
            raise DockerError(400, "remote: a build context from a URL is not supported by this node (zlayer); "
                                   "send the context as the request's tarball")  # fmt: skip
        tags = [t for t in req.query.get("t", []) if t]
        for tag in tags:  # refused before the context is read, as dockerd does, not after the whole build
            try:
                parse_reference(tag)
            except ZLayerError as e:
                raise DockerError(400, f"invalid reference format: {tag!r}: {e.message}") from None
        service = builds()
        tmp = Path(tempfile.mkdtemp(dir=service.work, prefix="docker-build-"))
        try:
            context = tmp / "context"
            context.mkdir()
            await asyncio.to_thread(_unpack, req.body, context)
            opts = BuildOptions(context=context, dockerfile=_dockerfile(context, req.q("dockerfile")), tags=tags,
                                build_args=_json_query(req, "buildargs"), target=req.q("target") or None,
                                no_cache=req.flag("nocache"))  # fmt: skip
            record = service.start(opts, cleanup=tmp)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
            raise

        quiet = req.flag("q")  # `docker build -q`: the image id only

        async def progress() -> AsyncIterator[dict[str, Any]]:
            async for kind, data in service.follow(record.id):
                for msg in [] if quiet else _lines(kind, data):
                    yield msg
                if kind == "build_failed":
                    err = str(data.get("error") or "the build failed")
                    yield {"errorDetail": {"message": err}, "error": err}
                    return
                if kind == "build_complete":
                    image_id = str(data["image_id"])
                    short = image_id.removeprefix("sha256:")[:12]
                    yield {"aux": {"ID": image_id}}
                    if quiet:  # the CLI prints the stream it was sent, which a quiet build makes the id
                        yield {"stream": f"{image_id}\n"}
                        return
                    yield {"stream": f"Successfully built {short}\n"}
                    for tag in tags:
                        yield {"stream": f"Successfully tagged {_tagged(tag)}\n"}
                    return

        return Response(200, content_type="application/json", stream=json_lines(progress()))


def _tagged(tag: str) -> str:
    last = tag.rsplit("/", 1)[-1]
    return tag if ":" in last or "@" in last else f"{tag}:latest"


__all__ = ["register"]
