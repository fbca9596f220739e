"""/api/v1/build, /builds, /templates: ZLayer's build routes — builds run by the daemon into its image store, followed
live as Server-Sent Events and listed afterwards."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field

from zlayer.api.context import ApiContext, ctx, until_closing
from zlayer.errors import UsageError

if TYPE_CHECKING:  # the builder (its executor, Dockerfile parser, ...) is imported by the first build, not at rest
    from zlayer.builder import BuildOptions
    from zlayer.builder.service import BuildService

router = APIRouter(prefix="/api/v1", tags=["Build"])
MAX_UPLOAD = 1 << 30  # a build context sent in the request: 1 GiB at most


class BuildRequest(BaseModel):
    runtime: str | None = Field(default=None, description="Use runtime template instead of Dockerfile")
    build_args: dict[str, str] = Field(default_factory=dict, description="Build arguments (ARG values)")
    target: str | None = Field(default=None, description="Target stage for multi-stage builds")
    tags: list[str] = Field(default_factory=list, description="Tags to apply to the image")
    no_cache: bool = Field(default=False, description="Disable cache")
    push: bool = Field(default=False, description="Push to registry after build")


class BuildRequestWithContext(BuildRequest):
    context_path: str = Field(description="Path to the build context on the server")


class TriggerBuildResponse(BaseModel):
    build_id: str
    message: str


class BuildStatus(BaseModel):
    id: str
    status: str = Field(description="pending, running, complete or failed")
    image_id: str | None = None
    error: str | None = None
    started_at: str
    completed_at: str | None = None


class TemplateInfo(BaseModel):
    name: str
    description: str
    detect_files: list[str]


def builds(c: ApiContext = Depends(ctx)) -> BuildService:
    """The daemon's build service (made on first use, over its image store)."""
    if c.builds is None:
        if c.images is None:
            raise UsageError("this daemon has no image store to build into")
        from zlayer.builder.service import BuildService

        c.builds = BuildService(c.images, c.images.root.parent / "builder")
    service: BuildService = c.builds
    return service


def _options(req: BuildRequest, context: Path) -> BuildOptions:
    from zlayer.builder import BuildOptions

    return BuildOptions(context=context, runtime=req.runtime, build_args=dict(req.build_args), target=req.target,
                        tags=list(req.tags), no_cache=req.no_cache, push=req.push)  # fmt: skip


def _started(build_id: str) -> TriggerBuildResponse:
    return TriggerBuildResponse(build_id=build_id, message=f"Build {build_id} started")


@router.post("/build/json", status_code=202, response_model=TriggerBuildResponse,
             summary="Start a build from a context directory on the node.")  # fmt: skip
async def start_build_json(body: BuildRequestWithContext, s: BuildService = Depends(builds)) -> TriggerBuildResponse:
    context = Path(body.context_path)
    if not context.is_absolute() or not context.is_dir():
        raise UsageError(f"context_path {body.context_path!r} is not a directory on this node (an absolute path)")
    return _started(s.start(_options(body, context)).id)


def _multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body
    )
    if not msg.is_multipart():
        raise UsageError("expected a multipart/form-data body with the fields dockerfile, context and config")
    out: dict[str, bytes] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            out[name] = payload
    return out


def _unpack_context(data: bytes, into: Path) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UsageError(f"context: not a readable tarball: {e}") from None


@router.post("/build", status_code=202, response_model=TriggerBuildResponse,
             summary="Start a build from an upload (multipart: dockerfile, context tarball, config).")  # fmt: skip
async def start_build(request: Request, s: BuildService = Depends(builds)) -> TriggerBuildResponse:
    size = int(request.headers.get("content-length") or 0)
    if size > MAX_UPLOAD:
        raise UsageError(f"the upload is {size} bytes; at most {MAX_UPLOAD} are taken")
    body = await request.body()
    fields = await asyncio.to_thread(_multipart, request.headers.get("content-type", ""), body)
    try:
        req = BuildRequest.model_validate(json.loads(fields["config"])) if "config" in fields else BuildRequest()
    except ValueError as e:
        raise UsageError(f"config: not a valid build request: {e}") from None
    tmp = Path(tempfile.mkdtemp(dir=s.work, prefix="upload-"))
    context = tmp / "context"
    context.mkdir()
    try:
        if "context" in fields:
            await asyncio.to_thread(_unpack_context, fields["context"], context)
        opts = _options(req, context)
        if "dockerfile" in fields:
            opts.dockerfile_text = fields["dockerfile"].decode("utf-8", "replace")
        elif req.runtime is None and not (context / "Dockerfile").is_file() and not (context / "ZImagefile").is_file():
            raise UsageError("give a dockerfile field, a Dockerfile or ZImagefile in the context, or a runtime")
        return _started(s.start(opts, cleanup=tmp).id)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, tmp, True)
        raise


@router.get("/build/{id}", response_model=BuildStatus, summary="A build's status.")
async def get_build(id: str, s: BuildService = Depends(builds)) -> dict[str, Any]:
    return s.get(id).to_json()


@router.delete("/build/{id}", response_model=BuildStatus, summary="Cancel a running build.")
async def cancel_build(id: str, s: BuildService = Depends(builds)) -> dict[str, Any]:
    return (await s.cancel(id)).to_json()


@router.get("/build/{id}/logs", response_class=PlainTextResponse, summary="A build's log.")
async def get_build_logs(id: str, s: BuildService = Depends(builds)) -> str:
    return await asyncio.to_thread(s.log, id)


@router.get("/build/{id}/stream", response_model=None, summary="A build's progress as Server-Sent Events.")
async def stream_build(id: str, s: BuildService = Depends(builds), c: ApiContext = Depends(ctx)) -> StreamingResponse:
    s.get(id)

    async def stream() -> AsyncIterator[bytes]:
        async for kind, data in until_closing(s.follow(id), c.closing):
            yield f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()

    return StreamingResponse(stream(), media_type="text/event-stream")


@router.get("/builds", response_model=list[BuildStatus], summary="List builds.")
async def list_builds(s: BuildService = Depends(builds)) -> list[dict[str, Any]]:
    return [r.to_json() for r in s.builds.values()]


@router.get("/templates", response_model=list[TemplateInfo], summary="List runtime templates.")
async def list_templates() -> list[TemplateInfo]:
    from zlayer.builder.templates import TEMPLATES

    return [
        TemplateInfo(name=t.name, description=t.description, detect_files=list(t.detect)) for t in TEMPLATES.values()
    ]
