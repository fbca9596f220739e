"""What needs no etcd: ZLayer's voter rule, join tokens (signature, expiry, another cluster's key, tampering,
durations) and the checks a join's fields get before anything is registered."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from zlayer.cluster.membership import Liveness, check_address, check_labels, ports_free, target_voters
from zlayer.cluster.tokens import SigningKey, parse_ttl, read_token, token_hash
from zlayer.errors import AuthError, ConflictError, UsageError


def test_the_voter_rule_is_zlayers() -> None:
    assert [target_voters(n) for n in range(0, 11)] == [1, 1, 1, 3, 3, 5, 5, 7, 7, 7, 7]


def test_a_token_carries_the_endpoint_and_verifies_only_with_its_clusters_key() -> None:
    key = SigningKey()
    token, claims = key.issue("10.0.0.1:3669", "10.0.0.1:9000", "node-1", ttl=3600)
    got = key.verify(token)
    assert got == claims and got.api_endpoint == "10.0.0.1:3669"
    assert read_token(token)[1] == key.kid == SigningKey.from_b64(key.seed_b64()).kid
    with pytest.raises(AuthError, match=r"signed by key .* not this cluster.s"):
        SigningKey().verify(token)


def test_a_tampered_expired_or_foreign_token_is_refused_saying_why() -> None:
    key = SigningKey()
    token, _ = key.issue("10.0.0.1:3669", "10.0.0.1:9000", "node-1", ttl=60)
    env = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    env["claims"]["api_endpoint"] = "10.6.6.6:3669"
    tampered = base64.urlsafe_b64encode(json.dumps(env).encode()).decode()
    with pytest.raises(AuthError, match="signature does not verify"):
        key.verify(tampered)
    with pytest.raises(AuthError, match="expired at"):
        key.verify(token, now=datetime.now(UTC) + timedelta(seconds=61))
    assert key.verify(token, now=datetime.now(UTC) + timedelta(days=9), check_expiry=False).iss == "node-1"
    for garbage in ("", "abc", base64.b64encode(b'{"v": 1}').decode(), "eyJ2IjoxfQ"):
        with pytest.raises(AuthError, match="not a zlayer join token"):
            read_token(garbage)


def test_durations_hashes_and_join_fields() -> None:
    assert (parse_ttl("24h"), parse_ttl("30m"), parse_ttl("7d"), parse_ttl("90"), parse_ttl(None)) == (
        86400, 1800, 7 * 86400, 90, 86400)  # fmt: skip
    for bad in ("soon", "0s", "-1h", "400d"):
        with pytest.raises(UsageError, match="--ttl"):
            parse_ttl(bad)
    assert token_hash("t") == token_hash(token_hash("t")) and len(token_hash("t")) == 64
    assert check_address(" 10.0.0.2 ") == "10.0.0.2"
    for bad in ("node-2", "0.0.0.0", "224.0.0.1", ""):
        with pytest.raises(UsageError, match="--advertise-addr"):
            check_address(bad)
    assert check_labels({"zone": "a"}) == {"zone": "a"}
    with pytest.raises(UsageError, match=r"labels\.a=b"):
        check_labels({"a=b": "c"})
    with pytest.raises(UsageError, match="two heartbeats"):
        Liveness(5.0, 6.0).check()
    with pytest.raises(UsageError, match="not an address of this node"):
        ports_free("192.0.2.123", [(9000, "--raft-port")])


def test_a_port_in_use_is_refused_before_anything_is_asked() -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(ConflictError, match=f"127.0.0.1:{port} is in use on this node"):
            ports_free("127.0.0.1", [(port, "--raft-port")])
