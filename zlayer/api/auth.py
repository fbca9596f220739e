"""Who may do what on the API: roles, as ZLayer names them: ``admin`` may do everything, ``operator`` may change
things (deploy, scale, exec, delete, pull, trigger), any other valid token (``reader``, ``node``...) may only read.
What a request needs follows from its method and route alone (:func:`access_needed`), so a new route is a write
unless it says otherwise. The tokens themselves (HS256 JWTs, the node's secret) are :mod:`zlayer.tokens`."""

from __future__ import annotations

from typing import Any

WRITE_ROLES = frozenset({"admin", "operator"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# openapi_extra of a route that changes nothing although its method is not a read (a dry run, a validation):
# ``@router.post(..., openapi_extra=READ_ONLY)``. Every other POST, PUT, PATCH and DELETE is a write.
ACCESS_KEY = "x-zlayer-access"
READ_ONLY: dict[str, Any] = {ACCESS_KEY: "read"}


def access_needed(method: str, declared: dict[str, Any] | None) -> str:
    """``"read"`` or ``"write"``: what a request with ``method`` on a route whose ``openapi_extra`` is ``declared``
    needs. Reads are GET, HEAD and OPTIONS and routes declared :data:`READ_ONLY`; everything else writes."""
    if method.upper() in READ_METHODS or (declared or {}).get(ACCESS_KEY) == "read":
        return "read"
    return "write"


def may_write(claims: dict[str, Any]) -> bool:
    """True when the token's roles include ``admin`` or ``operator``."""
    roles = claims.get("roles")
    return isinstance(roles, list) and any(isinstance(r, str) and r in WRITE_ROLES for r in roles)


__all__ = ["READ_ONLY", "WRITE_ROLES", "access_needed", "may_write"]
