"""Image documents are checked once, for shape and size, before anything trusts them: every bad one is one
ImageError that says what is wrong and where, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zlayer.errors import ImageError
from zlayer.images.manifest import MAX_MANIFEST_BYTES, check_descriptor, check_size, parse_manifest, size_text
from zlayer.images.unpack import UnpackLimits

DIGEST = "sha256:" + "a" * 64


def manifest(**layer: object) -> bytes:
    desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": DIGEST, "size": 10, **layer}
    config = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": DIGEST, "size": 2}
    return json.dumps({"schemaVersion": 2, "config": config, "layers": [desc]}).encode()


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ({"size": -1}, "size -1 is not a whole number of bytes"),
        ({"size": True}, "size True is not a whole number of bytes"),
        ({"size": 1.5}, "size 1.5 is not a whole number of bytes"),
        ({"size": "10"}, "size '10' is not a whole number of bytes"),
        ({"digest": "sha512:" + "a" * 128}, "is not sha256:<64 hex digits>"),
        ({"digest": None}, "digest 'NoneType' is not sha256"),
    ],
)
def test_bad_layer_descriptors_are_named_by_their_place(layer: dict[str, object], message: str) -> None:
    with pytest.raises(ImageError, match=r"manifest x: layers\[0\]") as err:
        parse_manifest(manifest(**layer), "manifest x")
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 200_000, "not accepted as JSON: recursion limit exceeded"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "is not a JSON object"),
        (json.dumps({"config": {"digest": DIGEST, "size": 64 << 20}}).encode(), "more than the 8 MiB allowed"),
        (json.dumps({"manifests": {"digest": DIGEST}}).encode(), "manifests is not a list"),
        (b" " * (MAX_MANIFEST_BYTES + 1), "more than the 4 MiB allowed"),
    ],
    ids=["deep", "not-utf8", "array", "huge-config", "manifests-not-list", "too-long"],
)
def test_bad_documents_are_one_clear_error(body: bytes, message: str) -> None:
    with pytest.raises(ImageError, match="manifest x") as err:
        parse_manifest(body, "manifest x")
    assert message in str(err.value)


def test_size_mismatch_names_the_blob_and_both_sizes() -> None:
    with pytest.raises(
        ImageError, match=f"blob {DIGEST}: its descriptor says 1000000000000000 bytes, its content has 7"
    ):
        check_size(DIGEST, 10**15, 7)
    with pytest.raises(ImageError, match="its descriptor says 7 bytes, its content has more than 7"):
        check_size(DIGEST, 7, 7, more=True)
    assert check_descriptor({"digest": DIGEST, "size": 0}, "x") == (DIGEST, 0)
    assert (size_text(10**15), size_text(64 << 30), size_text(12)) == ("909.5 TiB", "64 GiB", "12 bytes")


def test_unpack_limits_come_from_the_environment_and_a_bad_one_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ZLAYER_MAX_LAYER_SIZE", "512Mi")
    assert UnpackLimits.from_env() == UnpackLimits(layer=512 << 20, image=256 << 30)
    assert UnpackLimits.from_env(image="1Ti").image == 1 << 40
    monkeypatch.setenv("ZLAYER_MAX_IMAGE_SIZE", "big")
    with pytest.raises(ImageError, match=r"ZLAYER_MAX_IMAGE_SIZE \(zlayer serve --max-image-size\): invalid memory"):
        UnpackLimits.from_env()


def test_serve_limits_are_remembered_and_given_to_the_store_and_a_daemon_started_for_the_user(tmp_path: Path) -> None:
    from zlayer.config import DaemonConfig
    from zlayer.daemon.server import make_image_store
    from zlayer.paths import Paths

    paths = Paths.resolve(tmp_path)
    DaemonConfig(paths=paths, bind=None, max_layer_size="8Mi", max_image_size="1Gi").remember()
    again = DaemonConfig.remembered(paths)
    argv = again.serve_argv()
    assert argv[argv.index("--max-layer-size") + 1] == "8Mi" and argv[argv.index("--max-image-size") + 1] == "1Gi"
    assert make_image_store(again).limits == UnpackLimits(layer=8 << 20, image=1 << 30)
