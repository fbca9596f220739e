"""The one exception family of zlayer.

Every error says what failed, where (file:line, field path, digest, container, node, peer) and, when there is
something to do about it, what to do. The CLI prints ``str(err)`` (plus ``hint``) and exits with ``exit_code``; the
API returns ``to_json()`` with the stable ``code``.
"""

from __future__ import annotations

from typing import Any


class ZLayerError(Exception):
    """Base of every error zlayer reports to a person."""

    code = "error"
    exit_code = 1
    http_status = 500

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.where:
            body["where"] = self.where
        if self.hint:
            body["hint"] = self.hint
        return body


class UsageError(ZLayerError):
    """The command line or request itself is wrong."""

    code = "usage"
    exit_code = 2
    http_status = 400


class NotFoundError(ZLayerError):
    """A named thing (file, deployment, image, container) does not exist."""

    code = "not_found"
    http_status = 404


class ConflictError(ZLayerError):
    """The request conflicts with the current state."""

    code = "conflict"
    http_status = 409


class SpecError(ZLayerError):
    """A deployment spec could not be read or is invalid. ``problems`` lists every problem found."""

    code = "invalid_spec"
    http_status = 400

    def __init__(
        self, message: str, *, problems: list[Any] | None = None, where: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, where=where, hint=hint)
        self.problems = list(problems or [])

    def to_json(self) -> dict[str, Any]:
        body = super().to_json()
        if self.problems:
            body["problems"] = [p.to_json() if hasattr(p, "to_json") else str(p) for p in self.problems]
        return body


class ImageError(ZLayerError):
    """Pulling, storing, unpacking or moving an image failed."""

    code = "image"


class RegistryError(ImageError):
    """A registry answered with an error or could not be reached."""

    code = "registry"
    http_status = 502


class RuntimeFailure(ZLayerError):
    """Creating, starting or controlling a container failed."""

    code = "runtime"


class ProxyError(ZLayerError):
    """The proxy could not apply a configuration or bind a listener."""

    code = "proxy"


class DaemonError(ZLayerError):
    """The daemon is not reachable or refused the request."""

    code = "daemon"
    http_status = 503


class AuthError(ZLayerError):
    """Missing or wrong credentials."""

    code = "unauthorized"
    http_status = 401


class ForbiddenError(AuthError):
    """Valid credentials that do not allow what was asked (a reader token on a write)."""

    code = "forbidden"
    http_status = 403
