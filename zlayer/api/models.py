"""Request and response bodies, named and shaped as in ZLayer's OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

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


class AutoscaleInfo(BaseModel):
    """The autoscaler's view of an adaptive service (zlayer's addition)."""

    reason: str
    metrics: dict[str, float]  # moving averages: cpu/memory percent, rps in requests per second (all replicas)
    targets: dict[str, float]
    cooldown_seconds: float
    last_scale_at: float | None = None  # Unix time of the last scale
    last_scale: str | None = None  # "1 -> 2 (cpu 83.0% >= target 50.0%)"


class ServiceDetails(ServiceSummary):
    metrics: ServiceMetrics
    status_message: str | None = None
    scale_mode: str | None = None  # zlayer's additions: adaptive | fixed | manual, its bounds, the autoscaler
    min_replicas: int | None = None
    max_replicas: int | None = None
    autoscale: AutoscaleInfo | None = None


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
    node: str | None = Field(None, description="The cluster node that runs it (none: a node alone).")


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
    calls: int | None = Field(
        default=None, description="A WASM HTTP replica's handle calls so far (absent for other workloads)."
    )
    call_errors: int | None = Field(default=None, description="Of those calls, the ones that trapped or failed (500).")
    instances: int | None = Field(default=None, description="A WASM HTTP replica's pooled instances now.")


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


# --------------------------------------------------------------------------------------- standalone containers


class VolumeMount(BaseModel):
    type: Literal["bind", "volume", "tmpfs"] = "volume"
    source: str | None = None
    target: str
    readonly: bool = False


class ContainerResourceLimits(BaseModel):
    cpu: float | None = None
    memory: str | None = None


class ContainerRestartPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["no", "always", "unless_stopped", "on_failure"]
    max_attempts: int | None = Field(None, ge=0, le=U32_MAX)
    delay: str | None = None


class UlimitValue(BaseModel):
    soft: int | None = None
    hard: int | None = None


class CreateContainerRequest(BaseModel):
    """ZLayer's request to create and start a standalone container. Fields of ZLayer's that this node does not honour
    (a health check, a cluster placement, registry credentials, extra networks, a lifecycle) are refused when set."""

    model_config = ConfigDict(extra="forbid")
    image: str = Field(min_length=1)
    name: str | None = Field(None, pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
    command: list[str] | None = None
    env: dict[str, str] | None = None
    labels: dict[str, str] | None = None
    work_dir: str | None = None
    user: str | None = None
    hostname: str | None = None
    pull_policy: Literal["always", "if_not_present", "never", "newer"] | None = None
    ports: list[PortMapping] = []
    volumes: list[VolumeMount] = []
    resources: ContainerResourceLimits | None = None
    restart_policy: ContainerRestartPolicy | None = None
    network_mode: str | None = None
    privileged: bool | None = None
    cap_add: list[str] = []
    cap_drop: list[str] = []
    devices: list[dict[str, Any]] = []
    dns: list[str] = []
    extra_hosts: list[str] = []
    extra_groups: list[str] = []
    security_opt: list[str] = []
    sysctls: dict[str, str] | None = None
    ulimits: dict[str, UlimitValue] | None = None
    pid_mode: str | None = None
    ipc_mode: str | None = None
    read_only_root_fs: bool = False
    init_container: bool | None = None
    stop_signal: str | None = None
    stop_grace_period: str | None = None
    pids_limit: int | None = None
    cpu_shares: int | None = None
    cpuset: str | None = None
    memory_swap: str | None = None
    memory_reservation: str | None = None
    memory_swappiness: int | None = None
    oom_score_adj: int | None = None
    oom_kill_disable: bool | None = None
    blkio_weight: int | None = None
    health_check: Any = None
    node_selector: Any = None
    platform: Any = None
    registry_auth: Any = None
    registry_credential_id: str | None = None
    networks: list[Any] = []
    lifecycle: Any = None


class KillContainerRequest(BaseModel):
    signal: str | None = None


class StopContainerRequest(BaseModel):
    timeout: int | None = Field(None, ge=0, le=U32_MAX)


class RestartContainerRequest(StopContainerRequest):
    pass


class ContainerTopResponse(BaseModel):
    Titles: list[str]
    Processes: list[list[str]]


class ContainerChange(BaseModel):
    Path: str
    Kind: int = Field(description="0 modified, 1 added, 2 deleted")


class ContainerWaitResponse(BaseModel):
    id: str
    exit_code: int
    reason: str | None = None
    signal: str | None = None
    finished_at: str | None = None


class ContainerWaitDockerError(BaseModel):
    Message: str


class ContainerWaitDockerResponse(BaseModel):
    StatusCode: int
    Error: ContainerWaitDockerError | None = None


class ContainerUpdateRestartPolicy(BaseModel):
    Name: Literal["", "no", "always", "unless-stopped", "on-failure"] = ""
    MaximumRetryCount: int | None = Field(None, ge=0, le=U32_MAX)


class ContainerUpdateRequest(BaseModel):
    RestartPolicy: ContainerUpdateRestartPolicy | None = None
    BlkioWeight: int | None = None
    CpuPeriod: int | None = None
    CpuQuota: int | None = None
    CpuRealtimePeriod: int | None = None
    CpuRealtimeRuntime: int | None = None
    CpuShares: int | None = None
    CpusetCpus: str | None = None
    CpusetMems: str | None = None
    KernelMemory: int | None = None
    Memory: int | None = None
    MemoryReservation: int | None = None
    MemorySwap: int | None = None
    PidsLimit: int | None = None


class ContainerUpdateResponse(BaseModel):
    Warnings: list[str] = []


class ContainerPruneResponse(BaseModel):
    ContainersDeleted: list[str]
    SpaceReclaimed: int


class TagImageRequest(BaseModel):
    source: str = Field(min_length=1)
    target: str = Field(min_length=1)


class PruneResultDto(BaseModel):
    deleted: list[str]
    space_reclaimed: int
