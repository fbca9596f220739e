"""The one exception family of zlayer.

Every error says what failed, where (file:line, field path, digest, container, node, peer) and, when there is
something to do about it, what to do. The CLI prints ``str(err)`` (plus ``hint``) and exits with ``exit_code``; the
API returns ``to_json()`` with the stable ``code``.
"""

from __future__ import annotations

import errno
import os
import re

TYPE_CHECKING = False  # (typing is imported for the type checker only: `zlayer validate` never loads it)
if TYPE_CHECKING:
    from typing import Any, Self


# Characters a terminal acts on or hides: C0/C1 controls, DEL, and the bidirectional overrides and isolates that
# reorder what is shown (the "Trojan Source" class). In a message they are written out, never passed through.
_HIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control character written out visibly (``\\x00``, ``\\n``, ``\\u202e``); with
    ``keep_newlines`` a message of several lines keeps its line breaks."""
    if keep_newlines:
        return "\n".join(_HIDDEN.sub(_escape, line) for line in text.split("\n"))
    return _HIDDEN.sub(_escape, text)


def shown(value: object, limit: int = 80) -> str:
    """A value as a message may quote it: control characters escaped visibly, at most ``limit`` characters (a longer
    one is cut and its length said), and an integer too long for ``str()`` described instead of raising."""
    if isinstance(value, int) and value.bit_length() > 3 * limit:
        return f"an integer of {value.bit_length()} bits"
    text = escape_controls(str(value))
    if len(text) > limit:
        return f"{text[: limit - 1]}… ({len(text)} characters)"
    return text


def with_context(context: str, err: BaseException | str) -> str:
    """``"context: err"`` for an event or a log line, unless the error already names that context: a replica's
    error that says ``container web-rep-1: ...`` is not prefixed with ``web-rep-1`` again."""
    text = str(err)
    return text if _names(text, context) else f"{context}: {text}"


def _names(text: str, context: str) -> bool:
    """Whether ``text`` mentions ``context`` as a whole name: standing alone (after a space, a quote or a bracket,
    before a space, punctuation or ``": "``), not inside a longer one — service ``absent`` is not named by the image
    ``reg/svc/absent:v9``."""
    pattern = rf"(?<![^\s'\"(\[]){re.escape(context)}(?=$|[\s,;)\]'\"]|:\s|:$)"
    return bool(context) and re.search(pattern, text) is not None


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
        """``where: message``, said once: a message that already names its ``where`` is not prefixed again."""
        message = escape_controls(self.message, keep_newlines=True)
        if self.where and not _names(self.message, self.where):
            return f"{escape_controls(self.where)}: {message}"
        return message

    def add_context(self, context: str) -> Self:
        """Say what failed (``container web-rep-1``) in front of the message, unless the error names it already
        (in ``where`` or in the message): context added on the way up is never repeated."""
        if not _names(str(self), context):
            self.message = f"{context}: {self.message}"
        return self

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": escape_controls(self.message, keep_newlines=True)}
        if self.where:
            body["where"] = escape_controls(self.where)
        if self.hint:
            body["hint"] = escape_controls(self.hint, keep_newlines=True)
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
    """An image was refused: its reference, manifest, config or layers are not what they claim or are over a limit
    (content from outside the node, so the API answers 422, not a 500)."""

    code = "image"
    http_status = 422


class StoreError(ImageError):
    """The node's own image store or mounts failed (a blob missing or corrupt on disk, a write or mount refused by
    the host): not the image's fault, so the API's 500."""

    http_status = 500


class RegistryError(ImageError):
    """A registry answered with an error or could not be reached."""

    code = "registry"
    http_status = 502


class RuntimeFailure(ZLayerError):
    """Creating, starting or controlling a container failed."""

    code = "runtime"


class CommandNotFound(RuntimeFailure):
    """The program an exec asked for is not in the container: the caller's input, so the API's 400."""

    http_status = 400


class ProxyError(ZLayerError):
    """The proxy could not apply a configuration or bind a listener."""

    code = "proxy"


class OverlayError(ZLayerError):
    """The overlay network could not create its interface, apply a peer or key, or take a UAPI request."""

    code = "overlay"


class InternalError(ZLayerError):
    """A bug in zlayer, reported as the API's 500 (``internal``) rather than as a dropped connection."""

    code = "internal"
    exit_code = 70
    http_status = 500


class DaemonError(ZLayerError):
    """The daemon is not reachable or refused the request."""

    code = "daemon"
    http_status = 503


class DiskFullError(ZLayerError):
    """A write failed because the filesystem (or the quota) holding ``where`` is full; nothing was half-written."""

    code = "disk_full"
    http_status = 507


def disk_full(what: str, where: str | os.PathLike[str]) -> DiskFullError:
    """The one wording of a full disk: what could not be written, where, and what to do."""
    place = os.fspath(where)
    return DiskFullError(f"{what}: the disk is full", where=place,
                         hint=f"free space on the filesystem holding {place} (df -h {place}), then retry")  # fmt: skip


def from_os_error(err: OSError, what: str) -> ZLayerError | None:
    """A full disk or quota (ENOSPC, EDQUOT) as :class:`DiskFullError`; None for any other OSError."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return disk_full(what, err.filename or "the data directory")
    return None


class AuthError(ZLayerError):
    """Missing or wrong credentials."""

    code = "unauthorized"
    http_status = 401


class ForbiddenError(AuthError):
    """Valid credentials that do not allow what was asked (a reader token on a write)."""

    code = "forbidden"
    http_status = 403


class RateLimitedError(ZLayerError):
    """Too many attempts from one client address (sign-in, token exchange): try again later."""

    code = "rate_limited"
    http_status = 429
