"""The daemon's log as an operator reads and ships it: JSON lines in ``daemon.log`` (0600), rotated daily with 7
kept, the same lines on stderr when it is not a terminal."""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from zlayer.observability.daemonlog import setup_daemon_logging


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    for h in saved:
        root.addHandler(h)
    root.setLevel(level)


def test_json_lines_in_a_private_file_and_on_a_pipe(tmp_path: Path) -> None:
    log_file, err = tmp_path / "logs" / "daemon.log", io.StringIO()
    setup_daemon_logging(log_file, stderr=err)
    log = logging.getLogger("zlayer.test")
    log.info("deployed %s\nsecond line", "web")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("rollout failed")
    logging.getLogger("zlayer.test").debug("not at INFO")
    lines = log_file.read_text().splitlines()
    assert len(lines) == 2 and err.getvalue().splitlines() == lines  # one record, one line, on both
    first, second = (json.loads(ln) for ln in lines)
    assert first["msg"] == "deployed web\nsecond line" and first["level"] == "INFO" and first["logger"] == "zlayer.test"
    assert first["ts"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]
    assert log_file.stat().st_mode & 0o777 == 0o600


def test_rotated_daily_keeping_seven(tmp_path: Path) -> None:
    log_file = tmp_path / "daemon.log"
    for day in range(1, 11):  # ten days of logs left by earlier rotations
        (tmp_path / f"daemon.log.2026-11-{day:02d}").write_text("{}\n")
    setup_daemon_logging(log_file, stderr=io.StringIO())
    (fh,) = [h for h in logging.getLogger().handlers if isinstance(h, logging.handlers.TimedRotatingFileHandler)]
    assert fh.when == "MIDNIGHT"
    logging.getLogger("zlayer").warning("yesterday")
    fh.rolloverAt = int(time.time()) - 1  # midnight has passed: the next record rotates
    logging.getLogger("zlayer").warning("today")
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name != "daemon.log")
    assert len(kept) == 7 and "daemon.log.2026-11-10" in kept and "daemon.log.2026-11-04" not in kept, kept
    assert kept[-1] == f"daemon.log.{time.strftime('%Y-%m-%d', time.gmtime(time.time() - 86400))}"  # yesterday's
    assert [json.loads(ln)["msg"] for ln in log_file.read_text().splitlines()] == ["today"]


def test_a_terminal_gets_readable_lines(tmp_path: Path) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Tty()
    setup_daemon_logging(tmp_path / "daemon.log", stderr=err)
    logging.getLogger("zlayer.daemon").info("zlayer daemon ready")
    assert err.getvalue().rstrip().endswith("INFO zlayer.daemon: zlayer daemon ready")
    assert json.loads((tmp_path / "daemon.log").read_text())["msg"] == "zlayer daemon ready"
