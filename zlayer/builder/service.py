"""Builds run by the daemon (ZLayer's build API): each build a task with its status, its events as they come (what
``/build/{id}/stream`` sends) and its log (``BUILDER/builds/<id>/build.log``). Builds are kept in memory with the
last :data:`KEEP` of them listed; a daemon restart forgets them (their images stay in the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zlayer.builder.executor import Builder, BuildOptions
from zlayer.errors import NotFoundError, ZLayerError
from zlayer.images import ImageStore
from zlayer.paths import private_dir

KEEP = 100


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class BuildRecord:
    """One build: ``status`` is pending, running, complete or failed (ZLayer's ``BuildStateEnum``)."""

    id: str
    status: str = "pending"
    started_at: str = field(default_factory=_now)
    completed_at: str | None = None
    image_id: str | None = None
    error: str | None = None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "status": self.status, "started_at": self.started_at}
        for key in ("image_id", "error", "completed_at"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @property
    def finished(self) -> bool:
        return self.status in ("complete", "failed")


class _Events:
    """The builder's progress as the API's events (and log lines)."""

    def __init__(self, service: BuildService, record: BuildRecord) -> None:
        self.service, self.record = service, record
        self.stage, self.index = "", 0

    def step(self, stage: str, number: int, total: int, text: str) -> None:
        if self.index:
            self.service.emit(self.record, "instruction_complete",
                              {"stage": self.stage, "index": self.index, "cached": False})  # fmt: skip
        self.stage, self.index = stage, number
        self.service.emit(self.record, "instruction_started",
                          {"stage": stage, "index": number, "total": total, "instruction": text})  # fmt: skip

    def cached(self) -> None:
        self.service.emit(
            self.record, "instruction_complete", {"stage": self.stage, "index": self.index, "cached": True}
        )
        self.index = 0

    def output(self, line: str) -> None:
        self.service.emit(self.record, "output", {"line": line, "is_stderr": False})

    def done(self, seconds: float) -> None:
        if self.index:
            self.service.emit(self.record, "instruction_complete",
                              {"stage": self.stage, "index": self.index, "cached": False})  # fmt: skip


class BuildService:
    """The daemon's builds into ``store``; ``work`` is the builder's directory (``DATA/builder``)."""

    def __init__(self, store: ImageStore, work: Path) -> None:
        self.store = store
        self.work = private_dir(Path(work))
        self.logs = private_dir(self.work / "builds")
        self.builds: dict[str, BuildRecord] = {}

    def emit(self, record: BuildRecord, kind: str, data: dict[str, Any]) -> None:
        record.events.append((kind, data))
        line = data.get("line") if kind == "output" else None
        if kind == "instruction_started":
            line = f"[{data['stage']} {data['index']}/{data['total']}] {data['instruction']}"
        elif kind == "instruction_complete" and data.get("cached"):
            line = f"[{data['stage']} {data['index']}] CACHED"
        elif kind in ("build_complete", "build_failed"):
            line = data.get("image_id") or f"error: {data.get('error')}"
        if line is not None:
            with contextlib.suppress(OSError), open(self.logs / record.id / "build.log", "a") as f:
                f.write(f"{line}\n")
        record.changed.set()
        record.changed = asyncio.Event()

    def start(self, opts: BuildOptions, *, cleanup: Path | None = None) -> BuildRecord:
        """Start a build in the background; ``cleanup`` is a directory (an uploaded context) removed after it."""
        record = BuildRecord(uuid.uuid4().hex)
        private_dir(self.logs / record.id)
        self.builds[record.id] = record
        for old in list(self.builds)[:-KEEP]:
            if self.builds[old].finished:
                del self.builds[old]
                shutil.rmtree(self.logs / old, ignore_errors=True)
        record.task = asyncio.get_running_loop().create_task(self._run(record, opts, cleanup))
        return record

    async def _run(self, record: BuildRecord, opts: BuildOptions, cleanup: Path | None) -> None:
        record.status = "running"
        try:
            image = await Builder(self.store, self.work, _Events(self, record)).build(opts)
            if opts.tags and opts.push:
                from zlayer.images import push

                for tag in opts.tags:
                    await push(self.store, tag, insecure=opts.insecure)
        except asyncio.CancelledError:
            record.status, record.error = "failed", "the build was cancelled"
            self.emit(record, "build_failed", {"error": record.error})
        except ZLayerError as e:
            record.status, record.error = "failed", str(e)
            self.emit(record, "build_failed", {"error": record.error})
        except Exception as e:  # a bug in a build must not end the daemon's other work: it fails that build
            record.status, record.error = "failed", f"internal error: {type(e).__name__}: {e}"
            self.emit(record, "build_failed", {"error": record.error})
        else:
            record.status, record.image_id = "complete", image.id if image is not None else None
            self.emit(record, "build_complete", {"image_id": record.image_id})
        finally:
            record.completed_at = _now()
            record.changed.set()
            if cleanup is not None:
                shutil.rmtree(cleanup, ignore_errors=True)

    def get(self, build_id: str) -> BuildRecord:
        record = self.builds.get(build_id)
        if record is None:
            raise NotFoundError(f"build {build_id} not found", hint="GET /api/v1/builds lists the builds")
        return record

    def log(self, build_id: str) -> str:
        self.get(build_id)
        try:
            return (self.logs / build_id / "build.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def cancel(self, build_id: str) -> BuildRecord:
        """Cancel a running build: its step's container is killed and everything it mounted or wrote removed."""
        record = self.get(build_id)
        if record.task is not None and not record.task.done():
            record.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await record.task
        return record

    async def follow(self, build_id: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Every event of the build, from its first, and new ones as they come until it ends."""
        record = self.get(build_id)
        sent = 0
        while True:
            changed = record.changed
            while sent < len(record.events):
                yield record.events[sent]
                sent += 1
            if record.finished and sent >= len(record.events):
                return
            await changed.wait()

    async def close(self) -> None:
        """Cancel what still runs (daemon shutdown): nothing stays mounted or half-written."""
        for record in list(self.builds.values()):
            if record.task is not None and not record.task.done():
                await self.cancel(record.id)
