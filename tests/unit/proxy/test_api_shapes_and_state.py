"""The proxy API models match ZLayer's OpenAPI schemas; certificates and health bookkeeping."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from zlayer.errors import ProxyError
from zlayer.proxy import api_models
from zlayer.proxy.certs import CertStore, inspect, self_signed
from zlayer.proxy.health import UNHEALTHY_AFTER, BackendHealth

# From ZLayer's OpenAPI document (clients/go/api/openapi.yaml at e6528dd): (properties, required) per schema.
ZLAYER_SCHEMAS: dict[str, tuple[list[str], list[str]]] = {
    "BackendGroupInfo": (
        ["backends", "healthy_count", "service", "strategy", "total_count"],
        ["backends", "healthy_count", "service", "strategy", "total_count"],
    ),
    "BackendInfo": (
        ["active_connections", "address", "consecutive_failures", "healthy"],
        ["active_connections", "address", "consecutive_failures", "healthy"],
    ),
    "BackendsResponse": (["groups", "total_groups"], ["groups", "total_groups"]),
    "CertInfo": (["domain", "fingerprint", "needs_renewal", "not_after", "not_before"], ["domain", "needs_renewal"]),
    "RouteInfo": (
        ["backends", "endpoint", "expose", "host", "path_prefix", "protocol", "service", "strip_prefix", "target_port"],
        ["backends", "endpoint", "expose", "path_prefix", "protocol", "service", "strip_prefix", "target_port"],
    ),
    "RoutesResponse": (["routes", "total"], ["routes", "total"]),
    "StreamBackendInfo": (["address"], ["address"]),
    "StreamInfo": (
        ["backend_count", "backends", "port", "protocol", "service"],
        ["backend_count", "backends", "port", "protocol", "service"],
    ),
    "StreamsResponse": (["streams", "tcp_count", "total", "udp_count"], ["streams", "tcp_count", "total", "udp_count"]),
    "TlsResponse": (
        ["acme_available", "acme_email", "certificates", "total"],
        ["acme_available", "certificates", "total"],
    ),
}


@pytest.mark.parametrize("name", sorted(ZLAYER_SCHEMAS))
def test_model_fields_match_zlayers_schema(name: str) -> None:
    ours = getattr(api_models, name).model_json_schema()
    props, required = ZLAYER_SCHEMAS[name]
    assert sorted(ours["properties"]) == props
    assert sorted(ours.get("required", [])) == required


def test_backend_health_needs_three_failures_and_one_success() -> None:
    h = BackendHealth()
    changes = [h.record(False) for _ in range(UNHEALTHY_AFTER)]
    assert changes == [False, False, True] and not h.healthy and h.consecutive_failures == 3
    assert h.record(True) and h.healthy and h.consecutive_failures == 0


def test_cert_store_round_trip_and_renewal_window(tmp_path: Path) -> None:
    store = CertStore(tmp_path)
    info = store.ensure_self_signed("a.test")
    assert store.ensure_self_signed("a.test").fingerprint == info.fingerprint  # kept, not regenerated
    assert (tmp_path / "a.test.key").stat().st_mode & 0o777 == 0o600
    assert not info.needs_renewal()
    assert info.needs_renewal(info.not_after - dt.timedelta(days=29))
    assert [c.domain for c in store.all()] == ["a.test"]


def test_mismatched_or_broken_files_name_the_file(tmp_path: Path) -> None:
    cert, _ = self_signed(["a.test"])
    _, other = self_signed(["b.test"])
    (tmp_path / "c.crt").write_bytes(cert)
    (tmp_path / "o.key").write_bytes(other)
    (tmp_path / "bad.crt").write_text("hello")
    with pytest.raises(ProxyError, match="does not match") as err:
        inspect("a.test", tmp_path / "c.crt", tmp_path / "o.key", "file")
    assert err.value.where == str(tmp_path / "o.key")
    with pytest.raises(ProxyError, match="not a PEM certificate"):
        inspect("a.test", tmp_path / "bad.crt", tmp_path / "o.key", "file")
    with pytest.raises(ProxyError, match="cannot read certificate"):
        inspect("a.test", tmp_path / "missing.crt", tmp_path / "o.key", "file")
