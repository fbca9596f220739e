"""The single-node Store: one SQLite file in WAL mode, every multi-row change in one transaction.

Calls are short and local, so they run on the event loop thread. WAL with ``synchronous=NORMAL``: a process killed at
any point (the daemon's failure mode) loses no committed transaction and never sees a half one; after a power loss the
database is still consistent but the last transactions may be missing (the agent converges from what it finds).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from zlayer.errors import ZLayerError, disk_full
from zlayer.state.protocol import (
    ContainerRecord,
    CronRecord,
    DeploymentRecord,
    EventRecord,
    JobExecutionRecord,
    ServiceRecord,
)

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deployments (
    name TEXT PRIMARY KEY, revision INTEGER NOT NULL, status TEXT NOT NULL, status_message TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS revisions (
    deployment TEXT NOT NULL REFERENCES deployments(name) ON DELETE CASCADE, revision INTEGER NOT NULL,
    spec_yaml TEXT NOT NULL, spec_json TEXT NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (deployment, revision));
CREATE TABLE IF NOT EXISTS services (
    deployment TEXT NOT NULL REFERENCES deployments(name) ON DELETE CASCADE, name TEXT NOT NULL,
    spec_json TEXT NOT NULL, desired_replicas INTEGER NOT NULL, status TEXT NOT NULL, status_message TEXT NOT NULL,
    PRIMARY KEY (deployment, name));
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY, deployment TEXT NOT NULL, service TEXT NOT NULL, replica INTEGER NOT NULL,
    image TEXT NOT NULL, state TEXT NOT NULL, revision INTEGER NOT NULL, spec_hash TEXT NOT NULL,
    exit_code INTEGER, restarts INTEGER NOT NULL, pid INTEGER NOT NULL, ip TEXT NOT NULL, health TEXT NOT NULL,
    last_error TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    oom_killed INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS containers_by_service ON containers (deployment, service, replica);
CREATE TABLE IF NOT EXISTS job_executions (
    id TEXT PRIMARY KEY, deployment TEXT NOT NULL, job_name TEXT NOT NULL, status TEXT NOT NULL,
    trigger TEXT NOT NULL, started_at TEXT NOT NULL, completed_at TEXT NOT NULL, exit_code INTEGER,
    error TEXT NOT NULL, logs TEXT NOT NULL, duration_ms INTEGER, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS executions_by_job ON job_executions (job_name, seq);
CREATE TABLE IF NOT EXISTS cron (
    deployment TEXT NOT NULL, name TEXT NOT NULL, schedule TEXT NOT NULL, enabled INTEGER NOT NULL,
    last_run TEXT NOT NULL, next_run TEXT NOT NULL, PRIMARY KEY (deployment, name));
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, deployment TEXT NOT NULL, kind TEXT NOT NULL, message TEXT NOT NULL,
    timestamp TEXT NOT NULL, data_json TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_deployment ON events (deployment, seq);
"""


def now_rfc3339() -> str:
    """The current UTC time as RFC 3339 with milliseconds (``2026-01-02T03:04:05.678Z``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StateError(ZLayerError):
    """The state database could not be opened or written."""

    code = "state"


class SqliteStore:
    """:class:`zlayer.state.Store` on one SQLite file (``{data}/state.db``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fresh = not self.path.exists()
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            if fresh:
                os.chmod(self.path, 0o600)  # specs may carry secrets in env values
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._tx():
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                self._migrate()
                self._db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
        except sqlite3.DatabaseError as e:
            raise StateError(f"cannot open state database: {e}", where=str(self.path)) from e

    def _migrate(self) -> None:
        """Bring a database an earlier version wrote up to this schema (inside the opening transaction)."""
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(containers)")}
        if "oom_killed" not in columns:  # version 1
            self._db.execute("ALTER TABLE containers ADD COLUMN oom_killed INTEGER NOT NULL DEFAULT 0")
        self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction: all of it or nothing. A failure of SQLite (a full disk above all) is a
        :class:`StateError` saying so, with the database's path; the rollback never hides it."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:  # SQLite itself rolls back on SQLITE_FULL; a second ROLLBACK would raise
                    self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
        except sqlite3.Error as e:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise self._failure(e) from None

    def _failure(self, e: sqlite3.Error) -> ZLayerError:
        if getattr(e, "sqlite_errorname", "") == "SQLITE_FULL" or "disk is full" in str(e):
            return disk_full("cannot write the state database", self.path)
        return StateError(f"the state database failed: {e}", where=str(self.path))

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
        return row

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return list(self._db.execute(sql, args).fetchall())

    # deployments ---------------------------------------------------------------------------------------------

    async def put_deployment(
        self, name: str, spec_yaml: str, spec: dict[str, Any], services: list[ServiceRecord], status: str = "pending"
    ) -> DeploymentRecord:
        ts = now_rfc3339()
        with self._tx() as db:
            row = db.execute("SELECT revision, created_at FROM deployments WHERE name = ?", (name,)).fetchone()
            revision = (row["revision"] + 1) if row else 1
            created = row["created_at"] if row else ts
            db.execute(
                "INSERT INTO deployments (name, revision, status, status_message, created_at, updated_at)"
                " VALUES (?, ?, ?, '', ?, ?) ON CONFLICT(name) DO UPDATE SET revision = excluded.revision,"
                " status = excluded.status, status_message = '', updated_at = excluded.updated_at",
                (name, revision, status, created, ts),
            )
            db.execute(
                "INSERT INTO revisions (deployment, revision, spec_yaml, spec_json, created_at) VALUES (?, ?, ?, ?, ?)",
                (name, revision, spec_yaml, json.dumps(spec), ts),
            )
            keep = [s.name for s in services]
            existing = {
                r["name"]: r for r in db.execute("SELECT * FROM services WHERE deployment = ?", (name,)).fetchall()
            }
            for gone in set(existing) - set(keep):
                db.execute("DELETE FROM services WHERE deployment = ? AND name = ?", (name, gone))
            for s in services:
                db.execute(
                    "INSERT INTO services (deployment, name, spec_json, desired_replicas, status, status_message)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(deployment, name) DO UPDATE SET"
                    " spec_json = excluded.spec_json, desired_replicas = excluded.desired_replicas",
                    (name, s.name, json.dumps(s.spec), s.desired_replicas, s.status, s.status_message),
                )
        return DeploymentRecord(name, spec_yaml, spec, revision, status, "", created, ts)

    def _deployment(self, row: sqlite3.Row) -> DeploymentRecord:
        rev = self._one(
            "SELECT spec_yaml, spec_json FROM revisions WHERE deployment = ? AND revision = ?",
            (row["name"], row["revision"]),
        )
        spec_yaml, spec = (rev["spec_yaml"], json.loads(rev["spec_json"])) if rev else ("", {})
        return DeploymentRecord(
            row["name"],
            spec_yaml,
            spec,
            row["revision"],
            row["status"],
            row["status_message"],
            row["created_at"],
            row["updated_at"],
        )

    async def get_deployment(self, name: str) -> DeploymentRecord | None:
        row = self._one("SELECT * FROM deployments WHERE name = ?", (name,))
        return self._deployment(row) if row else None

    async def list_deployments(self) -> list[DeploymentRecord]:
        return [self._deployment(r) for r in self._all("SELECT * FROM deployments ORDER BY name")]

    async def list_revisions(self, name: str) -> list[tuple[int, str, str]]:
        rows = self._all(
            "SELECT revision, created_at, spec_yaml FROM revisions WHERE deployment = ? ORDER BY revision", (name,)
        )
        return [(r["revision"], r["created_at"], r["spec_yaml"]) for r in rows]

    async def set_deployment_status(self, name: str, status: str, message: str = "") -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE deployments SET status = ?, status_message = ?, updated_at = ? WHERE name = ?",
                (status, message, now_rfc3339(), name),
            )

    async def delete_deployment(self, name: str) -> bool:
        with self._tx() as db:
            cur = db.execute("DELETE FROM deployments WHERE name = ?", (name,))
            db.execute("DELETE FROM containers WHERE deployment = ?", (name,))
            db.execute("DELETE FROM cron WHERE deployment = ?", (name,))
            return cur.rowcount > 0

    # services ------------------------------------------------------------------------------------------------

    @staticmethod
    def _service(r: sqlite3.Row) -> ServiceRecord:
        return ServiceRecord(
            r["deployment"],
            r["name"],
            json.loads(r["spec_json"]),
            r["desired_replicas"],
            r["status"],
            r["status_message"],
        )

    async def list_services(self, deployment: str) -> list[ServiceRecord]:
        return [
            self._service(r)
            for r in self._all("SELECT * FROM services WHERE deployment = ? ORDER BY name", (deployment,))
        ]

    async def scale_view(self, deployment: str) -> tuple[str, dict[str, int]] | None:
        row = self._one("SELECT status FROM deployments WHERE name = ?", (deployment,))
        if row is None:
            return None
        rows = self._all("SELECT name, desired_replicas FROM services WHERE deployment = ?", (deployment,))
        return row["status"], {r["name"]: r["desired_replicas"] for r in rows}

    async def get_service(self, deployment: str, name: str) -> ServiceRecord | None:
        r = self._one("SELECT * FROM services WHERE deployment = ? AND name = ?", (deployment, name))
        return self._service(r) if r else None

    async def set_service_desired(self, deployment: str, name: str, replicas: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE services SET desired_replicas = ? WHERE deployment = ? AND name = ?",
                (replicas, deployment, name),
            )

    async def set_service_status(self, deployment: str, name: str, status: str, message: str = "") -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE services SET status = ?, status_message = ? WHERE deployment = ? AND name = ?",
                (status, message, deployment, name),
            )

    # containers ----------------------------------------------------------------------------------------------

    async def put_container(self, record: ContainerRecord) -> None:
        ts = now_rfc3339()
        record.updated_at = ts
        record.created_at = record.created_at or ts
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO containers (id, deployment, service, replica, image, state, revision,"
                " spec_hash, exit_code, restarts, pid, ip, health, last_error, created_at, updated_at, oom_killed)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.deployment,
                    record.service,
                    record.replica,
                    record.image,
                    record.state,
                    record.revision,
                    record.spec_hash,
                    record.exit_code,
                    record.restarts,
                    record.pid,
                    record.ip,
                    record.health,
                    record.last_error,
                    record.created_at,
                    record.updated_at,
                    int(record.oom_killed),
                ),
            )

    @staticmethod
    def _container(r: sqlite3.Row) -> ContainerRecord:
        rec = ContainerRecord(**{k: r[k] for k in r.keys()})  # noqa: SIM118 - sqlite3.Row has no __iter__ of keys
        rec.oom_killed = bool(rec.oom_killed)
        return rec

    async def get_container(self, container_id: str) -> ContainerRecord | None:
        r = self._one("SELECT * FROM containers WHERE id = ?", (container_id,))
        return self._container(r) if r else None

    async def list_containers(self, deployment: str | None = None, service: str | None = None) -> list[ContainerRecord]:
        sql, args = "SELECT * FROM containers", []
        conds = []
        if deployment is not None:
            conds.append("deployment = ?")
            args.append(deployment)
        if service is not None:
            conds.append("service = ?")
            args.append(service)
        if conds:
            sql += " WHERE " + " AND ".join(conds)
        sql += " ORDER BY deployment, service, replica"
        return [self._container(r) for r in self._all(sql, tuple(args))]

    async def delete_container(self, container_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM containers WHERE id = ?", (container_id,))

    # jobs and cron -------------------------------------------------------------------------------------------

    async def put_job_execution(self, record: JobExecutionRecord) -> None:
        with self._tx() as db:
            row = db.execute("SELECT seq FROM job_executions WHERE id = ?", (record.id,)).fetchone()
            seq = (
                row["seq"] if row else db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM job_executions").fetchone()[0]
            )
            db.execute(
                "INSERT OR REPLACE INTO job_executions (id, deployment, job_name, status, trigger, started_at,"
                " completed_at, exit_code, error, logs, duration_ms, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.deployment,
                    record.job_name,
                    record.status,
                    record.trigger,
                    record.started_at,
                    record.completed_at,
                    record.exit_code,
                    record.error,
                    record.logs,
                    record.duration_ms,
                    seq,
                ),
            )

    @staticmethod
    def _execution(r: sqlite3.Row) -> JobExecutionRecord:
        return JobExecutionRecord(**{k: r[k] for k in r.keys() if k != "seq"})  # noqa: SIM118

    async def get_job_execution(self, execution_id: str) -> JobExecutionRecord | None:
        r = self._one("SELECT * FROM job_executions WHERE id = ?", (execution_id,))
        return self._execution(r) if r else None

    async def list_job_executions(
        self, job_name: str | None = None, deployment: str | None = None, limit: int = 100
    ) -> list[JobExecutionRecord]:
        conds, args = [], []
        if job_name is not None:
            conds.append("job_name = ?")
            args.append(job_name)
        if deployment is not None:
            conds.append("deployment = ?")
            args.append(deployment)
        where = (" WHERE " + " AND ".join(conds)) if conds else ""
        rows = self._all(f"SELECT * FROM job_executions{where} ORDER BY seq DESC LIMIT ?", (*args, limit))
        return [self._execution(r) for r in rows]

    async def put_cron(self, record: CronRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO cron (deployment, name, schedule, enabled, last_run, next_run)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.deployment,
                    record.name,
                    record.schedule,
                    int(record.enabled),
                    record.last_run,
                    record.next_run,
                ),
            )

    async def list_cron(self, deployment: str | None = None) -> list[CronRecord]:
        if deployment is None:
            rows = self._all("SELECT * FROM cron ORDER BY deployment, name")
        else:
            rows = self._all("SELECT * FROM cron WHERE deployment = ? ORDER BY name", (deployment,))
        return [
            CronRecord(r["deployment"], r["name"], r["schedule"], bool(r["enabled"]), r["last_run"], r["next_run"])
            for r in rows
        ]

    async def delete_cron(self, deployment: str, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM cron WHERE deployment = ? AND name = ?", (deployment, name))

    # events --------------------------------------------------------------------------------------------------

    async def add_event(self, deployment: str, kind: str, message: str, data: dict[str, Any] | None = None) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO events (deployment, kind, message, timestamp, data_json) VALUES (?, ?, ?, ?, ?)",
                (deployment, kind, message, now_rfc3339(), json.dumps(data or {})),
            )
            return int(cur.lastrowid or 0)

    async def list_events(self, deployment: str, after: int = 0, limit: int = 1000) -> list[EventRecord]:
        rows = self._all(
            "SELECT * FROM events WHERE deployment = ? AND seq > ? ORDER BY seq LIMIT ?", (deployment, after, limit)
        )
        return [
            EventRecord(r["seq"], r["deployment"], r["kind"], r["message"], r["timestamp"], json.loads(r["data_json"]))
            for r in rows
        ]

    async def close(self) -> None:
        self._db.close()
