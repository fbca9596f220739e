"""The daemon's REST API (FastAPI): one router per resource, errors as JSON with a stable ``code``."""

from __future__ import annotations

from zlayer.api.app import TokenAuth, create_app
from zlayer.api.context import ApiContext

__all__ = ["ApiContext", "TokenAuth", "create_app"]
