"""The daemon's own log: ``LOG_DIR/daemon.log`` rotated at midnight with 7 days kept (as ZLayer's), and stderr.

The file holds JSON lines (one object per record: ``ts``, ``level``, ``logger``, ``msg``, and ``exc`` when an
exception was logged), which log shippers read as they are. stderr gets the same JSON lines when it is not a
terminal (systemd's journal, a pipe, a container's log) and readable lines on a terminal; when stderr already is
the log file (``serve --daemon``), the file handler alone writes to it."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

KEEP_DAYS = 7
HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLines(logging.Formatter):
    """One JSON object per record, on one line whatever the message holds."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def _same_file(stream: TextIO, path: Path) -> bool:
    try:
        a, b = os.fstat(stream.fileno()), path.stat()
    except (OSError, ValueError, AttributeError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def setup_daemon_logging(log_file: Path, level: int = logging.INFO, stderr: TextIO | None = None) -> None:
    """Send the root logger's records to the rotating ``log_file`` and to stderr, as the module says."""
    stream = stderr if stderr is not None else sys.stderr
    log_file.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    fh = logging.handlers.TimedRotatingFileHandler(log_file, when="midnight", backupCount=KEEP_DAYS, utc=True)
    os.chmod(log_file, 0o600)  # whatever the umask: the log may name secrets' files, hosts, users
    fh.setFormatter(JsonLines())
    root.addHandler(fh)
    if not _same_file(stream, log_file):
        sh = logging.StreamHandler(stream)
        sh.setFormatter(logging.Formatter(HUMAN_FORMAT) if stream.isatty() else JsonLines())
        root.addHandler(sh)
    root.setLevel(level)
