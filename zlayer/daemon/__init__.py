"""``zlayer serve``: the node daemon (wiring, configuration, start-up and shutdown order, re-adoption)."""

from __future__ import annotations

from zlayer.daemon.config import DaemonConfig
from zlayer.daemon.server import Daemon, probe_socket, serve_background, serve_foreground

__all__ = ["Daemon", "DaemonConfig", "probe_socket", "serve_background", "serve_foreground"]
