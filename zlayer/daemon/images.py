"""The LinuxRuntime's ImageSource over the node's image store (``{data}/images``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from zlayer.errors import ImageError, NotFoundError


class StoreImages:
    """``pull`` makes sure an image is in the store (pulling from its registry when the store can and the policy
    asks); ``resolve`` gives the runtime its config and unpacked layer directories, bottom first."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def _local(self, image: str) -> Any:
        return self.store.get(image)

    async def pull(self, image: str, policy: str = "if_not_present") -> None:
        policy = str(getattr(policy, "value", policy) or "if_not_present")
        have = True
        try:
            await asyncio.to_thread(self._local, image)
        except (NotFoundError, ImageError):
            have = False
        if have and policy in ("if_not_present", "never"):
            return
        remote = getattr(self.store, "pull", None)
        if policy == "never" or remote is None:
            if have:
                return
            raise ImageError(
                f"image {image} is not in the local store" + (" and pull_policy is never" if policy == "never" else ""),
                where=image,
                hint="import it with `zlayer import FILE -t NAME` or `zlayer pull`",
            )
        result = remote(image)
        if asyncio.iscoroutine(result):
            await result

    async def resolve(self, image: str) -> tuple[dict[str, Any], list[Path]]:
        try:
            local = await asyncio.to_thread(self._local, image)
        except NotFoundError as e:
            raise ImageError(f"image {image} is not in the local store", where=image) from e
        return dict(local.config), list(local.layer_dirs)


__all__ = ["StoreImages"]
