"""Image references as Docker reads them: ``nginx`` is ``docker.io/library/nginx:latest``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from zlayer.errors import ImageError

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-fA-F0-9]{32,}$")
_HOST_RE = re.compile(r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::\d+)?$")


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
    """Parse ``[host[:port]/]name[:tag][@digest]`` with Docker Hub defaults; a malformed one raises ImageError."""
    original = text
    if not text or text != text.strip():
        raise ImageError(f"invalid image reference {original!r}: empty or surrounded by spaces")
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise ImageError(f"invalid image reference {original!r}: bad digest {digest!r}")
    registry = DEFAULT_REGISTRY
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if not _HOST_RE.match(first):
            raise ImageError(f"invalid image reference {original!r}: bad registry host {first!r}")
        registry, text = first, rest
    tag = None
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        text, tag = text.rsplit(":", 1)
        if not _TAG_RE.match(tag):
            raise ImageError(f"invalid image reference {original!r}: bad tag {tag!r}")
    if registry == "index.docker.io":
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in text:
        text = f"library/{text}"
    if not _REPO_RE.match(text):
        raise ImageError(
            f"invalid image reference {original!r}: repository {text!r} must be lowercase letters, digits, separators"
        )
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry=registry, repository=text, tag=tag, digest=digest)
