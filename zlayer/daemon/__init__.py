"""``zlayer serve``: the node daemon (wiring, start-up and shutdown order, re-adoption); its configuration is
:mod:`zlayer.config`, which the client shares."""

from __future__ import annotations

from zlayer.daemon.server import Daemon, serve_background, serve_foreground

__all__ = ["Daemon", "serve_background", "serve_foreground"]
