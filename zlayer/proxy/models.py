"""What the proxy builds from a service's endpoints, as ZLayer does (spec-and-cli.md §4.5–4.6).

http, https and websocket endpoints become L7 routes, each with its own backend group keyed ``service#endpoint``;
tcp and udp endpoints become L4 stream listeners. ``expose: public`` binds 0.0.0.0, ``internal`` binds the node's
internal (overlay) address, or 127.0.0.1 when there is none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zlayer.errors import SpecError

L7_PROTOCOLS = ("http", "https", "websocket")
L4_PROTOCOLS = ("tcp", "udp")
DEFAULT_SESSION_TIMEOUT = 60.0
# ZLayer's load-balancer strategies (LbStrategy, named as its API shows them). Its spec has no field for them, so a
# service picks one with a label: STRATEGY_LABEL for all its HTTP endpoints, STRATEGY_LABEL + ".<endpoint>" for one.
STRATEGIES = ("round_robin", "least_connections")
STRATEGY_LABEL = "zlayer.proxy.strategy"


@dataclass(frozen=True)
class HealthCheckSpec:
    """An active backend check: ``tcp_connect``, ``udp_probe`` (request, expect regex), ``http`` (path, status) or
    ``none`` (UDP streams without a health_check: backends count as healthy)."""

    kind: str = "tcp_connect"
    request: str = ""
    expect: str | None = None
    path: str = "/"
    expect_status: int | None = None  # None: any status below 500 counts as healthy


@dataclass(frozen=True)
class RouteSpec:
    """One L7 route: where it listens and which requests (host, path prefix) it takes."""

    deployment: str
    service: str
    endpoint: str
    protocol: str
    port: int
    target_port: int
    bind: str
    expose: str
    host: str | None = None
    path_prefix: str = "/"
    strip_prefix: bool = False
    health: HealthCheckSpec = field(default_factory=HealthCheckSpec)
    strategy: str = "round_robin"  # one of STRATEGIES

    @property
    def key(self) -> str:
        """The backend group name, ``service#endpoint`` as in ZLayer."""
        return f"{self.service}#{self.endpoint}"


@dataclass(frozen=True)
class StreamSpec:
    """One L4 listener (tcp or udp) of one endpoint."""

    deployment: str
    service: str
    endpoint: str
    protocol: str
    port: int
    target_port: int
    bind: str
    expose: str
    tls: bool = False
    proxy_protocol: int = 0  # 0 none, 1 text v1, 2 binary v2
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    host: str | None = None
    health: HealthCheckSpec = field(default_factory=HealthCheckSpec)

    @property
    def key(self) -> str:
        return f"{self.service}#{self.endpoint}"


def _text(value: Any) -> str:
    return str(getattr(value, "value", value)).lower()


def _raw_spec(spec: Any) -> Mapping[str, Any]:
    """Accepts the spec's JSON form, a pydantic model, or the agent's ServiceView."""
    if isinstance(spec, Mapping):
        return spec
    raw = getattr(spec, "raw", None)
    if isinstance(raw, Mapping):
        return raw
    dump = getattr(spec, "model_dump", None)
    if callable(dump):
        return dict(dump(mode="json"))
    raise SpecError(f"cannot read a service spec of type {type(spec).__name__}")


def _duration(value: Any, where: str) -> float:
    from zlayer.spec.scalars import parse_duration

    if value is None or value == "":
        return DEFAULT_SESSION_TIMEOUT
    try:
        seconds = float(value) if isinstance(value, int | float) else parse_duration(str(value))
    except ValueError as exc:
        raise SpecError(f"invalid duration {value!r}: {exc}", where=where) from None
    if seconds <= 0:
        raise SpecError(f"session_timeout must be positive, got {value!r}", where=where)
    return seconds


def _proxy_protocol(value: Any, where: str) -> int:
    if value in (None, False, 0, "false"):
        return 0
    if value in (True, 1, "v1", "1", "true"):
        return 1
    if value in (2, "v2", "2"):
        return 2
    raise SpecError(f"proxy_protocol must be true/false, v1 or v2, got {value!r}", where=where)


def _stream_health(raw: Any, where: str, protocol: str) -> HealthCheckSpec:
    if not raw:
        # A UDP backend cannot be probed without knowing what it answers: no active check unless one is given.
        return HealthCheckSpec(kind="none") if protocol == "udp" else HealthCheckSpec()
    kind = _text(raw.get("type", ""))
    if kind == "tcp_connect":
        return HealthCheckSpec()
    if kind == "udp_probe":
        if not raw.get("request"):
            raise SpecError("udp_probe needs a request", where=f"{where}.request")
        expect = raw.get("expect")
        if expect is not None:
            import re

            try:
                re.compile(expect)
            except re.error as exc:
                raise SpecError(f"expect is not a valid regex: {exc}", where=f"{where}.expect") from None
        return HealthCheckSpec(kind="udp_probe", request=str(raw["request"]), expect=expect)
    raise SpecError(f"unknown stream health check type {kind!r} (tcp_connect, udp_probe)", where=f"{where}.type")


def _http_health(service: Mapping[str, Any]) -> HealthCheckSpec:
    check = (service.get("health") or {}).get("check") or {}
    if _text(check.get("type", "")) == "http" and check.get("url"):
        from urllib.parse import urlsplit

        parts = urlsplit(str(check["url"]))
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return HealthCheckSpec(kind="http", path=path, expect_status=int(check.get("expect_status") or 200))
    return HealthCheckSpec(kind="http")


def _strategy(raw: Mapping[str, Any], service: str, endpoint: str) -> str:
    """The balancing strategy the service's labels choose for one endpoint (round_robin when none does)."""
    labels = raw.get("labels") or {}
    if not isinstance(labels, Mapping):
        return "round_robin"
    for key in (f"{STRATEGY_LABEL}.{endpoint}", STRATEGY_LABEL):
        if key in labels:
            value = str(labels[key]).strip().lower().replace("-", "_")
            if value not in STRATEGIES:
                raise SpecError(
                    f"load-balancing strategy must be one of {', '.join(STRATEGIES)}, got {labels[key]!r}",
                    where=f"services.{service}.labels.{key}",
                )
            return value
    return "round_robin"


def build(
    deployment: str, service: str, spec: Any, internal_address: str | None = None
) -> tuple[list[RouteSpec], list[StreamSpec]]:
    """The L7 routes and L4 streams of one service. Raises SpecError with the field path of a bad endpoint."""
    raw = _raw_spec(spec)
    routes: list[RouteSpec] = []
    streams: list[StreamSpec] = []
    seen: set[str] = set()
    for i, ep in enumerate(raw.get("endpoints") or []):
        where = f"services.{service}.endpoints[{i}]"
        name = str(ep.get("name") or "")
        if not name:
            raise SpecError("endpoint needs a name", where=f"{where}.name")
        if name in seen:
            raise SpecError(f"duplicate endpoint name {name!r}", where=f"{where}.name")
        seen.add(name)
        protocol = _text(ep.get("protocol", ""))
        try:
            port = int(ep.get("port") or 0)
            target = int(ep.get("target_port") or port)
        except (TypeError, ValueError):
            raise SpecError("port and target_port must be integers", where=f"{where}.port") from None
        if not 1 <= port <= 65535:
            raise SpecError(f"port must be 1-65535, got {port}", where=f"{where}.port")
        if not 1 <= target <= 65535:
            raise SpecError(f"target_port must be 1-65535, got {target}", where=f"{where}.target_port")
        expose = _text(ep.get("expose") or "internal")
        if expose not in ("public", "internal"):
            raise SpecError(f"expose must be public or internal, got {expose!r}", where=f"{where}.expose")
        bind = "0.0.0.0" if expose == "public" else (internal_address or "127.0.0.1")
        if protocol in L7_PROTOCOLS:
            routes.append(
                RouteSpec(
                    deployment=deployment,
                    service=service,
                    endpoint=name,
                    protocol=protocol,
                    port=port,
                    target_port=target,
                    bind=bind,
                    expose=expose,
                    host=ep.get("host"),
                    path_prefix=str(ep.get("path") or "/"),
                    health=_http_health(raw),
                    strategy=_strategy(raw, service, name),
                )
            )
        elif protocol in L4_PROTOCOLS:
            stream = ep.get("stream") or {}
            unknown = set(stream) - {"tls", "proxy_protocol", "session_timeout", "health_check"}
            if unknown:
                raise SpecError(f"unknown stream field {sorted(unknown)[0]!r}", where=f"{where}.stream")
            streams.append(
                StreamSpec(
                    deployment=deployment,
                    service=service,
                    endpoint=name,
                    protocol=protocol,
                    port=port,
                    target_port=target,
                    bind=bind,
                    expose=expose,
                    tls=bool(stream.get("tls", False)),
                    proxy_protocol=_proxy_protocol(stream.get("proxy_protocol"), f"{where}.stream.proxy_protocol"),
                    session_timeout=_duration(stream.get("session_timeout"), f"{where}.stream.session_timeout"),
                    host=ep.get("host"),
                    health=_stream_health(stream.get("health_check"), f"{where}.stream.health_check", protocol),
                )
            )
        else:
            raise SpecError(
                f"unknown protocol {protocol!r} (http, https, tcp, udp, websocket)", where=f"{where}.protocol"
            )
    return routes, streams


__all__ = ["HealthCheckSpec", "RouteSpec", "StreamSpec", "build"]
