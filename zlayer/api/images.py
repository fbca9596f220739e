"""/api/v1/images: what the node's image store holds, and pulls into it."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends

from zlayer.api.context import ApiContext, ctx
from zlayer.api.models import ImageInfoDto, PullImageRequest, PullImageResponse

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
