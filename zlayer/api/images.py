"""/api/v1/images: what the node's image store holds, and pulls into it."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends

from zlayer.api.context import ApiContext, ctx
from zlayer.api.models import ImageInfoDto, PullImageRequest, PullImageResponse

router = APIRouter(prefix="/api/v1/images", tags=["Images"])


def _field(obj: Any, *names: str) -> Any:
    for n in names:
        v = obj.get(n) if isinstance(obj, dict) else getattr(obj, n, None)
        if v is not None:
            return v
    return None


@router.get("", response_model=list[ImageInfoDto], summary="List images.")
async def list_images(c: ApiContext = Depends(ctx)) -> list[ImageInfoDto]:
    if c.images is None or not hasattr(c.images, "list"):
        return []
    result = c.images.list()
    if hasattr(result, "__await__"):
        result = await result
    return [
        ImageInfoDto(
            reference=str(_field(i, "reference", "ref", "name") or ""),
            digest=_field(i, "digest", "manifest_digest"),
            id=_field(i, "id"),
            size_bytes=_field(i, "size_bytes", "size"),
        )
        for i in result
    ]


@router.post("/pull", response_model=PullImageResponse, summary="Pull an image.")
async def pull_image(body: PullImageRequest, c: ApiContext = Depends(ctx)) -> PullImageResponse:
    await c.runtime.pull(body.reference, policy="always")
    if c.images is None or not hasattr(c.images, "get"):
        return PullImageResponse(reference=body.reference)
    image = await asyncio.to_thread(c.images.get, body.reference)
    return PullImageResponse(reference=image.reference, digest=image.digest, id=image.id, size_bytes=image.size)
