"""Pure helpers of the registry client and pull: retry pauses, platform checks, WASM detection."""

from __future__ import annotations

from typing import Any

import pytest

from zlayer.errors import ImageError
from zlayer.images.distribution import check_image_platform, select_platform
from zlayer.images.registry import MAX_RETRY_AFTER, _retry_wait
from zlayer.images.store import is_wasm_manifest

EMPTY = "application/vnd.oci.empty.v1+json"


@pytest.mark.parametrize(
    ("header", "default", "want"),
    [
        (None, 0.2, 0.2),
        ("1", 0.2, 1.0),
        ("0", 0.8, 0.0),
        (str(int(MAX_RETRY_AFTER) + 25), 0.2, None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.8, 0.8),
    ],
)
def test_retry_wait_honours_short_retry_after_only(header: str | None, default: float, want: float | None) -> None:
    assert _retry_wait(header, default) == want


def test_single_platform_image_must_match() -> None:
    check_image_platform({"os": "linux", "architecture": "arm64", "variant": "v8"}, "linux/arm64", "image x")
    check_image_platform({"architecture": "arm64"}, "linux/amd64", "image x")  # no os: taken as it is
    with pytest.raises(ImageError, match=r"image x: no image for linux/s390x; the registry has linux/arm64/v8 only"):
        check_image_platform({"os": "linux", "architecture": "arm64", "variant": "v8"}, "linux/s390x", "image x")


def test_index_selection_lists_platforms_without_attestations() -> None:
    index: dict[str, Any] = {
        "manifests": [
            {"digest": "sha256:a", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"digest": "sha256:b", "platform": {"os": "unknown", "architecture": "unknown"}},
        ]
    }
    assert select_platform(index, "linux/arm64", "image x") == "sha256:a"
    with pytest.raises(ImageError) as err:
        select_platform(index, "linux/riscv64", "image x")
    assert str(err.value) == "image x: no image for linux/riscv64; the registry has linux/arm64/v8"


@pytest.mark.parametrize(
    ("manifest", "wasm"),
    [
        ({"artifactType": "application/vnd.wasm.component.v1+wasm", "config": {}, "layers": []}, True),
        ({"config": {"mediaType": "application/vnd.wasm.config.v0+json"}, "layers": []}, True),
        ({"config": {"mediaType": "application/vnd.wasm.config.v1+json"}, "layers": []}, True),
        ({"config": {"mediaType": EMPTY}, "layers": [{"mediaType": "application/wasm"}]}, True),
        ({"config": {}, "layers": [{"mediaType": "application/vnd.wasm.content.layer.v1.wasm"}]}, True),
        ({"config": {"mediaType": "application/vnd.oci.image.config.v1+json"}, "layers": []}, False),
        (
            {
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json"},
                "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip"}],
            },
            False,
        ),
    ],
)
def test_wasm_detection(manifest: dict[str, Any], wasm: bool) -> None:
    assert is_wasm_manifest(manifest) is wasm
