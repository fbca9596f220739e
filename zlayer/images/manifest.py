"""What an image document may be before anything trusts it: descriptors, manifests and indexes from a registry or an
archive are checked here, once, for shape and size; every blob is then checked against its descriptor's digest and
size where it is written (``ImageStore.put_blob*``, the pull's download, the push's upload)."""

from __future__ import annotations

import re
from typing import Any

from zlayer.errors import ImageError
from zlayer.limits import load_json

# As containers/image (podman, skopeo) bound what they read whole into memory: a manifest or index, and an image
# config. Real ones are a few KiB; these leave room for images with thousands of history entries.
MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 8 << 20
MAX_LAYERS = 1000  # overlayfs mounts about 500 lowers at most; more cannot run anyway
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def size_text(n: int) -> str:
    """Bytes for a person: ``1.5 GiB``; exact bytes below 1 KiB."""
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        value /= 1024
        if value < 1024 or unit == "EiB":
            return f"{value:.1f} {unit}".replace(".0 ", " ")
    raise AssertionError("unreachable")


def check_descriptor(desc: Any, what: str) -> tuple[str, int]:
    """(digest, size) of a descriptor; anything else (no digest, another algorithm, a size that is not a whole
    number of bytes) is an ImageError naming ``what``."""
    if not isinstance(desc, dict):
        raise ImageError(f"{what}: the descriptor is not a JSON object")
    digest, size = desc.get("digest"), desc.get("size")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        shown = digest if isinstance(digest, str) and len(digest) <= 80 else type(digest).__name__
        raise ImageError(f"{what}: digest {shown!r} is not sha256:<64 hex digits>")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"{what} {digest}: size {size!r} is not a whole number of bytes")
    return digest, size


def check_size(digest: str, declared: int, got: int, *, more: bool = False) -> None:
    """A blob of ``got`` bytes (``more`` than that, when reading stopped early) must be as long as its descriptor
    says; the error names the blob and both sizes."""
    if got != declared or more:
        what = f"more than {got}" if more else f"{got}"
        raise ImageError(f"blob {digest}: its descriptor says {declared} bytes, its content has {what}; discarded")


def check_limit(digest: str, size: int, limit: int, what: str, hint: str | None = None, where: str = "") -> None:
    """A ``what`` (layer, image config) of ``size`` bytes, by its descriptor, must be within ``limit``."""
    if size > limit:
        raise ImageError(
            f"{where + ': ' if where else ''}{what} {digest} is {size_text(size)} ({size} bytes), more than the "
            f"{size_text(limit)} allowed per {what}",
            hint=hint,
        )


def parse_json(body: bytes, what: str) -> Any:
    """JSON from a registry, an archive or the store, within zlayer's limits on size and nesting."""
    return load_json(body, where=what, error=ImageError)


def parse_manifest(body: bytes, what: str) -> dict[str, Any]:
    """An image manifest (or an index, which has ``manifests`` instead of ``config``), its descriptors checked."""
    if len(body) > MAX_MANIFEST_BYTES:
        raise ImageError(f"{what} is {size_text(len(body))}, more than the {size_text(MAX_MANIFEST_BYTES)} allowed")
    doc = parse_json(body, what)
    if not isinstance(doc, dict):
        raise ImageError(f"{what} is not a JSON object")
    if "manifests" in doc:
        entries = doc["manifests"]
        if not isinstance(entries, list):
            raise ImageError(f"{what}: manifests is not a list")
        for i, entry in enumerate(entries):
            check_descriptor(entry, f"{what}: manifests[{i}]")
        return doc
    if "config" in doc:
        check_config_descriptor(doc["config"], what)
        layers = doc.get("layers", [])
        if not isinstance(layers, list):
            raise ImageError(f"{what}: layers is not a list")
        if len(layers) > MAX_LAYERS:
            raise ImageError(f"{what} lists {len(layers)} layers; at most {MAX_LAYERS} can be mounted")
        for i, layer in enumerate(layers):
            check_descriptor(layer, f"{what}: layers[{i}]")
    return doc


def check_config_descriptor(desc: Any, what: str) -> None:
    digest, size = check_descriptor(desc, f"{what}: config")
    check_limit(digest, size, MAX_CONFIG_BYTES, "image config", where=what)
