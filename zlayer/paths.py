"""Where zlayer keeps things on disk, derived from the data directory as ZLayer derives them.

When the effective data dir is the platform default, the FHS paths are used (``/var/run/zlayer``,
``/var/log/zlayer``, ``/var/run/zlayer.sock``); any other data dir derives them from itself
(``{data}/run``, ``{data}/logs``, ``{data}/run/zlayer.sock``). ``ZLAYER_DATA_DIR`` overrides the data dir.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

SYSTEM_DATA_DIR = Path("/var/lib/zlayer")
# Nothing under the data dir is for other host users: container filesystems (a setuid file in one is a way to
# root), specs and bundles with their env, tokens, keys, logs. Directories are 0700; the data and run dirs are 0711
# (as Docker's /var/lib/docker) so that the zlayer group reaches a socket kept there; files are 0600.
PRIVATE_DIR = 0o700
PASSAGE_DIR = 0o711
PRIVATE_FILE = 0o600
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


def private_dir(path: Path, mode: int = PRIVATE_DIR) -> Path:
    """``path`` as a directory with exactly ``mode``, whatever the umask and whatever mode an older zlayer gave it
    (missing parents are made as the umask says)."""
    path.mkdir(parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != mode:
        os.chmod(path, mode)
    return path


def bind_unix(path: Path, mode: int) -> socket.socket:
    """A unix stream socket bound at ``path`` with ``mode`` from its first instant (the umask is held while it is
    made), so no one connects through a wider mode in between. Not yet listening."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock


def write_atomic(path: Path, data: bytes | str, mode: int = PRIVATE_FILE, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (mode ``mode``, 0600 by default) so that a reader or a crash sees the old or
    the new content, never a mix; ``durable`` also survives a power loss (fsync of the file and its directory)."""
    import tempfile  # not at import: the CLI loads this module on every start

    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


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

    def make_private(self) -> None:
        """Create the data, run and log dirs closed to other users, and close what an older zlayer (or another
        process) left open at their top level: directories to 0700, files to 0600 (the socket keeps its mode).
        A directory others may write to (``--data-dir /tmp``) is refused, not closed: it is not zlayer's."""
        for top in (self.data_dir, self.run_dir, self.log_dir):
            with contextlib.suppress(FileNotFoundError):
                if top.stat().st_mode & (stat.S_IWOTH | stat.S_ISVTX):
                    from zlayer.errors import UsageError

                    raise UsageError(f"{top} is writable by every user of this host: zlayer needs a directory of "
                                     "its own", where=str(top), hint="pass --data-dir with a new one")  # fmt: skip
        private_dir(self.data_dir, PASSAGE_DIR)
        private_dir(self.run_dir, PASSAGE_DIR)
        private_dir(self.log_dir, PRIVATE_DIR)
        me = os.geteuid()
        for top in {self.data_dir, self.run_dir, self.log_dir}:
            for entry in top.iterdir():
                if entry in (self.run_dir, self.log_dir, self.socket):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = entry.lstat()
                    kind_ok = stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)
                    if kind_ok and st.st_uid == me and st.st_mode & 0o077:
                        os.chmod(entry, stat.S_IMODE(st.st_mode) & ~0o077)
