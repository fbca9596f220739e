"""A ``.wasm`` file as an OCI artifact, in the layout ``wkg`` (the Bytecode Alliance's wasm-pkg-tools) and ORAS read:
an OCI image manifest with ``artifactType`` ``application/vnd.wasm.{module|component}.v1+wasm``, a config blob of
media type ``application/vnd.wasm.config.v0+json`` (``architecture: wasm``, ``os: wasip1|wasip2``, ``layerDigests``)
and one layer ``application/wasm`` titled with the file's name. ``zlayer wasm export`` puts it in the local store,
``zlayer wasm push`` sends it to a registry through the node's registry client.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from zlayer.images.store import WASM_CONFIG_TYPE, ImageStore, LocalImage
from zlayer.runtime.wasm.binary import file_kind

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
WASM_LAYER = "application/wasm"


def artifact_manifest(path: Path) -> tuple[dict[str, Any], bytes, bytes]:
    """``(manifest, config blob, layer blob)`` for the WASM binary at ``path`` (refused when it is not one)."""
    kind = file_kind(path)
    data = path.read_bytes()
    layer_digest = "sha256:" + hashlib.sha256(data).hexdigest()
    config = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "architecture": "wasm",
        "os": "wasip2" if kind == "component" else "wasip1",
        "layerDigests": [layer_digest],
    }
    cfg = json.dumps(config, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": f"application/vnd.wasm.{kind}.v1+wasm",
        "config": {
            "mediaType": WASM_CONFIG_TYPE,
            "digest": "sha256:" + hashlib.sha256(cfg).hexdigest(),
            "size": len(cfg),
        },
        "layers": [
            {
                "mediaType": WASM_LAYER,
                "digest": layer_digest,
                "size": len(data),
                "annotations": {"org.opencontainers.image.title": path.name},
            }
        ],
    }
    return manifest, cfg, data


def export_artifact(store: ImageStore, path: Path, reference: str) -> LocalImage:
    """Put ``path`` into the local store as a WASM artifact named ``reference``."""
    manifest, cfg, data = artifact_manifest(path)
    with store.lease() as lease:
        store.put_blob(cfg, lease=lease)
        store.put_blob(data, lease=lease)
        store.add_image(reference, manifest, lease=lease)
    return store.get(reference)


__all__ = ["OCI_MANIFEST", "WASM_LAYER", "artifact_manifest", "export_artifact"]
