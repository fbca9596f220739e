"""Image references read as Docker reads them."""

from __future__ import annotations

import pytest

from zlayer.errors import ImageError
from zlayer.images import parse_reference


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nginx", "docker.io/library/nginx:latest"),
        ("nginx:1.25", "docker.io/library/nginx:1.25"),
        ("library/nginx", "docker.io/library/nginx:latest"),
        ("ghcr.io/o/r:tag", "ghcr.io/o/r:tag"),
        ("localhost:5000/x", "localhost:5000/x:latest"),
        ("localhost/x:1", "localhost/x:1"),
        ("127.0.0.1:5000/a/b/c:v2", "127.0.0.1:5000/a/b/c:v2"),
        ("index.docker.io/user/app", "docker.io/user/app:latest"),
        ("localhost:5000/x@sha256:" + "a" * 64, "localhost:5000/x@sha256:" + "a" * 64),
        ("user/app:v1@sha256:" + "b" * 64, "docker.io/user/app:v1@sha256:" + "b" * 64),
    ],
)
def test_references_get_docker_hub_defaults(text: str, expected: str) -> None:
    assert str(parse_reference(text)) == expected


def test_docker_hub_api_host_is_registry_1() -> None:
    assert parse_reference("nginx").api_registry == "registry-1.docker.io"
    assert parse_reference("localhost:5000/x").api_registry == "localhost:5000"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("Nginx", "lowercase"),
        ("nginx:", "bad tag"),
        ("nginx:bad tag", "bad tag"),
        ("x@sha256:123", "bad digest"),
        ("a//b", "repository"),
        (" nginx", "spaces"),
    ],
)
def test_malformed_references_are_rejected_with_the_reason(text: str, fragment: str) -> None:
    with pytest.raises(ImageError) as err:
        parse_reference(text)
    assert fragment in str(err.value)
    assert repr(text) in str(err.value)
