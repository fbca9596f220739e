"""The LinuxRuntime's ImageSource over the node's image store (``{data}/images``)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from zlayer.errors import AuthError, ImageError, NotFoundError, ZLayerError
from zlayer.images.reference import names_registry


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
        if policy == "never":
            if have:
                return
            raise ImageError(
                f"image {image} is not in the local store and pull_policy is never",
                where=image,
                hint="import it with `zlayer import FILE -t NAME` or `zlayer pull`",
            )
        remote = getattr(self.store, "pull", None)
        if remote is not None:
            result = remote(image)
            if asyncio.iscoroutine(result):
                await result
            return
        # The store is a plain ImageStore: fetch from the image's registry into it (the error names the image and
        # what the registry said, e.g. manifest unknown / connection refused).
        from zlayer.images.distribution import pull

        source = image
        if have and not names_registry(image):
            return  # an imported name without a registry: the local store is where it comes from
        if not names_registry(image):
            # ZLayer's rule: an unqualified name is pulled only from ZLAYER_DEFAULT_REGISTRY, never implicitly
            # from Docker Hub.
            default = os.environ.get("ZLAYER_DEFAULT_REGISTRY", "").rstrip("/")
            if not default:
                raise ImageError(
                    f"image {image} is not in the local store, and its name has no registry to pull it from",
                    where=image,
                    hint="import it (`zlayer import FILE -t NAME`), name its registry (registry.example.com/"
                    f"{image}), or set ZLAYER_DEFAULT_REGISTRY",
                )
            source = f"{default}/{image}"
        try:
            await pull(self.store, source, policy=policy)
            if source != image:
                await asyncio.to_thread(self.store.tag, source, image)
        except ZLayerError as e:
            if have and policy == "newer":
                return  # as ZLayer: a registry that cannot answer leaves the cached image in use
            if isinstance(e, AuthError):  # the registry's credentials, not the API caller's: no 401/403 for them
                raise ImageError(f"pull {image}: {e.message}", where=image, hint=e.hint) from e
            # The error keeps its kind, which the API answers by: a refused image 422, a registry that failed 502,
            # an image the registry does not have 404, a full disk 507, the node's own store 500.
            e.message, e.where = f"pull {image}: {e.message}", image
            raise
        except OSError as e:
            raise ImageError(f"pull {image}: {e}", where=image) from e

    async def digest(self, image: str) -> str | None:
        """The agent's ImageDigests: the digest of what the store holds under ``image`` (None when it holds none)."""
        try:
            return str((await asyncio.to_thread(self.store.get, image)).digest)
        except (ZLayerError, OSError, AttributeError):
            return None

    async def resolve(self, image: str) -> tuple[dict[str, Any], list[Path]]:
        try:
            local = await asyncio.to_thread(self._local, image)
        except NotFoundError as e:
            raise ImageError(f"image {image} is not in the local store", where=image) from e
        return dict(local.config), list(local.layer_dirs)

    def kind(self, image: str) -> str | None:
        """The Drivers' image detection: ``wasm`` for a WASM artifact in the store, ``linux`` for an image, None
        when the store does not hold ``image`` (yet)."""
        try:
            return "wasm" if self.store.get(image).is_wasm else "linux"
        except (ZLayerError, OSError, AttributeError, KeyError):
            return None

    async def wasm_artifact(self, image: str) -> tuple[Path, str]:
        """The WasmRuntime's program: the first WASM layer of ``image`` as a blob path, and its digest."""
        try:
            local = await asyncio.to_thread(self._local, image)
        except NotFoundError as e:
            raise ImageError(f"image {image} is not in the local store", where=image) from e
        if not local.is_wasm:
            raise ImageError(f"image {image} is not a WASM artifact (it is a {local.platform} image)", where=image)
        for desc in local.manifest.get("layers", []):
            path = local.wasm_layer_path(desc)
            if path is not None:
                return path, str(desc["digest"])
        raise ImageError(f"image {image} is a WASM artifact with no WASM layer", where=image)


__all__ = ["StoreImages"]
