# ruff: noqa: E501
"""pydantic v2 models of ZLayer's deployment spec (``*.zlayer.yml``): every block, field, default and enum spelling.

Field names, defaults and enum values follow ZLayer's ``crates/zlayer-types/src/spec/types.rs``. Unknown keys are
rejected (``extra="forbid"``) everywhere ZLayer rejects them; ``api``, ``platform``, ``logs``, ``port_mappings[]``,
the service-level ``overlay`` and the tagged health-check payloads ignore unknown keys as ZLayer does.

Scalars come from the loader as raw YAML text (``Plain`` for plain scalars, ``str`` for quoted ones), so string fields
keep the text as written (``PORT: 8080`` is ``"8080"``) and the typed fields below convert it with serde_yaml's rules.
Cross-field rules (version, names, ranges, dependencies, cron, tunnels, wasm) live in :mod:`zlayer.spec.rules`.
"""

from __future__ import annotations

from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, Union

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    WithJsonSchema,
    model_validator,
)

from zlayer.spec.coerce import (
    Null,
    Plain,
    _affinity,
    _env,
    _image_name,
    _init_list,
    _json_value,
    _network_mode,
    _tag_of,
    _to_bool,
    _to_duration,
    _to_float,
    _to_str,
    _to_tag_str,
    int_converter,
)
from zlayer.spec.scalars import format_duration

# --- scalar coercion with serde_yaml's rules -------------------------------------------------------------------------


def _int_type(lo: int, hi: int, what: str) -> Any:
    return Annotated[int, BeforeValidator(int_converter(lo, hi, what))]


_SCALAR_TEXT = {"type": ["string", "number", "boolean"]}  # YAML writes 8080 or true; ZLayer keeps the raw text
_DURATION_SCHEMA = {
    "type": "string",
    "pattern": "^\\s*([0-9]+\\s*[A-Za-z\u00b5]+\\s*)+$",
    "description": "humantime duration: 30s, 5m, 1h30m, 500ms",
}
Str = Annotated[str, BeforeValidator(_to_str), WithJsonSchema(_SCALAR_TEXT)]
TStr = Annotated[str, BeforeValidator(_to_tag_str)]
Bool = Annotated[bool, BeforeValidator(_to_bool)]
if TYPE_CHECKING:
    U8: TypeAlias = int
    U16: TypeAlias = int
    U32: TypeAlias = int
    U64: TypeAlias = int
    I32: TypeAlias = int
    I64: TypeAlias = int
else:
    U8 = _int_type(0, 255, "u8")
    U16 = _int_type(0, 65535, "u16")
    U32 = _int_type(0, 2**32 - 1, "u32")
    U64 = _int_type(0, 2**64 - 1, "u64")
    I32 = _int_type(-(2**31), 2**31 - 1, "i32")
    I64 = _int_type(-(2**63), 2**63 - 1, "i64")
F64 = Annotated[float, BeforeValidator(_to_float)]
Duration = Annotated[
    float,
    BeforeValidator(_to_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(_DURATION_SCHEMA),
]
"""A humantime duration held as seconds; serialised back as humantime text (``5m``)."""


def _enum(*values: str) -> Any:
    return Annotated[Literal[values], BeforeValidator(_to_str)]


def _null_actions(cls: type[BaseModel]) -> dict[str, str]:
    """Per input key: what a null (``~``/empty) value becomes — None, an empty map or an empty sequence."""
    import typing

    actions: dict[str, str] = {}
    for name, f in cls.model_fields.items():
        tp = f.annotation
        args = (
            [a for a in typing.get_args(tp) if a is not type(None)]
            if typing.get_origin(tp) in (Union, UnionType)
            else [tp]
        )
        optional = typing.get_origin(tp) in (Union, UnionType) and type(None) in typing.get_args(tp)
        base = args[0] if len(args) == 1 else None
        while typing.get_origin(base) is Annotated:
            base = typing.get_args(base)[0]
        if optional:
            act = "none"
        elif typing.get_origin(base) is list:
            act = "list"
        elif (
            typing.get_origin(base) is dict
            or (isinstance(base, type) and issubclass(base, BaseModel))
            or len(args) > 1
            or typing.get_origin(base) in (Union, UnionType)
        ):
            act = "dict"
        else:
            continue
        keys = {name, f.alias or name}
        va = f.validation_alias
        keys.update(c for c in getattr(va, "choices", []) if isinstance(c, str))
        for k in keys:
            actions[k] = act
    return actions


_EMPTY: dict[str, Any] = {"none": None}


class _NullAware(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        if isinstance(data, Null):
            return {}
        if isinstance(data, dict) and any(isinstance(v, Null) for v in data.values()):
            acts = cls.__dict__.get("_null_acts")
            if acts is None:
                acts = _null_actions(cls)
                type.__setattr__(cls, "_null_acts", acts)
            out = dict(data)
            for k, v in data.items():
                if isinstance(v, Null) and k in acts:
                    a = acts[k]
                    out[k] = None if a == "none" else [] if a == "list" else {}
            return out
        return data


class _Strict(_NullAware):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True, frozen=True)


class _Lenient(_NullAware):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, serialize_by_alias=True, frozen=True)


# --- image / command ---------------------------------------------------------------------------------------------------


if TYPE_CHECKING:
    PullPolicy: TypeAlias = str
else:
    PullPolicy = _enum("always", "newer", "if_not_present", "never")
if TYPE_CHECKING:
    SourcePolicy: TypeAlias = str
else:
    SourcePolicy = _enum("local_first", "s3_first", "remote_only", "local_only")


class ImageSpec(_Strict):
    name: Annotated[str, BeforeValidator(_image_name), WithJsonSchema({"type": "string", "minLength": 1})]
    pull_policy: PullPolicy = "if_not_present"
    source_policy: SourcePolicy | None = None


class CommandSpec(_Strict):
    entrypoint: list[Str] | None = None
    args: list[Str] | None = None
    workdir: Str | None = None


# --- resources ---------------------------------------------------------------------------------------------------------


class DistributedConfig(_Strict):
    backend: Str = "nccl"
    master_port: U16 = 29500


class GpuSpec(_Strict):
    count: U32 = 1
    vendor: Str = "nvidia"
    mode: Str | None = None
    model: Str | None = None
    scheduling: _enum("best-effort", "gang", "spread") | None = None  # type: ignore[valid-type]
    distributed: DistributedConfig | None = None
    sharing: _enum("exclusive", "mps", "time-slice") | None = None  # type: ignore[valid-type]
    mps_pipe_dir: Str | None = None
    mps_log_dir: Str | None = None
    time_slice_index: U32 | None = None
    time_slicing_config_path: Str | None = None


class ResourcesSpec(_Strict):
    cpu: F64 | None = None
    memory: Str | None = None
    gpu: GpuSpec | None = None
    pids_limit: I64 | None = None
    cpuset: Str | None = None
    cpu_shares: U32 | None = None
    memory_swap: Str | None = None
    memory_reservation: Str | None = None
    memory_swappiness: U8 | None = None
    oom_score_adj: I32 | None = None
    oom_kill_disable: Bool | None = None
    blkio_weight: U16 | None = None

    def memory_bytes(self) -> int | None:
        """``memory`` in bytes (None when unset)."""
        from zlayer.spec.scalars import parse_memory

        return None if self.memory is None else parse_memory(self.memory)


# --- networking --------------------------------------------------------------------------------------------------------


class OverlaySettings(_Strict):
    enabled: Bool = True
    encrypted: Bool = True
    isolated: Bool = False


def _all_off() -> OverlaySettings:
    return OverlaySettings(enabled=False, encrypted=False, isolated=False)


class OverlayConfig(_Strict):
    # A sub-block left out of a present `overlays:` block takes the all-false derived default (ZLayer's trap).
    service: OverlaySettings = Field(default_factory=_all_off)
    global_: OverlaySettings = Field(default_factory=_all_off, alias="global")


def _default_overlays() -> OverlayConfig:
    return OverlayConfig(  # type: ignore[call-arg]
        service=OverlaySettings(enabled=True, encrypted=True, isolated=True),
        global_=OverlaySettings(enabled=True, encrypted=True, isolated=False),
    )


class JoinPolicy(_Strict):
    mode: _enum("open", "token", "closed") = "token"  # type: ignore[valid-type]
    scope: _enum("service", "global") = "service"  # type: ignore[valid-type]


class ServiceNetworkSpec(_Strict):
    overlays: OverlayConfig = Field(default_factory=_default_overlays)
    join: JoinPolicy = Field(default_factory=JoinPolicy)


NetworkMode = Annotated[
    str,
    BeforeValidator(_network_mode),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": "^(default|host|none|bridge|bridge:.*|container:.+)$"},
                {
                    "type": "object",
                    "properties": {
                        "bridge": {"type": ["object", "null"], "properties": {"name": {"type": "string"}}},
                        "container": {
                            "type": "object",
                            "properties": {"id": {"type": "string"}},
                            "required": ["id"],
                        },
                    },
                    "minProperties": 1,
                    "maxProperties": 1,
                    "additionalProperties": False,
                },
            ]
        }
    ),
]


# --- endpoints -----------------------------------------------------------------------------------------------------------

if TYPE_CHECKING:
    Protocol: TypeAlias = str
else:
    Protocol = _enum("http", "https", "tcp", "udp", "websocket")
if TYPE_CHECKING:
    ExposeType: TypeAlias = str
else:
    ExposeType = _enum("public", "internal")


class TcpConnectCheck(_Lenient):
    type: Literal["tcp_connect"]


class UdpProbeCheck(_Lenient):
    type: Literal["udp_probe"]
    request: TStr
    expect: TStr | None = None


StreamHealthCheck = Annotated[
    Annotated[TcpConnectCheck, Tag("tcp_connect")] | Annotated[UdpProbeCheck, Tag("udp_probe")],
    Discriminator(_tag_of("type")),
]


class StreamEndpointConfig(_Strict):
    tls: Bool = False
    proxy_protocol: Bool = False
    session_timeout: Str | None = None
    health_check: StreamHealthCheck | None = None


class TunnelAccessConfig(_Strict):
    enabled: Bool = False
    max_ttl: Str | None = None
    audit: Bool = False


class EndpointTunnelConfig(_Strict):
    enabled: Bool = False
    from_: Str | None = Field(default=None, alias="from")
    to: Str | None = None
    remote_port: U16 = 0
    expose: ExposeType | None = None
    access: TunnelAccessConfig | None = None


class EndpointSpec(_Strict):
    name: Str
    protocol: Protocol
    port: U16
    target_port: U16 | None = None
    path: Str | None = None
    host: Str | None = None
    expose: ExposeType = "internal"
    stream: StreamEndpointConfig | None = None
    target_role: Str | None = None
    tunnel: EndpointTunnelConfig | None = None

    @property
    def container_port(self) -> int:
        """The port inside the container (``target_port``, else ``port``)."""
        return self.target_port if self.target_port is not None else self.port


# --- scale -----------------------------------------------------------------------------------------------------------------


class ScaleTargets(_Strict):
    cpu: U8 | None = None
    memory: U8 | None = None
    rps: U32 | None = None


class AdaptiveScale(_Strict):
    mode: Literal["adaptive"]
    min: U32
    max: U32
    cooldown: Duration | None = None
    targets: ScaleTargets = Field(default_factory=ScaleTargets)


class FixedScale(_Strict):
    mode: Literal["fixed"]
    replicas: U32


class ManualScale(_Strict):
    mode: Literal["manual"]


ScaleSpec = Annotated[
    Annotated[AdaptiveScale, Tag("adaptive")]
    | Annotated[FixedScale, Tag("fixed")]
    | Annotated[ManualScale, Tag("manual")],
    Discriminator(_tag_of("mode")),
]


def _default_scale() -> AdaptiveScale:
    return AdaptiveScale(mode="adaptive", min=1, max=10, cooldown=30.0)


# --- health ----------------------------------------------------------------------------------------------------------------


class TcpCheck(_Lenient):
    type: Literal["tcp"]
    port: U16


class HttpCheck(_Lenient):
    type: Literal["http"]
    url: TStr
    expect_status: U16 = 200


class CommandCheck(_Lenient):
    type: Literal["command"]
    command: TStr


HealthCheck = Annotated[
    Annotated[TcpCheck, Tag("tcp")] | Annotated[HttpCheck, Tag("http")] | Annotated[CommandCheck, Tag("command")],
    Discriminator(_tag_of("type")),
]


HEALTH_START_GRACE = 5.0
HEALTH_INTERVAL = 10.0
HEALTH_TIMEOUT = 5.0


class HealthSpec(_Strict):
    start_grace: Duration | None = None
    interval: Duration | None = None
    timeout: Duration | None = None
    retries: U32 = 3
    check: HealthCheck

    # ZLayer's runtime defaults for what the block leaves out (agent-runtime.md §4).
    @property
    def start_grace_seconds(self) -> float:
        return self.start_grace if self.start_grace is not None else HEALTH_START_GRACE

    @property
    def interval_seconds(self) -> float:
        return self.interval if self.interval is not None else HEALTH_INTERVAL

    @property
    def timeout_seconds(self) -> float:
        return self.timeout if self.timeout is not None else HEALTH_TIMEOUT


def _default_health() -> HealthSpec:
    return HealthSpec(start_grace=5.0, check=TcpCheck(type="tcp", port=0))


# --- depends / init / errors -------------------------------------------------------------------------------------------


class DependsSpec(_Strict):
    service: Str
    condition: _enum("started", "healthy", "ready") = "healthy"  # type: ignore[valid-type]
    timeout: Duration = 300.0
    on_timeout: _enum("fail", "warn", "continue") = "fail"  # type: ignore[valid-type]


INIT_STEP_TIMEOUT = 300.0


class InitStep(_Strict):
    id: Str
    uses: Str
    with_: Annotated[dict[str, Any], BeforeValidator(lambda v: _json_value(v) if v is not None else {})] = Field(
        default_factory=dict, alias="with"
    )
    retry: U32 | None = None
    timeout: Duration | None = None
    on_failure: _enum("fail", "warn", "continue") = "fail"  # type: ignore[valid-type]

    @property
    def timeout_seconds(self) -> float:
        """How long the whole step may take: ``timeout``, else ZLayer's 300 s."""
        return self.timeout if self.timeout is not None else INIT_STEP_TIMEOUT


class InitSpec(_Strict):
    steps: list[InitStep] = Field(default_factory=list)


class InitFailurePolicy(_Strict):
    action: _enum("fail", "restart", "backoff") = "fail"  # type: ignore[valid-type]


class PanicPolicy(_Strict):
    action: _enum("restart", "shutdown", "isolate") = "restart"  # type: ignore[valid-type]


class ErrorsSpec(_Strict):
    on_init_failure: InitFailurePolicy = Field(default_factory=InitFailurePolicy)
    on_panic: PanicPolicy = Field(default_factory=PanicPolicy)


class LifecycleSpec(_Strict):
    delete_on_exit: Bool = False


# --- devices / storage / ports -------------------------------------------------------------------------------------------


class DeviceSpec(_Strict):
    path: Str
    read: Bool = True
    write: Bool = True
    mknod: Bool = False


if TYPE_CHECKING:
    StorageTier: TypeAlias = str
else:
    StorageTier = _enum("local", "cached", "network")


class BindStorage(_Strict):
    type: Literal["bind"]
    source: TStr
    target: TStr
    readonly: Bool = False


class NamedStorage(_Strict):
    type: Literal["named"]
    name: TStr
    target: TStr
    readonly: Bool = False
    tier: StorageTier = "local"
    size: TStr | None = None


class AnonymousStorage(_Strict):
    type: Literal["anonymous"]
    target: TStr
    tier: StorageTier = "local"


class TmpfsStorage(_Strict):
    type: Literal["tmpfs"]
    target: TStr
    size: TStr | None = None
    mode: U32 | None = None


class S3Storage(_Strict):
    type: Literal["s3"]
    bucket: TStr
    prefix: TStr | None = None
    target: TStr
    readonly: Bool = False
    endpoint: TStr | None = None
    credentials: TStr | None = None


StorageSpec = Annotated[
    Annotated[BindStorage, Tag("bind")]
    | Annotated[NamedStorage, Tag("named")]
    | Annotated[AnonymousStorage, Tag("anonymous")]
    | Annotated[TmpfsStorage, Tag("tmpfs")]
    | Annotated[S3Storage, Tag("s3")],
    Discriminator(_tag_of("type")),
]


class PortMapping(_Lenient):
    host_port: U16 | None = None
    container_port: U16
    protocol: _enum("tcp", "udp") = "tcp"  # type: ignore[valid-type]
    host_ip: Str = "0.0.0.0"


# --- placement ---------------------------------------------------------------------------------------------------------------


class NodeSelector(_Strict):
    labels: dict[Str, Str] = Field(default_factory=dict)
    prefer_labels: dict[Str, Str] = Field(default_factory=dict)


class AffinityPin(_Strict):
    pin: Str


GroupAffinity = Annotated[Literal["spread", "pack"] | AffinityPin, BeforeValidator(_affinity)]


class TargetPlatform(_Lenient):
    os: _enum("linux", "windows", "macos")  # type: ignore[valid-type]
    arch: _enum("amd64", "arm64")  # type: ignore[valid-type]
    os_version: Str | None = Field(default=None, alias="osVersion")


class ReplicaGroup(_Strict):
    role: Str
    count: U32
    image: ImageSpec | None = None
    env: dict[Str, Str] = Field(default_factory=dict)
    command: CommandSpec | None = None
    resources: ResourcesSpec | None = None
    affinity: GroupAffinity = "spread"


# --- wasm --------------------------------------------------------------------------------------------------------------------


class WasmCapabilities(_Strict):
    config: Bool = True
    keyvalue: Bool = True
    logging: Bool = True
    secrets: Bool = False
    metrics: Bool = True
    http_client: Bool = False
    cli: Bool = False
    filesystem: Bool = False
    sockets: Bool = False


class WasmPreopen(_Strict):
    source: Str
    target: Str
    readonly: Bool = False


class WasmConfig(_Strict):
    min_instances: U32 = 0
    max_instances: U32 = 10
    idle_timeout: Duration = 300.0
    request_timeout: Duration = 30.0
    max_memory: Str | None = None
    max_fuel: U64 = 0
    epoch_interval: Duration | None = None
    capabilities: WasmCapabilities | None = None
    allow_http_outgoing: Bool = True
    allowed_hosts: list[Str] = Field(default_factory=list)
    allow_tcp: Bool = False
    allow_udp: Bool = False
    preopens: list[WasmPreopen] = Field(default_factory=list)
    kv_enabled: Bool = True
    kv_namespace: Str | None = None
    kv_max_value_size: U64 = 1_048_576
    secrets: list[Str] = Field(default_factory=list)
    precompile: Bool = True


# --- misc service blocks -----------------------------------------------------------------------------------------------------


class LogsConfig(_Lenient):
    destination: Str = "disk"
    max_size_bytes: U64 = 104_857_600
    retention_secs: U64 = 604_800


class RestartPolicy(_Strict):
    kind: _enum("no", "always", "unless_stopped", "on_failure")  # type: ignore[valid-type]
    max_attempts: U32 | None = None
    delay: Str | None = None


class UlimitSpec(_Strict):
    soft: I64 | None = None
    hard: I64 | None = None

    @model_validator(mode="after")
    def _fill(self) -> UlimitSpec:
        # Frozen: the filled-in values are written once, here, as the model is built.
        soft, hard = self.soft, self.hard
        if soft is None and hard is None:
            soft = hard = 0
        object.__setattr__(self, "soft", soft if soft is not None else hard)
        object.__setattr__(self, "hard", hard if hard is not None else soft)
        return self


class ServiceOverlay(_Lenient):
    mode: _enum("auto", "shared", "dedicated") = "auto"  # type: ignore[valid-type]
    parent: Str | None = None


if TYPE_CHECKING:
    ResourceType: TypeAlias = str
else:
    ResourceType = _enum("service", "job", "cron")
if TYPE_CHECKING:
    ServiceType: TypeAlias = str
else:
    ServiceType = _enum(
        "standard",
        "wasm_http",
        "wasm_plugin",
        "wasm_transformer",
        "wasm_authenticator",
        "wasm_rate_limiter",
        "wasm_middleware",
        "wasm_router",
        "job",
    )


class ServiceSpec(_Strict):
    rtype: ResourceType = "service"
    schedule: Str | None = None
    image: ImageSpec
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    env: Annotated[dict[Str, Str], BeforeValidator(_env)] = Field(default_factory=dict)
    command: CommandSpec = Field(default_factory=CommandSpec)
    network: ServiceNetworkSpec = Field(default_factory=ServiceNetworkSpec)
    endpoints: list[EndpointSpec] = Field(default_factory=list)
    scale: ScaleSpec = Field(default_factory=_default_scale)
    replica_groups: list[ReplicaGroup] | None = None
    depends: list[DependsSpec] = Field(default_factory=list)
    health: HealthSpec = Field(default_factory=_default_health)
    init: Annotated[InitSpec, BeforeValidator(_init_list)] = Field(default_factory=InitSpec)
    errors: ErrorsSpec = Field(default_factory=ErrorsSpec)
    lifecycle: LifecycleSpec = Field(default_factory=LifecycleSpec)
    isolation: _enum("auto", "process", "hyperv") | None = None  # type: ignore[valid-type]
    devices: list[DeviceSpec] = Field(default_factory=list)
    storage: list[StorageSpec] = Field(default_factory=list)
    port_mappings: list[PortMapping] = Field(default_factory=list)
    capabilities: list[Str] = Field(
        default_factory=list,
        validation_alias=AliasChoices("capabilities", "cap_add"),
        serialization_alias="capabilities",
    )
    cap_drop: list[Str] = Field(default_factory=list)
    privileged: Bool = False
    node_mode: _enum("shared", "dedicated", "exclusive") = "shared"  # type: ignore[valid-type]
    node_selector: NodeSelector | None = None
    affinity: GroupAffinity | None = None
    platform: TargetPlatform | None = None
    service_type: ServiceType = "standard"
    wasm: WasmConfig | None = Field(
        default=None, validation_alias=AliasChoices("wasm", "wasm_http"), serialization_alias="wasm"
    )
    logs: LogsConfig | None = None
    host_network: Bool | None = Field(default=None, exclude=True)
    hostname: Str | None = None
    dns: list[Str] = Field(default_factory=list)
    extra_hosts: list[Str] = Field(default_factory=list)
    restart_policy: RestartPolicy | None = None
    labels: dict[Str, Str] = Field(default_factory=dict)
    user: Str | None = None
    stop_signal: Str | None = None
    stop_grace_period: Duration | None = None
    sysctls: dict[Str, Str] = Field(default_factory=dict)
    ulimits: dict[Str, UlimitSpec] = Field(default_factory=dict)
    security_opt: list[Str] = Field(default_factory=list)
    pid_mode: Str | None = None
    ipc_mode: Str | None = None
    network_mode: NetworkMode = "default"
    extra_groups: list[Str] = Field(default_factory=list)
    read_only_root_fs: Bool = False
    init_container: Bool | None = None
    tty: Bool = False
    stdin_open: Bool = False
    userns_mode: Str | None = None
    cgroup_parent: Str | None = None
    expose: list[Str] = Field(default_factory=list)
    overlay: ServiceOverlay | None = None
    localhost_reachability: _enum("auto", "always", "never") = "auto"  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _legacy_host_network(self) -> ServiceSpec:
        # Legacy `host_network: true` becomes network_mode host unless another mode was chosen.
        if self.host_network and self.network_mode == "default":
            object.__setattr__(self, "network_mode", "host")
        object.__setattr__(self, "host_network", None)
        return self

    @property
    def uses_host_network(self) -> bool:
        return self.network_mode == "host"

    def replicas_hint(self) -> tuple[str, int, int]:
        """(mode, min, max) of the scale block: fixed → (fixed, n, n); manual → (manual, 0, 0)."""
        s = self.scale
        if isinstance(s, FixedScale):
            return ("fixed", s.replicas, s.replicas)
        if isinstance(s, AdaptiveScale):
            return ("adaptive", s.min, s.max)
        return ("manual", 0, 0)

    # --- what the node derives from a service (ZLayer's runtime rules, agent-runtime.md §4) ---

    @property
    def scale_mode(self) -> str:
        return self.scale.mode

    @property
    def initial_replicas(self) -> int:
        """Replicas a first deploy starts: fixed → n, adaptive → its min, manual → 0; jobs and crons have none."""
        return self.replicas_hint()[1] if self.rtype == "service" else 0

    @property
    def backend_port(self) -> int:
        """ZLayer's rule: the first http/https/websocket endpoint's container port, else 8080."""
        for ep in self.endpoints:
            if ep.protocol in ("http", "https", "websocket"):
                return ep.container_port
        return 8080

    @property
    def restart_kind(self) -> str:
        """``restart_policy.kind``, or "" when the spec has none (``errors.on_panic`` decides then)."""
        return self.restart_policy.kind if self.restart_policy is not None else ""

    @property
    def driver(self) -> str:
        """The workload driver that runs this service: ``wasm`` for the WASM service types, else ``linux``."""
        return "wasm" if self.service_type.startswith("wasm_") else "linux"

    @property
    def spec_hash(self) -> str:
        """Changes whenever anything a running replica was built from changes. The replica count is not part of
        it: scaling adds or removes replicas, it does not replace the running ones."""
        import hashlib
        import json

        built_from = self.model_dump(mode="json", exclude_none=True)
        built_from.pop("scale", None)
        return hashlib.sha256(json.dumps(built_from, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- top level ---------------------------------------------------------------------------------------------------------------


class ExternalSpec(_Strict):
    backends: list[Str]
    endpoints: list[EndpointSpec] = Field(default_factory=list)
    health: HealthSpec | None = None


class TunnelDefinition(_Strict):
    from_: Str = Field(alias="from")
    to: Str
    local_port: U16
    remote_port: U16
    protocol: _enum("tcp", "udp") = "tcp"  # type: ignore[valid-type]
    expose: ExposeType = "internal"


class ApiSpec(_Lenient):
    enabled: Bool = True
    bind: Str = "0.0.0.0:3669"
    jwt_secret: Str | None = None
    swagger: Bool = True


class DeploymentSpec(_Strict):
    version: Str
    deployment: Str
    services: dict[Str, ServiceSpec] = Field(default_factory=dict)
    externals: dict[Str, ExternalSpec] = Field(default_factory=dict)
    tunnels: dict[Str, TunnelDefinition] = Field(default_factory=dict)
    api: ApiSpec = Field(default_factory=ApiSpec)

    def service_order(self) -> list[str]:
        """Services with their dependencies first (ties by name). Unknown services, self-dependencies and cycles
        are spec errors naming the path (``a -> b -> a``); ZLayer finds those only when it deploys, and so do we."""
        from zlayer.errors import SpecError
        from zlayer.spec.problem import Problem

        problems = []
        for name, s in self.services.items():
            for d in s.depends:
                if d.service == name:
                    problems.append(Problem(path=f"services.{name}.depends", message="service depends on itself"))
                elif d.service not in self.services:
                    problems.append(Problem(path=f"services.{name}.depends", message=f"unknown service {d.service!r}"))
        if problems:
            raise SpecError("invalid dependencies", problems=problems)
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = [*path[path.index(name) :], name]
                raise SpecError("dependency cycle", problems=[Problem(message=" -> ".join(cycle))])
            state[name] = 1
            for d in sorted(self.services[name].depends, key=lambda d: d.service):
                visit(d.service, [*path, name])
            state[name] = 2
            order.append(name)

        for name in sorted(self.services):
            visit(name, [])
        return order


__all__ = [
    "AdaptiveScale",
    "AffinityPin",
    "AnonymousStorage",
    "ApiSpec",
    "BindStorage",
    "CommandCheck",
    "CommandSpec",
    "DependsSpec",
    "DeploymentSpec",
    "DeviceSpec",
    "DistributedConfig",
    "EndpointSpec",
    "EndpointTunnelConfig",
    "ErrorsSpec",
    "ExternalSpec",
    "FixedScale",
    "GpuSpec",
    "HealthCheck",
    "HealthSpec",
    "HttpCheck",
    "ImageSpec",
    "InitFailurePolicy",
    "InitSpec",
    "InitStep",
    "JoinPolicy",
    "LifecycleSpec",
    "LogsConfig",
    "ManualScale",
    "NamedStorage",
    "NodeSelector",
    "OverlayConfig",
    "OverlaySettings",
    "PanicPolicy",
    "Plain",
    "PortMapping",
    "ReplicaGroup",
    "ResourcesSpec",
    "RestartPolicy",
    "S3Storage",
    "ScaleSpec",
    "ScaleTargets",
    "ServiceNetworkSpec",
    "ServiceOverlay",
    "ServiceSpec",
    "StorageSpec",
    "StreamEndpointConfig",
    "TargetPlatform",
    "TcpCheck",
    "TcpConnectCheck",
    "TmpfsStorage",
    "TunnelAccessConfig",
    "TunnelDefinition",
    "UdpProbeCheck",
    "UlimitSpec",
    "WasmCapabilities",
    "WasmConfig",
    "WasmPreopen",
]
