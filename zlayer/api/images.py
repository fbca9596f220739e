"""/api/v1/images: what the node's image store holds, pulls into it, tags and removes; /api/v1/system/prune."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, Response

from zlayer.api.context import ApiContext, ctx
from zlayer.api.models import ImageInfoDto, PruneResultDto, PullImageRequest, PullImageResponse, TagImageRequest
from zlayer.errors import NotFoundError, ZLayerError

if TYPE_CHECKING:
    from zlayer.images import ImageStore

router = APIRouter(prefix="/api/v1/images", tags=["Images"])


@router.get("", response_model=list[ImageInfoDto], summary="List images.")
async def list_images(c: ApiContext = Depends(ctx)) -> list[ImageInfoDto]:
    if c.images is None:
        return []
    images = await asyncio.to_thread(c.images.list)
    return [ImageInfoDto(reference=i.reference, digest=i.digest, id=i.id, size_bytes=i.size) for i in images]


@router.post(
    "/pull",
    response_model=PullImageResponse,
    summary="Pull an image.",
    responses={
        404: {"description": "The registry does not have the image"},
        422: {"description": "The image was refused: its content or descriptors lie, or it is over a size limit"},
        502: {"description": "The registry could not be reached or failed"},
        507: {"description": "The node's disk is full"},
    },
)
async def pull_image(body: PullImageRequest, c: ApiContext = Depends(ctx)) -> PullImageResponse:
    await c.runtime.pull(body.reference, policy="always")
    if c.images is None:
        return PullImageResponse(reference=body.reference)
    image = await asyncio.to_thread(c.images.get, body.reference)
    return PullImageResponse(reference=image.reference, digest=image.digest, id=image.id, size_bytes=image.size)


@router.post("/tag", status_code=204, summary="Tag an image.")
async def tag_image(body: TagImageRequest, c: ApiContext = Depends(ctx)) -> Response:
    await asyncio.to_thread(_store(c).tag, body.source, body.target)
    return Response(status_code=204)


@router.delete("/{image:path}", status_code=204, summary="Remove an image (its name; its data goes at a prune).")
async def remove_image(image: str, force: bool = False, c: ApiContext = Depends(ctx)) -> Response:
    store = _store(c)
    in_use: set[str] = set()
    for rec in await c.store.list_containers():
        if rec.state in ("running", "paused", "created", "pending"):
            with contextlib.suppress(ZLayerError):
                in_use.add((await asyncio.to_thread(store.resolve, rec.image))[1])
    await asyncio.to_thread(store.remove, image, force=force, in_use=in_use)
    return Response(status_code=204)


def _store(c: ApiContext) -> ImageStore:
    if c.images is None:
        raise NotFoundError("this node has no image store")
    return c.images


system = APIRouter(prefix="/api/v1/system", tags=["System"])


@system.post("/prune", response_model=PruneResultDto, summary="Remove image data no image refers to.")
async def prune_system(c: ApiContext = Depends(ctx)) -> PruneResultDto:
    items, freed = await asyncio.to_thread(_store(c).prune)
    return PruneResultDto(deleted=[f"{items} unreferenced blobs and layers"] if items else [], space_reclaimed=freed)
