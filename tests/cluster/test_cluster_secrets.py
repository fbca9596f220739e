"""Issue 16 item 5 on three hosts (network namespaces, tests/fixtures/netns_cluster.py): secrets are replicated
sealed, and each node holds only what its replicas need. A secret set on any node is read on the keeper (node 1,
which holds the cluster's key) and given to a local command there; another node opens only the secrets of the
replicas assigned to it, sealed for it by the keeper — a replica moved away takes its node's access along, a removed
node's grants go. What etcd holds (its API and its files on disk) has no value in the clear. Timings as in
tests/cluster/test_cluster.py (heartbeat 0.5 s, dead after 4 s)."""

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
from tests.fixtures.netns_cluster import NetnsCluster, healthy, wait_for
from tests.fixtures.secrets_view import opened_by
from zlayer.paths import Paths
from zlayer.security.cluster import DEK_KEY, GRANTS, NODES, ROWS, DekRecord

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.peer]

VALUES = ("carried-over-Q7c1", "api-token-Zx81", "prod-password-Lp30")
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


def _answers(host: Any, n: int = 9, port: int = PORT) -> list[str]:
    """What ``n`` requests to ``host``'s proxy on ``port`` get back from the replicas' /token."""
    out = []
    for _ in range(n):
        r = subprocess.run(["ip", "netns", "exec", host.ns, "curl", "-sS", "--max-time", "3",
                            f"http://{host.addr}:{port}/token"], capture_output=True, text=True)  # fmt: skip
        out.append(r.stdout if r.returncode == 0 else f"error: {r.stderr.strip()}")
    return out


def _served(host: Any, n: int, port: int, value: str) -> list[str] | None:
    """:func:`_answers` when every one of them is ``value`` (a wait_for condition), else None."""
    got = _answers(host, n, port)
    return got if set(got) == {value} else None


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


def _values(host: Any) -> dict[str, bytes]:
    return {k: v for k, (v, _) in _etcd(host).items()}


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


def test_secrets_replicate_sealed_and_each_node_opens_what_its_replicas_use(netns_cluster: NetnsCluster) -> None:
    h1, h2, h3 = netns_cluster.hosts
    carried, token, prod_pw = VALUES
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
    assert sorted(DekRecord.parse(json.loads(kv[DEK_KEY][0])).wraps) == ["1"]  # the keeper holds the key

    # written on nodes 2 and 3 (which open nothing), read on the keeper at once, no waiting
    h2.ok("secret", "create", "api_token", "--value", token)
    h1.ok("env", "create", "prod")
    h3.ok("secret", "set", "DB_PASSWORD", "--env", "prod", "--value", prod_pw)
    assert h1.ok("secret", "get", "api_token", "--reveal").splitlines()[-1] == token
    assert h1.ok("secret", "get", "carried", "--reveal").splitlines()[-1] == carried
    assert h1.ok("secret", "get", "DB_PASSWORD", "--env", "prod", "--reveal").splitlines()[-1] == prod_pw
    r = h3.zl("secret", "get", "DB_PASSWORD", "--env", "prod", "--reveal")  # no replica of node 3 uses it
    assert r.returncode != 0 and "not sealed for node 3" in r.stderr and "DB_PASSWORD" in r.stderr, r.stdout + r.stderr
    assert "DB_PASSWORD" in h3.ok("secret", "ls", "--env", "prod")  # its name and versions are no secret
    # resolved on the keeper for a command it runs: zlayer run takes the environment's secrets from its daemon
    out = h1.ok("run", "--env", "prod", "--", "sh", "-c", 'printf "%s|%s" "$DB_PASSWORD" "$api_token"')
    assert out == f"{prod_pw}|{token}", out
    # a deployment made through node 2 whose replicas serve the secret they were given: the keeper seals it for
    # each node that runs one, which resolves it when the replica starts
    image = service_image(h2.root / "svc.tar", "x\n")
    for h in (h1, h2, h3):
        h.ok("import", str(image), "-t", "zlayer-svc/httpd:v1")
    app = h2.root / "app.zlayer.yml"
    app.write_text(APP)
    h2.ok("deploy", str(app), timeout=180)
    answers = wait_for(lambda: _answers(h2) if set(_answers(h2)) == {token} else None, 120,
                       "every replica to answer with the secret")  # fmt: skip
    assert answers == [token] * len(answers), answers
    assert set(healthy(h1, "tokens").values()) == {"1", "2", "3"}
    # node 3 opens api_token now (its replica uses it), and nothing else
    opened = opened_by(_values(h1), keys["3"], "3")
    assert set(opened.values()) == {token.encode()}, opened
    assert h3.ok("secret", "get", "api_token", "--reveal").splitlines()[-1] == token

    # a spec naming a secret no node has is refused on node 2, naming it
    spec = h2.root / "refs.zlayer.yml"
    spec.write_text(web_spec("refs", 1, extra='    env: {TOKEN: "$S:api_token", MISSING: "$S:no_such_secret"}\n'))
    r = h2.zl("deploy", str(spec))
    assert r.returncode != 0 and "no_such_secret" in r.stdout + r.stderr and "MISSING" in r.stdout + r.stderr, (
        r.stdout + r.stderr
    )

    # nothing in the clear: not in etcd's values, not in its files on any host
    kv = _etcd(h1)
    assert any(k.startswith(ROWS) for k in kv) and any(k.startswith(GRANTS) for k in kv)
    for key, (raw, _) in kv.items():
        for plain in (carried, token, prod_pw):
            assert not _in_clear(raw, plain.encode()), f"{plain} in the clear in etcd key {key}"
    for h in (h1, h2, h3):
        for f in (h.data / "cluster" / "etcd").rglob("*"):
            if f.is_file():
                data = f.read_bytes()
                assert not any(p.encode() in data for p in (carried, token, prod_pw)), f"a value in the clear in {f}"
    h2.ok("down", "tokens", timeout=120)
    wait_for(lambda: not any(k.startswith(GRANTS) for k in _etcd(h1)), 30, "the grants to go with the replicas")


ROLLED = (
    APP.replace("deployment: tokens", "deployment: rolled")
    .replace("$S:api_token", "$S::prod/roll_key")
    .replace(f"port: {PORT},", f"port: {PORT + 2},")
)  # three replicas, one on each node, each serving the roll_key of environment prod it was given at /token


def _api(host: Any, path: str, body: dict[str, Any]) -> str:
    """A POST to ``host``'s daemon on its unix socket, as a script would send it (no CLI start-up in between)."""
    sock = Paths.resolve(host.data).socket
    r = subprocess.run(["curl", "-sS", "--fail-with-body", "--unix-socket", str(sock), "-X", "POST", "-H",
                        "content-type: application/json", f"http://zlayer{path}", "-d", json.dumps(body)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_a_rollout_after_a_rotation_gives_every_replica_the_new_value(netns_cluster: NetnsCluster) -> None:
    h1, h2, h3 = netns_cluster.hosts
    h2.ok("secret", "set", "roll_key", "--env", "prod", "--value", "roll-key-v1-Ue4")
    spec = h2.root / "rolled.zlayer.yml"
    spec.write_text(ROLLED)
    h2.ok("deploy", str(spec), timeout=180)

    def served(value: str) -> list[str] | None:
        return _served(h1, 9, PORT + 2, value)

    wait_for(lambda: served("roll-key-v1-Ue4"), 120, "every replica to serve roll_key")
    assert set(healthy(h1, "rolled").values()) == {"1", "2", "3"}  # the keeper's and two others'
    # rotated on the keeper, then the same spec deployed again through node 2 (ZLayer's rollout): every replica is
    # replaced by one given the new version; until then each keeps the value it started with
    h1.ok("secret", "rotate", "roll_key", "--env", "prod", "--value", "roll-key-v2-Bq9")
    assert served("roll-key-v1-Ue4")
    h2.ok("deploy", str(spec), timeout=180)
    wait_for(lambda: served("roll-key-v2-Bq9"), 120, "every replica to serve the rotated roll_key")
    # a script that rotates on node 3 and deploys there at once: each node's rollout counts the new version (a
    # node that had read the secrets a moment before kept its replica with the old value)
    _api(h3, "/api/v1/secrets/roll_key/rotate?environment=prod", {"value": "roll-key-v3-Wd5"})
    _api(h3, "/api/v1/deployments", {"spec": ROLLED})
    wait_for(lambda: served("roll-key-v3-Wd5"), 120, "every replica to serve the roll_key rotated on node 3")
    assert set(healthy(h1, "rolled").values()) == {"1", "2", "3"}
    h2.ok("down", "rolled", timeout=120)


VAULT = (  # one replica, only on nodes labelled pool=work, node 2 preferred; it serves its DB value at /token
    "version: v1\ndeployment: vault\nservices:\n  web:\n"
    "    image: {name: 'zlayer-svc/httpd:v1', pull_policy: never}\n"
    "    env: {DB: '$S::prod/db_pass'}\n"
    "    command: {entrypoint: ['/bin/sh', '-c'], args: ['printf %s \"$DB\" > /www/token && "
    "exec /bin/busybox httpd -f -p 8080 -h /www']}\n"
    "    stop_grace_period: 1s\n"
    f"    endpoints: [{{name: http, protocol: http, port: {PORT + 1}, target_port: 8080, expose: public}}]\n"
    "    scale: {mode: fixed, replicas: 1}\n"
    "    node_selector: {labels: {pool: work}, prefer_labels: {disk: two}}\n"
    "    health: {start_grace: 0s, interval: 1s, timeout: 1s, retries: 2, check: {type: tcp, port: 8080}}\n"
)


def test_a_secret_is_sealed_only_for_the_node_that_runs_it_and_follows_its_replica(
    netns_cluster: NetnsCluster,
) -> None:
    h1, h2, h3 = netns_cluster.hosts
    keys = {str(i + 1): _key(h) for i, h in enumerate((h1, h2, h3))}
    h3.ok("secret", "set", "db_pass", "--env", "prod", "--value", "db-pass-v1-Hq2")
    h1.ok("node", "label", "2", "pool=work", "disk=two")
    h1.ok("node", "label", "3", "pool=work")
    spec = h1.root / "vault.zlayer.yml"
    spec.write_text(VAULT)
    h1.ok("deploy", str(spec), timeout=180)

    def served(value: str) -> list[str] | None:
        return _served(h1, 3, PORT + 1, value)

    def db_pass(node: str) -> dict[int, bytes]:
        """The versions of db_pass that what etcd holds opens with ``node``'s key."""
        return {v: p for (_, name, v), p in opened_by(_values(h1), keys[node], node).items() if name == "db_pass"}

    wait_for(lambda: served("db-pass-v1-Hq2"), 120, "the replica on node 2 to serve db_pass")
    assert set(healthy(h1, "vault").values()) == {"2"}
    assert db_pass("2") == {1: b"db-pass-v1-Hq2"}
    assert db_pass("3") == {}  # node 3's etcd view holds no key that opens db_pass
    r = h3.zl("secret", "get", "db_pass", "--env", "prod", "--reveal")
    assert r.returncode != 0 and "not sealed for node 3" in r.stderr, r.stdout + r.stderr
    assert h2.ok("secret", "get", "db_pass", "--env", "prod", "--reveal").splitlines()[-1] == "db-pass-v1-Hq2"

    # rotated (on node 3, which opens nothing): node 2 gets the new version sealed, and only that one
    h3.ok("secret", "rotate", "db_pass", "--env", "prod", "--value", "db-pass-v2-Mt7")
    wait_for(lambda: db_pass("2") == {2: b"db-pass-v2-Mt7"} or None, 30, "node 2 to hold the new version only")
    assert db_pass("3") == {}
    assert h2.ok("secret", "get", "db_pass", "--env", "prod", "--reveal").splitlines()[-1] == "db-pass-v2-Mt7"

    # node 2 drained: the replica moves to node 3, which gets db_pass; node 2 loses it
    h1.ok("node", "drain", "2", timeout=120)
    wait_for(lambda: set(healthy(h1, "vault").values()) == {"3"} or None, 120, "the replica on node 3")
    wait_for(lambda: served("db-pass-v2-Mt7"), 60, "the replica on node 3 to serve the new db_pass")
    wait_for(lambda: db_pass("2") == {} or None, 30, "node 2's grant of db_pass to go")
    assert db_pass("3") == {2: b"db-pass-v2-Mt7"}
    r = h2.zl("secret", "get", "db_pass", "--env", "prod", "--reveal")
    assert r.returncode != 0 and "not sealed for node 2" in r.stderr, r.stdout + r.stderr

    # node 2 removed: its key record and every grant of it are gone; the keeper key did not move
    h1.ok("node", "remove", "2", timeout=120)
    kv = _etcd(h1)
    assert NODES + "2" not in kv and not any(k.startswith(GRANTS + "2/") for k in kv)
    assert sorted(DekRecord.parse(json.loads(kv[DEK_KEY][0])).wraps) == ["1"]
    assert db_pass("3") == {2: b"db-pass-v2-Mt7"}


def test_a_node_without_its_key_file_says_so_and_makes_no_new_key(netns_cluster: NetnsCluster) -> None:
    h1, _, h3 = netns_cluster.hosts
    path: Path = h3.data / "secrets" / "node_secrets.key"
    saved = path.read_bytes()
    h3.stop()
    path.unlink()
    try:
        h3.start()
        r = h3.zl("secret", "get", "db_pass", "--env", "prod", "--reveal")
        assert r.returncode != 0 and "node_secrets.key is missing" in r.stderr, r.stdout + r.stderr
        assert not path.exists()  # no new key made in its place
        dek = DekRecord.parse(json.loads(_etcd(h1)[DEK_KEY][0]))
        assert sorted(dek.wraps) == ["1"]  # and nothing rewrapped
    finally:
        h3.stop()
        path.write_bytes(saved)
        path.chmod(0o600)
        h3.start()
