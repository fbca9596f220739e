"""What the agent reads from a service spec, with ZLayer's runtime defaults applied (agent-runtime.md §4).

The agent works on the spec as a plain mapping (the parsed spec's JSON form), so it does not depend on how the spec
models are built; each accessor here applies the default the runtime uses when a field is absent.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zlayer.errors import SpecError
from zlayer.spec.scalars import parse_duration


def duration(value: Any, default: float) -> float:
    """Seconds from a humantime string (the spec's one duration parser), a number, or ``default`` when absent."""
    if value is None or value == "":
        return default
    if isinstance(value, int | float):
        return float(value)
    try:
        return parse_duration(str(value))
    except ValueError as e:
        raise SpecError(f"invalid duration {value!r}: {e}") from None


def _enum(value: Any, default: str) -> str:
    if value is None:
        return default
    if isinstance(value, Mapping):  # tagged forms like {"mode": "fixed"} are handled by the caller
        return default
    return str(getattr(value, "value", value)).lower()


@dataclass(frozen=True)
class HealthView:
    kind: str = "tcp"
    port: int = 0
    url: str = ""
    expect_status: int = 200
    command: str = ""
    start_grace: float = 5.0
    interval: float = 10.0
    timeout: float = 5.0
    retries: int = 3


@dataclass(frozen=True)
class DependsView:
    service: str
    condition: str = "healthy"
    timeout: float = 300.0
    on_timeout: str = "fail"


@dataclass(frozen=True)
class InitStepView:
    id: str
    uses: str
    params: dict[str, Any]
    timeout: float = 300.0
    on_failure: str = "fail"


@dataclass(frozen=True)
class EndpointView:
    name: str
    protocol: str
    port: int
    target_port: int
    expose: str = "internal"
    path: str | None = None
    host: str | None = None


@dataclass(frozen=True)
class ServiceView:
    """One service as the agent sees it."""

    name: str
    raw: dict[str, Any]
    rtype: str = "service"
    image: str = ""
    pull_policy: str = "if_not_present"
    scale_mode: str = "adaptive"
    replicas: int = 1
    schedule: str = ""
    endpoints: tuple[EndpointView, ...] = ()
    health: HealthView = field(default_factory=HealthView)
    depends: tuple[DependsView, ...] = ()
    init_steps: tuple[InitStepView, ...] = ()
    on_init_failure: str = "fail"
    on_panic: str = "restart"
    restart_kind: str = ""
    restart_max_attempts: int | None = None
    host_network: bool = False
    stop_grace: float = 10.0

    @property
    def spec_hash(self) -> str:
        """Changes whenever anything a running replica was built from changes (spec or image reference). The
        replica count is not part of it: scaling adds or removes replicas, it does not replace the running ones."""
        built_from = {k: v for k, v in self.raw.items() if k != "scale"}
        return hashlib.sha256(json.dumps(built_from, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def backend_port(self) -> int:
        """ZLayer's rule: the first http/https/websocket endpoint's target port, else 8080."""
        for ep in self.endpoints:
            if ep.protocol in ("http", "https", "websocket"):
                return ep.target_port
        return 8080


def _health(raw: Any) -> HealthView:
    if raw is None:
        return HealthView()
    check = raw.get("check") or {}
    kind = _enum(check.get("type"), "tcp")
    return HealthView(
        kind=kind,
        port=int(check.get("port") or 0),
        url=str(check.get("url") or ""),
        expect_status=int(check.get("expect_status") or 200),
        command=str(check.get("command") or ""),
        start_grace=duration(raw.get("start_grace"), 5.0),
        interval=duration(raw.get("interval"), 10.0),
        timeout=duration(raw.get("timeout"), 5.0),
        retries=int(raw.get("retries") if raw.get("retries") is not None else 3),
    )


def _scale(raw: Any) -> tuple[str, int]:
    if not raw:
        return "adaptive", 1
    mode = _enum(raw.get("mode"), "adaptive")
    if mode == "fixed":
        return mode, int(raw.get("replicas") or 0)
    if mode == "manual":
        return mode, 0
    return "adaptive", int(raw.get("min") if raw.get("min") is not None else 1)


def service_view(name: str, raw: Mapping[str, Any]) -> ServiceView:
    """Read one service mapping (the spec's JSON form) with the runtime defaults applied."""
    spec = dict(raw)
    image = spec.get("image") or {}
    mode, replicas = _scale(spec.get("scale"))
    errors = spec.get("errors") or {}
    restart = spec.get("restart_policy") or {}
    network_mode = spec.get("network_mode")
    host_net = bool(spec.get("host_network")) or network_mode == "host" or _enum(network_mode, "") == "host"
    endpoints = tuple(
        EndpointView(
            name=str(ep.get("name")),
            protocol=_enum(ep.get("protocol"), "http"),
            port=int(ep.get("port") or 0),
            target_port=int(ep.get("target_port") or ep.get("port") or 0),
            expose=_enum(ep.get("expose"), "internal"),
            path=ep.get("path"),
            host=ep.get("host"),
        )
        for ep in spec.get("endpoints") or []
    )
    depends = tuple(
        DependsView(
            service=str(d.get("service")),
            condition=_enum(d.get("condition"), "healthy"),
            timeout=duration(d.get("timeout"), 300.0),
            on_timeout=_enum(d.get("on_timeout"), "fail"),
        )
        for d in spec.get("depends") or []
    )
    steps = tuple(
        InitStepView(
            id=str(s.get("id")),
            uses=str(s.get("uses")),
            params=dict(s.get("with") or {}),
            timeout=duration(s.get("timeout"), 300.0),
            on_failure=_enum(s.get("on_failure"), "fail"),
        )
        for s in (spec.get("init") or {}).get("steps") or []
    )
    return ServiceView(
        name=name,
        raw=spec,
        rtype=_enum(spec.get("rtype"), "service"),
        image=str(image.get("name") or "") if isinstance(image, Mapping) else str(image),
        pull_policy=_enum(image.get("pull_policy") if isinstance(image, Mapping) else None, "if_not_present"),
        scale_mode=mode,
        replicas=replicas,
        schedule=str(spec.get("schedule") or ""),
        endpoints=endpoints,
        health=_health(spec.get("health")),
        depends=depends,
        init_steps=steps,
        on_init_failure=_enum((errors.get("on_init_failure") or {}).get("action"), "fail"),
        on_panic=_enum((errors.get("on_panic") or {}).get("action"), "restart"),
        restart_kind=_enum(restart.get("kind"), ""),
        restart_max_attempts=restart.get("max_attempts"),
        host_network=host_net,
        stop_grace=duration(spec.get("stop_grace_period"), 10.0),
    )


def dependency_order(services: Mapping[str, ServiceView]) -> list[str]:
    """Services with their dependencies first (Kahn's order, ties by name). Unknown services, self-dependencies
    and cycles are spec errors naming the path (``a -> b -> a``)."""
    problems = []
    for s in services.values():
        for d in s.depends:
            if d.service == s.name:
                problems.append(f"services.{s.name}.depends: service depends on itself")
            elif d.service not in services:
                problems.append(f"services.{s.name}.depends: unknown service {d.service!r}")
    if problems:
        raise SpecError("invalid dependencies", problems=problems)
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*path[path.index(name) :], name]
            raise SpecError("dependency cycle", problems=[" -> ".join(cycle)])
        state[name] = 1
        for d in sorted(services[name].depends, key=lambda d: d.service):
            visit(d.service, [*path, name])
        state[name] = 2
        order.append(name)

    for name in sorted(services):
        visit(name, [])
    return order
