"""Request and response bodies, named and shaped as in ZLayer's OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field

# An exec's argv as execve takes it: no argument may hold a NUL (C would cut it there, silently running something
# else), one argument at most MAX_ARG_STRLEN (128 KiB) and all of them well inside ARG_MAX.
MAX_EXEC_ARG = (128 << 10) - 1
MAX_EXEC_ARGS = 1 << 20


def _exec_argv(command: list[str]) -> list[str]:
    if not command[0]:
        raise ValueError("the program (command[0]) is empty")
    total = 0
    for i, arg in enumerate(command):
        size = len(arg.encode("utf-8", "surrogatepass"))
        if "\x00" in arg:
            raise ValueError(f"command[{i}] holds a NUL byte (at {arg.index(chr(0))}), which no program can be passed")
        if size > MAX_EXEC_ARG:
            raise ValueError(f"command[{i}] is {size} bytes, more than the {MAX_EXEC_ARG} one argument may have")
        total += size + 1
    if total > MAX_EXEC_ARGS:
        raise ValueError(f"the command is {total} bytes, more than the {MAX_EXEC_ARGS} an exec may pass")
    return command


ExecArgv = Annotated[list[str], Field(min_length=1), AfterValidator(_exec_argv)]

U32_MAX = 2**32 - 1
"""ZLayer's counts (replicas, limits, line counts) are u32: a number past it is a 400, never a value SQLite or the
agent cannot hold."""
SEQ_MAX = 2**63 - 1
"""Event sequence numbers are SQLite integers (i64)."""


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable error code")
    message: str
    where: str | None = Field(None, description="Field path, file:line, container or resource the error is about")
    hint: str | None = None
    problems: list[Any] | None = Field(None, description="Every problem found (invalid spec), each with its path")


class HealthResponse(BaseModel):
    status: str
    version: str
    runtime_name: str | None = None
    uptime_secs: int | None = None


class CreateDeploymentRequest(BaseModel):
    spec: str = Field(description="Deployment specification (YAML content)")


class DeploymentSummary(BaseModel):
    name: str
    status: str
    service_count: int
    created_at: str


class ServiceHealthInfo(BaseModel):
    name: str
    health: str
    replicas_running: int
    replicas_desired: int
    endpoints: list[str]


class DeploymentDetails(BaseModel):
    name: str
    status: str
    services: list[str]
    service_health: list[ServiceHealthInfo]
    created_at: str
    updated_at: str
    status_message: str | None = None


class StoredDeployment(BaseModel):
    name: str
    spec: dict[str, Any]
    status: dict[str, Any]
    created_at: str
    updated_at: str


class ServiceEndpoint(BaseModel):
    name: str
    protocol: str
    port: int
    url: str | None = None


class ServiceMetrics(BaseModel):
    cpu_percent: float
    memory_percent: float
    rps: float | None = None


class ServiceSummary(BaseModel):
    name: str
    deployment: str
    status: str
    replicas: int
    desired_replicas: int
    endpoints: list[ServiceEndpoint]


class ServiceDetails(ServiceSummary):
    metrics: ServiceMetrics
    status_message: str | None = None


class ScaleRequest(BaseModel):
    replicas: int = Field(ge=0, le=U32_MAX)


class ContainerHealthInfo(BaseModel):
    status: str
    failing_streak: int | None = None
    last_output: str | None = None


class PortMapping(BaseModel):
    container_port: int
    host_port: int | None = None
    protocol: str = "tcp"
    host_ip: str = "0.0.0.0"


class NetworkAttachmentInfo(BaseModel):
    network: str
    ipv4: str | None = None
    aliases: list[str] = []


class ContainerInfo(BaseModel):
    id: str
    name: str | None = None
    image: str
    state: str
    labels: dict[str, str]
    created_at: str
    exit_code: int | None = None
    oom_killed: bool = Field(
        False,
        description="The kernel's OOM killer ended a process of the container (its main process, or one an exec "
        "started) at its memory limit since it last started (Docker's State.OOMKilled).",
    )
    pid: int | None = None
    ipv4: str | None = None
    ports: list[PortMapping] = []
    networks: list[NetworkAttachmentInfo] = []
    health: ContainerHealthInfo | None = None
    restarts: int | None = None
    last_error: str | None = None
    deployment: str | None = None
    service: str | None = None
    replica: int | None = None
    runtime: str | None = Field(None, description="The workload driver running it: linux or wasm.")


class ContainerExecRequest(BaseModel):
    command: ExecArgv
    replica: int | None = None


class ExecStreamRequest(BaseModel):
    """The first (text) frame of an exec WebSocket: the command, whether the client sends stdin, whether the
    command runs on a terminal of ``rows`` x ``cols``, and (for a service) which replica."""

    command: ExecArgv
    replica: int | None = None
    stdin: bool = False
    tty: bool = False
    rows: int | None = Field(None, ge=1, le=65535)
    cols: int | None = Field(None, ge=1, le=65535)


class ContainerExecResponse(BaseModel):
    exit_code: int
    stdout: str
    stderr: str
    oom_killed: bool = Field(
        False,
        description="The kernel's OOM killer ended a process of the container at its memory limit while "
        "the command ran (then exit_code is usually 137).",
    )


class ContainerStatsResponse(BaseModel):
    id: str
    cpu_usage_usec: int
    memory_bytes: int
    memory_limit: int
    memory_percent: float


_IMAGE_ID = "Image ID: the digest of the image config, as Docker's (what `zlayer image ls` shows, 12 digits of it)."
_MANIFEST_DIGEST = "Content-addressed digest (`sha256:...`) of the manifest, as the registry names it."


class ImageInfoDto(BaseModel):
    reference: str
    digest: str | None = Field(default=None, description=_MANIFEST_DIGEST)
    id: str | None = Field(default=None, description=_IMAGE_ID)
    size_bytes: int | None = None


class PullImageRequest(BaseModel):
    reference: str


class PullImageResponse(BaseModel):
    reference: str
    digest: str | None = Field(default=None, description=_MANIFEST_DIGEST)
    id: str | None = Field(default=None, description=_IMAGE_ID)
    size_bytes: int | None = None


class TriggerJobResponse(BaseModel):
    execution_id: str
    message: str


class TriggerCronResponse(TriggerJobResponse):
    pass


class JobExecutionResponse(BaseModel):
    id: str
    job_name: str
    status: str
    trigger: str
    started_at: str | None = None
    completed_at: str | None = None
    duration_ms: int | None = None
    exit_code: int | None = None
    error: str | None = None
    logs: str | None = None


class CronJobResponse(BaseModel):
    name: str
    schedule: str
    enabled: bool
    last_run: str | None = None
    next_run: str | None = None


class CronStatusResponse(BaseModel):
    name: str
    enabled: bool
    message: str
