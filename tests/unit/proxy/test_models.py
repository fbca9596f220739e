"""Routes and streams built from service endpoints, as ZLayer builds them. The proxy reads the typed, validated
spec; a bad endpoint is refused when the spec is validated for deployment, at its field path."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from zlayer.errors import SpecError
from zlayer.proxy.models import build
from zlayer.spec.loader import parse_deployable
from zlayer.spec.models import ServiceSpec


def raw(*endpoints: dict, **more: Any) -> dict:
    return {"image": {"name": "x"}, "endpoints": list(endpoints), **more}


def svc(*endpoints: dict, **more: Any) -> ServiceSpec:
    return ServiceSpec.model_validate(raw(*endpoints, **more))


def test_http_https_websocket_are_routes_keyed_service_hash_endpoint() -> None:
    routes, streams = build(
        "d",
        "web",
        svc(
            {"name": "a", "protocol": "http", "port": 80, "path": "/api", "expose": "public"},
            {"name": "b", "protocol": "https", "port": 443, "host": "*.example.com"},
            {"name": "c", "protocol": "websocket", "port": 8081, "target_port": 9000},
        ),
    )
    assert streams == []
    assert [r.key for r in routes] == ["web#a", "web#b", "web#c"]
    assert (routes[0].bind, routes[0].path_prefix, routes[0].target_port) == ("0.0.0.0", "/api", 80)
    assert (routes[1].bind, routes[1].host, routes[1].path_prefix) == ("127.0.0.1", "*.example.com", "/")
    assert routes[2].target_port == 9000


def test_internal_endpoints_bind_the_overlay_address_when_there_is_one() -> None:
    _, streams = build("d", "db", svc({"name": "pg", "protocol": "tcp", "port": 5432}), "10.200.0.1")
    assert streams[0].bind == "10.200.0.1"
    _, streams = build("d", "db", svc({"name": "pg", "protocol": "tcp", "port": 5432, "expose": "public"}), "10.2.0.1")
    assert streams[0].bind == "0.0.0.0"


def test_stream_options_and_defaults() -> None:
    _, streams = build(
        "d",
        "s",
        svc(
            {"name": "u", "protocol": "udp", "port": 53},
            {
                "name": "t",
                "protocol": "tcp",
                "port": 25,
                "stream": {"tls": True, "proxy_protocol": True, "health_check": {"type": "tcp_connect"}},
            },
            {"name": "v2", "protocol": "tcp", "port": 26, "stream": {"proxy_protocol": True, "session_timeout": "5m"}},
        ),
    )
    u, t, v2 = streams
    assert (u.session_timeout, u.tls, u.proxy_protocol, u.health.kind) == (60.0, False, 0, "none")
    assert t.health.kind == "tcp_connect"
    assert (t.tls, t.proxy_protocol) == (True, 1)
    # the spec's proxy_protocol is a bool (ZLayer's): true sends the v1 header
    assert (v2.proxy_protocol, v2.session_timeout) == (1, 300.0)


def test_udp_probe_health_check_is_read() -> None:
    ep = {
        "name": "u",
        "protocol": "udp",
        "port": 53,
        "stream": {"health_check": {"type": "udp_probe", "request": "ping", "expect": "^pong"}},
    }
    _, (s,) = build("d", "dns", svc(ep))
    assert (s.health.kind, s.health.request, s.health.expect) == ("udp_probe", "ping", "^pong")


def test_http_route_health_uses_the_service_http_check() -> None:
    health = {"check": {"type": "http", "url": "http://localhost:8080/healthz?x=1", "expect_status": 204}}
    (r,), _ = build("d", "web", svc({"name": "a", "protocol": "http", "port": 80}, health=health))
    assert (r.health.kind, r.health.path, r.health.expect_status) == ("http", "/healthz?x=1", 204)


def refused(service: str, body: dict) -> list[tuple[str, str]]:
    doc = {"version": "v1", "deployment": "demo", "services": {service: body}}
    with pytest.raises(SpecError) as err:
        parse_deployable(yaml.safe_dump(doc))
    return [(p.path, p.message) for p in err.value.problems]


@pytest.mark.parametrize(
    ("endpoint", "where", "message"),
    [
        ({"name": "a", "protocol": "sctp", "port": 1}, "endpoints[0].protocol", "unknown variant `sctp`"),
        ({"name": "a", "protocol": "tcp", "port": 70000}, "endpoints[0].port", "expected u16"),
        ({"name": "", "protocol": "tcp", "port": 1}, "endpoints[0].name", "name cannot be empty"),
        ({"name": "a", "protocol": "tcp", "port": 1, "expose": "world"}, "endpoints[0].expose", "'public', 'internal'"),
        (
            {"name": "a", "protocol": "udp", "port": 1, "stream": {"session_timeout": "soon"}},
            "endpoints[0].stream.session_timeout",
            "invalid duration",
        ),
        (
            {"name": "a", "protocol": "udp", "port": 1, "stream": {"health_check": {"type": "udp_probe"}}},
            "endpoints[0].stream.health_check.request",
            "missing field `request`",
        ),
        (
            {
                "name": "a",
                "protocol": "udp",
                "port": 1,
                "stream": {"health_check": {"type": "udp_probe", "request": "x", "expect": "("}},
            },
            "endpoints[0].stream.health_check.expect",
            "not a valid regex",
        ),
        (
            {"name": "a", "protocol": "tcp", "port": 1, "stream": {"proxy_protocol": "v3"}},
            "endpoints[0].stream.proxy_protocol",
            "expected a boolean",
        ),
        (
            {"name": "a", "protocol": "tcp", "port": 1, "stream": {"tls": True, "bogus": 1}},
            "endpoints[0].stream.bogus",
            "unknown field `bogus`",
        ),
    ],
)
def test_bad_endpoints_name_the_field(endpoint: dict, where: str, message: str) -> None:
    [(path, msg)] = refused("svc", raw(endpoint))
    assert path == f"services.svc.{where}" and message in msg


def test_duplicate_endpoint_names_are_refused() -> None:
    found = refused("s", raw({"name": "a", "protocol": "tcp", "port": 1}, {"name": "a", "protocol": "udp", "port": 2}))
    assert found == [("services.s.endpoints[1].name", "duplicate endpoint 'a'")]


def test_a_parsed_service_spec_is_what_the_proxy_reads() -> None:
    doc = {
        "version": "v1",
        "deployment": "demo",
        "services": {"web": raw({"name": "a", "protocol": "http", "port": 80})},
    }
    (r,), _ = build("d", "web", parse_deployable(yaml.safe_dump(doc)).services["web"])
    assert r.key == "web#a"
