"""Image references as Docker reads them: ``nginx`` is ``docker.io/library/nginx:latest``."""

from __future__ import annotations

from dataclasses import dataclass

from zlayer.errors import ImageError
from zlayer.spec.scalars import parse_image_ref

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"


@dataclass(frozen=True)
class Reference:
    """A parsed image reference; ``str()`` gives the fully qualified form."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def name(self) -> str:
        """registry/repository without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_registry(self) -> str:
        """The host to talk to: Docker Hub's API lives at registry-1.docker.io."""
        return "registry-1.docker.io" if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def selector(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG


def parse_reference(text: str) -> Reference:
    """Parse ``[host[:port]/]name[:tag][@digest]`` with Docker Hub's defaults; a malformed one raises ImageError.
    The grammar is the spec's (:func:`zlayer.spec.scalars.parse_image_ref`), so a reference ``zlayer validate``
    accepts is one the image store can pull."""
    try:
        parts = parse_image_ref(text)
    except ValueError as e:
        raise ImageError(str(e)) from None
    registry = parts["registry"] or DEFAULT_REGISTRY
    if registry == "index.docker.io":
        registry = DEFAULT_REGISTRY
    repository = str(parts["repository"])
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"library/{repository}"
    tag, digest = parts["tag"], parts["digest"]
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest)


def names_registry(image: str) -> bool:
    """Whether a reference starts with a registry host (``host.tld/``, ``host:port/``, ``localhost/``). ZLayer's
    rule: a name without one is pulled only from ``ZLAYER_DEFAULT_REGISTRY``, never implicitly from Docker Hub."""
    first, sep, _ = image.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")
