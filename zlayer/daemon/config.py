"""How one daemon is configured: paths, listeners, token. Every path is overridable so daemons run side by side."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from zlayer.errors import UsageError
from zlayer.paths import API_PORT, Paths, write_atomic


@dataclass
class DaemonConfig:
    paths: Paths
    bind: str | None = f"0.0.0.0:{API_PORT}"
    metrics_bind: str | None = None
    token: str | None = None
    swagger: bool = True
    runtime: str = "auto"
    deployment_name: str = "zlayer"
    host_network: bool = False
    node_subnet: str | None = None  # None: a free /24 of 10.240.0.0/16, kept across restarts
    dns_port: int = 15353

    @property
    def state_db(self) -> Path:
        return self.paths.data_dir / "state.db"

    @property
    def token_file(self) -> Path:
        return self.paths.data_dir / "admin_bearer.token"

    @property
    def daemon_json(self) -> Path:
        return self.paths.data_dir / "daemon.json"

    @property
    def log_file(self) -> Path:
        return self.paths.log_dir / "daemon.log"


def split_bind(text: str, what: str = "--bind") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) → (host, port); a clear usage error otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"{what} {text!r}: expected HOST:PORT, e.g. 0.0.0.0:{API_PORT}")
    return host.strip("[]") or "0.0.0.0", int(port)


def write_json_atomic(path: Path, data: dict[str, object]) -> None:
    write_atomic(path, json.dumps(data, indent=2))
