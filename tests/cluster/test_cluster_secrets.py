"""Issue 16 item 5 on three hosts (network namespaces, tests/fixtures/netns_cluster.py): a secret set on one node is
read, and given to a local command, on another; what etcd holds (its API and its files on disk) has no value in the
clear; removing a node rotates the cluster's key, after which the removed node's own key opens neither the current
key nor any value. Timings as in tests/cluster/test_cluster.py (heartbeat 0.5 s, dead after 4 s)."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tests.fixtures.daemon_live import web_spec
from tests.fixtures.daemon_node import service_image
from tests.fixtures.netns_cluster import NetnsCluster, wait_for
from zlayer.security.cluster import DEK_KEY, ROWS, DekRecord, WrapError, open_record, open_row, unwrap_dek

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.peer]

VALUES = ("carried-over-Q7c1", "api-token-Zx81", "prod-password-Lp30", "after-removal-Vw55")
PORT = 8091
APP = (  # each replica serves, at /token, the value its TOKEN reference was resolved to
    "version: v1\ndeployment: tokens\nservices:\n  web:\n"
    "    image: {name: 'zlayer-svc/httpd:v1', pull_policy: never}\n"
    "    env: {TOKEN: '$S:api_token'}\n"
    "    command: {entrypoint: ['/bin/sh', '-c'], args: ['printf %s \"$TOKEN\" > /www/token && "
    "exec /bin/busybox httpd -f -p 8080 -h /www']}\n"
    "    stop_grace_period: 1s\n"
    f"    endpoints: [{{name: http, protocol: http, port: {PORT}, target_port: 8080, expose: public}}]\n"
    "    scale: {mode: fixed, replicas: 3}\n"
    "    health: {start_grace: 0s, interval: 1s, timeout: 1s, retries: 2, check: {type: tcp, port: 8080}}\n"
)


def _answers(host: Any, n: int = 9) -> list[str]:
    """What ``n`` requests to ``host``'s proxy get back from the replicas' /token."""
    out = []
    for _ in range(n):
        r = subprocess.run(["ip", "netns", "exec", host.ns, "curl", "-sS", "--max-time", "3",
                            f"http://{host.addr}:{PORT}/token"], capture_output=True, text=True)  # fmt: skip
        out.append(r.stdout if r.returncode == 0 else f"error: {r.stderr.strip()}")
    return out


def _etcd(host: Any) -> dict[str, tuple[bytes, int]]:
    """Every key etcd holds, read through its API inside the host's namespace with the node's certificate (as root
    reads it): key -> (value, mod revision)."""
    body = json.dumps({"key": "AA==", "range_end": "AA=="})  # "\0" to "\0": every key
    tls = host.data / "cluster" / "tls"
    out = subprocess.run(["ip", "netns", "exec", host.ns, "curl", "-sf", "-X", "POST", "--cacert", tls / "ca.crt",
                          "--cert", tls / "node.crt", "--key", tls / "node.key",
                          "https://127.0.0.1:2379/v3/kv/range", "-d", body],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return {base64.b64decode(kv["key"]).decode(): (base64.b64decode(kv.get("value", "")), int(kv["mod_revision"]))
            for kv in json.loads(out.stdout).get("kvs", [])}  # fmt: skip


def _in_clear(raw: bytes, plain: bytes) -> bool:
    """``plain`` in ``raw``, or in any base64 string of the JSON document ``raw`` is."""
    if plain in raw:
        return True
    try:
        doc = json.loads(raw)
    except ValueError:
        return False
    strings = [v for v in (doc.values() if isinstance(doc, dict) else []) if isinstance(v, str)]
    for s in strings:
        try:
            if plain in base64.b64decode(s, validate=True):
                return True
        except ValueError:
            continue
    return False


def _key(host: Any) -> X25519PrivateKey:
    path = host.data / "secrets" / "node_secrets.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, oct(path.stat().st_mode)
    return X25519PrivateKey.from_private_bytes(path.read_bytes())


def _token(host: Any) -> str:
    return host.ok("node", "generate-join-token", "--ttl", "1h", "-q").strip()


def test_secrets_replicate_sealed_and_a_removed_node_loses_the_key(netns_cluster: NetnsCluster) -> None:
    h1, h2, h3 = netns_cluster.hosts
    carried, token, prod_pw, later = VALUES
    # a secret of host 1 from before the cluster: carried into the cluster's rows at init
    h1.ok("secret", "create", "carried", "--value", carried)
    h1.ok("node", "init", "--advertise-addr", h1.addr)
    assert "node 2" in h2.ok("node", "join", h1.api, "--token", _token(h1), "--advertise-addr", h2.addr)
    assert "node 3" in h3.ok("node", "join", h1.api, "--token", _token(h1), "--advertise-addr", h3.addr)
    keys = {str(i + 1): _key(h) for i, h in enumerate((h1, h2, h3))}
    kv = _etcd(h1)
    for n, key in keys.items():  # each node's public key is recorded with its identity
        ident = json.loads(kv[f"/zlayer/secrets/nodes/{n}"][0])
        assert base64.b64decode(ident["public_key"]) == key.public_key().public_bytes_raw()

    # set on node 1 (global and an environment); read on nodes 2 and 3 at once, no waiting
    h1.ok("secret", "create", "api_token", "--value", token)
    h1.ok("env", "create", "prod")
    h1.ok("secret", "set", "DB_PASSWORD", "--env", "prod", "--value", prod_pw)
    assert h2.ok("secret", "get", "api_token", "--reveal").splitlines()[-1] == token
    assert h3.ok("secret", "get", "carried", "--reveal").splitlines()[-1] == carried
    assert h3.ok("secret", "get", "DB_PASSWORD", "--env", "prod", "--reveal").splitlines()[-1] == prod_pw
    # and resolved on node 2 for a command it runs: zlayer run takes the environment's secrets from its daemon
    out = h2.ok("run", "--env", "prod", "--", "sh", "-c", 'printf "%s|%s" "$DB_PASSWORD" "$api_token"')
    assert out == f"{prod_pw}|{token}", out
    # a deployment made through node 2 whose replicas serve the secret they were given: each node that runs one
    # resolves it (with its own wrap of the cluster key) when the replica starts
    image = service_image(h2.root / "svc.tar", "x\n")
    for h in (h1, h2, h3):
        h.ok("import", str(image), "-t", "zlayer-svc/httpd:v1")
    app = h2.root / "app.zlayer.yml"
    app.write_text(APP)
    h2.ok("deploy", str(app), timeout=180)
    answers = wait_for(lambda: _answers(h2) if set(_answers(h2)) == {token} else None, 120,
                       "every replica to answer with the secret")  # fmt: skip
    assert answers == [token] * len(answers), answers

    # a spec naming a secret no node has is refused on node 2, naming it
    spec = h2.root / "refs.zlayer.yml"
    spec.write_text(web_spec("refs", 1, extra='    env: {TOKEN: "$S:api_token", MISSING: "$S:no_such_secret"}\n'))
    r = h2.zl("deploy", str(spec))
    assert r.returncode != 0 and "no_such_secret" in r.stdout + r.stderr and "MISSING" in r.stdout + r.stderr, (
        r.stdout + r.stderr
    )

    # nothing in the clear: not in etcd's values, not in its files on any host
    kv = _etcd(h1)
    assert any(k.startswith(ROWS) for k in kv)
    for key, (raw, _) in kv.items():
        for plain in (carried, token, prod_pw):
            assert not _in_clear(raw, plain.encode()), f"{plain} in the clear in etcd key {key}"
    for h in (h1, h2, h3):
        for f in (h.data / "cluster" / "etcd").rglob("*"):
            if f.is_file():
                data = f.read_bytes()
                assert not any(p.encode() in data for p in (carried, token, prod_pw)), f"a value in the clear in {f}"

    old = DekRecord.parse(json.loads(kv[DEK_KEY][0]))
    assert sorted(old.wraps) == ["1", "2", "3"]
    old_dek = open_record(old, keys["3"], "3")[old.generation]

    # node 3 leaves: the key rotates, wrapped for 1 and 2 only, and every row is sealed again under it
    h1.ok("node", "remove", "3")
    kv = _etcd(h1)
    new = DekRecord.parse(json.loads(kv[DEK_KEY][0]))
    assert new.generation == old.generation + 1 and sorted(new.wraps) == ["1", "2"] and new.retiring is None
    assert "/zlayer/secrets/nodes/3" not in kv
    for wrap in new.wraps.values():
        for node in ("1", "2", "3"):
            with pytest.raises(WrapError):
                unwrap_dek(base64.b64decode(wrap), keys["3"], node, new.generation)
    h1.ok("secret", "rotate", "DB_PASSWORD", "--env", "prod", "--value", later)
    rows = [(k, json.loads(v)) for k, (v, _) in _etcd(h1).items() if k.startswith(ROWS)]
    assert len(rows) == 4 and all(doc["g"] == new.generation for _, doc in rows), rows
    for k, doc in rows:  # node 3's old key opens none of them, the new value least of all
        scope, name, version = k[len(ROWS) :].split("/")
        assert open_row(old_dek, scope, name, int(version), base64.b64decode(doc["v"])) is None
    assert h2.ok("secret", "get", "DB_PASSWORD", "--env", "prod", "--reveal").splitlines()[-1] == later
    assert h2.ok("secret", "get", "carried", "--reveal").splitlines()[-1] == carried
    # node 2's daemon, restarted, opens its wrap of the new key from its key file
    h2.stop()
    h2.start()
    got = h2.zl("secret", "get", "api_token", "--reveal")
    assert got.returncode == 0 and got.stdout.splitlines()[-1] == token, got.stdout + got.stderr


def test_a_node_without_its_key_file_says_so_and_makes_no_new_key(netns_cluster: NetnsCluster) -> None:
    h1, h2, _ = netns_cluster.hosts
    path: Path = h2.data / "secrets" / "node_secrets.key"
    saved = path.read_bytes()
    h2.stop()
    path.unlink()
    try:
        h2.start()
        r = h2.zl("secret", "get", "api_token", "--reveal")
        assert r.returncode != 0 and "node_secrets.key is missing" in r.stderr, r.stdout + r.stderr
        assert not path.exists()  # no new key made in its place
        dek = DekRecord.parse(json.loads(_etcd(h1)[DEK_KEY][0]))
        assert sorted(dek.wraps) == ["1", "2"]  # and nothing rewrapped
    finally:
        h2.stop()
        path.write_bytes(saved)
        path.chmod(0o600)
        h2.start()
