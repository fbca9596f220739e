"""zlayer: container orchestration from one ``*.zlayer.yml``.

Public names are loaded lazily so that ``import zlayer`` (and the CLI) stays fast.
"""

from __future__ import annotations

from zlayer._version import __version__

__all__ = ["Client", "__version__"]


def __getattr__(name: str) -> object:  # (no typing import: `zlayer --version` loads only this package)
    if name == "Client":
        from zlayer.client import Client

        return Client
    raise AttributeError(f"module 'zlayer' has no attribute {name!r}")
