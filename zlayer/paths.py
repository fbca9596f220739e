"""Where zlayer keeps things on disk, derived from the data directory as ZLayer derives them.

When the effective data dir is the platform default, the FHS paths are used (``/var/run/zlayer``,
``/var/log/zlayer``, ``/var/run/zlayer.sock``); any other data dir derives them from itself
(``{data}/run``, ``{data}/logs``, ``{data}/run/zlayer.sock``). ``ZLAYER_DATA_DIR`` overrides the data dir.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SYSTEM_DATA_DIR = Path("/var/lib/zlayer")
MAX_SOCKET_PATH = 103
API_PORT = 3669


def default_data_dir() -> Path:
    """The platform default: /var/lib/zlayer for root (or when a system daemon.json exists), else ~/.zlayer."""
    if os.geteuid() == 0 or (SYSTEM_DATA_DIR / "daemon.json").exists():
        return SYSTEM_DATA_DIR
    return Path.home() / ".zlayer"


def _short_socket(path: Path, label: str, data_dir: Path) -> Path:
    if len(str(path).encode()) <= MAX_SOCKET_PATH:
        return path
    import hashlib

    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    return Path(f"/tmp/zlayer-{label}-{digest}.sock")


@dataclass(frozen=True)
class Paths:
    """Every directory and socket zlayer uses, for one data dir."""

    data_dir: Path
    run_dir: Path
    log_dir: Path
    socket: Path

    @classmethod
    def resolve(cls, data_dir: str | os.PathLike[str] | None = None, socket: str | None = None) -> Paths:
        """Paths for an explicit data dir, else ``$ZLAYER_DATA_DIR``, else the platform default."""
        chosen = data_dir or os.environ.get("ZLAYER_DATA_DIR")
        default = default_data_dir()
        data = Path(chosen).expanduser().absolute() if chosen else default
        if data == default and default == SYSTEM_DATA_DIR:
            run, log, sock = Path("/var/run/zlayer"), Path("/var/log/zlayer"), Path("/var/run/zlayer.sock")
        else:
            run, log = data / "run", data / "logs"
            sock = _short_socket(run / "zlayer.sock", "daemon", data)
        return cls(data_dir=data, run_dir=run, log_dir=log, socket=Path(socket) if socket else sock)

    def sub(self, name: str) -> Path:
        """A subdirectory of the data dir (``containers``, ``images``, ``volumes``, ...)."""
        return self.data_dir / name
