"""The Store protocol: everything the node agent persists, behind a few async methods.

One node uses :class:`zlayer.state.sqlite.SqliteStore`; a cluster backend (etcd) implements the same protocol. Every
method that changes several rows does so in one transaction, so a daemon killed at any moment restarts from a
consistent picture: a deployment always has its spec revision and its service rows, or none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

DEPLOYMENT_STATES = ("pending", "deploying", "running", "failed", "stopped")


@dataclass
class DeploymentRecord:
    """A deployment as stored: its latest spec (YAML as submitted and as parsed), revision and lifecycle state."""

    name: str
    spec_yaml: str
    spec: dict[str, Any]
    revision: int = 1
    status: str = "pending"
    status_message: str = ""
    created_at: str = ""
    updated_at: str = ""


@dataclass
class ServiceRecord:
    """One service of a deployment: its spec (as a plain dict), desired replicas and status."""

    deployment: str
    name: str
    spec: dict[str, Any]
    desired_replicas: int = 1
    status: str = "pending"
    status_message: str = ""


@dataclass
class ContainerRecord:
    """One replica's container, as the agent last saw it. ``revision`` is the spec revision it was built from.
    ``oom_killed`` is Docker's ``State.OOMKilled``: the kernel's OOM killer ended one of its processes (its init or
    one an exec started) since it last started."""

    id: str
    deployment: str
    service: str
    replica: int
    image: str = ""
    state: str = "pending"
    revision: int = 1
    spec_hash: str = ""
    exit_code: int | None = None
    oom_killed: bool = False
    restarts: int = 0
    pid: int = 0
    ip: str = ""
    health: str = "unknown"
    last_error: str = ""
    created_at: str = ""
    updated_at: str = ""


@dataclass
class JobExecutionRecord:
    """One run of a job (``rtype: job`` or a cron run)."""

    id: str
    deployment: str
    job_name: str
    status: str = "pending"
    trigger: str = "cli"
    started_at: str = ""
    completed_at: str = ""
    exit_code: int | None = None
    error: str = ""
    logs: str = ""
    duration_ms: int | None = None


@dataclass
class CronRecord:
    """A cron job's schedule and switch; ``next_run``/``last_run`` are RFC 3339 UTC or empty."""

    deployment: str
    name: str
    schedule: str
    enabled: bool = True
    last_run: str = ""
    next_run: str = ""


@dataclass
class EventRecord:
    """Something that happened to a deployment, in order (``seq`` grows)."""

    seq: int
    deployment: str
    kind: str
    message: str
    timestamp: str
    data: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Store(Protocol):
    """What the daemon persists. Missing things return ``None`` (or an empty list); errors are ZLayerErrors."""

    async def put_deployment(
        self, name: str, spec_yaml: str, spec: dict[str, Any], services: list[ServiceRecord], status: str = "pending"
    ) -> DeploymentRecord:
        """Create or replace a deployment: a new spec revision and its service rows, in one transaction."""
        ...

    async def get_deployment(self, name: str) -> DeploymentRecord | None: ...

    async def list_deployments(self) -> list[DeploymentRecord]: ...

    async def list_revisions(self, name: str) -> list[tuple[int, str, str]]:
        """``(revision, created_at, spec_yaml)`` of every stored revision, oldest first."""
        ...

    async def set_deployment_status(self, name: str, status: str, message: str = "") -> None: ...

    async def delete_deployment(self, name: str) -> bool:
        """Remove the deployment and everything that belongs to it; False when it did not exist."""
        ...

    async def list_services(self, deployment: str) -> list[ServiceRecord]: ...

    async def get_service(self, deployment: str, name: str) -> ServiceRecord | None: ...

    async def set_service_desired(self, deployment: str, name: str, replicas: int) -> None: ...

    async def scale_view(self, deployment: str) -> tuple[str, dict[str, int]] | None:
        """The deployment's status and each service's desired replicas, without the specs (the autoscaler reads
        it every round); ``None`` when there is no such deployment."""
        ...

    async def set_service_status(self, deployment: str, name: str, status: str, message: str = "") -> None: ...

    async def put_container(self, record: ContainerRecord) -> None: ...

    async def get_container(self, container_id: str) -> ContainerRecord | None: ...

    async def list_containers(self, deployment: str | None = None, service: str | None = None) -> list[ContainerRecord]:
        """Containers, ordered by deployment, service and replica."""
        ...

    async def delete_container(self, container_id: str) -> None: ...

    async def put_job_execution(self, record: JobExecutionRecord) -> None: ...

    async def get_job_execution(self, execution_id: str) -> JobExecutionRecord | None: ...

    async def list_job_executions(
        self, job_name: str | None = None, deployment: str | None = None, limit: int = 100
    ) -> list[JobExecutionRecord]:
        """Newest first."""
        ...

    async def put_cron(self, record: CronRecord) -> None: ...

    async def list_cron(self, deployment: str | None = None) -> list[CronRecord]: ...

    async def delete_cron(self, deployment: str, name: str) -> None: ...

    async def add_event(self, deployment: str, kind: str, message: str, data: dict[str, Any] | None = None) -> int: ...

    async def list_events(self, deployment: str, after: int = 0, limit: int = 1000) -> list[EventRecord]: ...

    async def close(self) -> None: ...
