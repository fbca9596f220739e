"""Bearer-token auth against Debian's docker-registry (``auth: token``) and a JWT issuer the test runs.

The registry answers 401 with a ``WWW-Authenticate: Bearer realm=…,service=…,scope=…`` challenge; zlayer asks the
issuer for a token scoped to the repository and action, retries, and asks again when the token expires.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.images import busybox_entries, oci_archive
from tests.fixtures.images_peers import TokenRegistry, multi_layer_image
from zlayer.errors import AuthError
from zlayer.images import Credentials, ImageStore, import_archive, pull, push

pytestmark = [pytest.mark.root, pytest.mark.peer]


def zl(data: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zlayer", "--data-dir", str(data), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _local(tmp_path: Path, ref: str) -> ImageStore:
    store = ImageStore(tmp_path / "src")
    import_archive(store, oci_archive(tmp_path / "img.tar", multi_layer_image()), tag=ref)
    return store


def _granted(reg: TokenRegistry) -> list[tuple[str | None, str]]:
    return [
        (t["user"], f"{a['name']}:{','.join(a['actions'])}")
        for t in reg.issuer.issued
        if not t.get("refused")
        for a in t["access"]
    ]


def test_push_and_pull_through_the_bearer_challenge_with_scoped_tokens(
    tmp_path: Path, images_token_registry: TokenRegistry
) -> None:
    reg = images_token_registry
    ref = f"{reg.host}/team/app:1"
    alice = Credentials("alice", "secret")
    src = _local(tmp_path, ref)
    with pytest.raises(AuthError) as err:
        asyncio.run(push(src, ref))  # no credentials: the issuer refuses
    assert "\n" not in str(err.value) and "401" in str(err.value)
    before = len(reg.issuer.issued)
    digest = asyncio.run(push(src, ref, credentials=alice))
    assert ("alice", "team/app:pull,push") in _granted(reg)
    # every token of the push may push: blob HEADs are challenged for pull only, yet share the push's token
    assert all("repository:team/app:pull,push" in t["scopes"] for t in reg.issuer.issued[before:])

    # a user the issuer grants only pull: pulling works, pushing is refused by the registry (insufficient scope)
    reader = Credentials("reader", "readonly")
    image = asyncio.run(pull(ImageStore(tmp_path / "r"), ref, policy="always", credentials=reader))
    assert image.digest == digest
    assert (image.layer_dirs[-1] / "etc" / "motd").read_bytes() == b"top layer\n"
    assert ("reader", "team/app:pull") in _granted(reg)
    with pytest.raises(AuthError) as err:
        asyncio.run(push(src, ref, target=f"{reg.host}/team/app:2", credentials=reader))
    assert "team/app" in str(err.value) and "401" in str(err.value)
    # tokens are scoped: nothing the reader got lets it push
    assert all(not acts.endswith("push") for user, acts in _granted(reg) if user == "reader")


def test_anonymous_pull_of_a_public_repository_gets_an_anonymous_token(
    tmp_path: Path, images_token_registry: TokenRegistry
) -> None:
    reg = images_token_registry
    digest = push_image_with_token(reg, "public/app", "1")
    before = len(reg.issuer.issued)
    image = asyncio.run(pull(ImageStore(tmp_path / "anon"), f"{reg.host}/public/app:1", policy="always"))
    assert image.digest == digest
    assert [(t["user"], t.get("refused", False)) for t in reg.issuer.issued[before:]] == [(None, False)]
    with pytest.raises(AuthError) as err:  # but nobody anonymous may push there
        asyncio.run(push(ImageStore(tmp_path / "anon"), f"{reg.host}/public/app:1", target=f"{reg.host}/public/app:2"))
    assert "public/app" in str(err.value) and "401" in str(err.value)


def test_token_expiring_mid_pull_is_refreshed(
    tmp_path: Path, images_token_registry: TokenRegistry, images_proxy_factory: object
) -> None:
    reg = images_token_registry
    pushed = push_image_with_token(reg, "slow/app", "1")
    # Tokens live 2 s (±0.5: the registry counts whole seconds) and the first blob request waits 3 s in the proxy,
    # so the token the manifest was fetched with has expired when it reaches the registry: a 401 mid-pull.
    reg.issuer.lifetime = 2
    proxy = images_proxy_factory(reg.host)  # type: ignore[operator]
    proxy.delay, proxy.delay_path, proxy.delay_times = 3.0, r"/blobs/sha256:", 1
    before = len(reg.issuer.issued)
    image = asyncio.run(
        pull(
            ImageStore(tmp_path / "s"),
            f"{proxy.host}/slow/app:1",
            policy="always",
            credentials=Credentials("alice", "secret"),
            concurrency=1,
        )
    )
    assert image.digest == pushed
    assert len(image.layer_dirs) == 3
    refreshed = len(reg.issuer.issued) - before
    assert refreshed >= 2, f"only {refreshed} token(s) issued: the expired token was not refreshed"
    # the registry really did refuse the expired token mid-pull, and the retry with the fresh one succeeded
    statuses = [s.status for s in proxy.seen if "/blobs/" in s.path]
    assert 401 in statuses and statuses[-1] == 200


def test_token_expiring_mid_push_is_refreshed(
    tmp_path: Path, images_token_registry: TokenRegistry, images_proxy_factory: object
) -> None:
    reg = images_token_registry
    reg.issuer.lifetime = 2
    proxy = images_proxy_factory(reg.host)  # type: ignore[operator]
    # the first upload PUT waits 3 s: the token got for the HEAD and POST has expired when it arrives, so the
    # registry refuses the blob's bytes, and the retry (a new token, the whole blob again) must succeed
    proxy.delay, proxy.delay_path, proxy.delay_times = 3.0, r"/blobs/uploads/[^/]+$", 1
    ref = f"{proxy.host}/slowpush/app:1"
    src = ImageStore(tmp_path / "src")
    import_archive(src, oci_archive(tmp_path / "img.tar", [busybox_entries()]), tag=ref)
    before = len(reg.issuer.issued)
    digest = asyncio.run(push(src, ref, credentials=Credentials("alice", "secret"), concurrency=1))
    assert len(reg.issuer.issued) - before >= 2
    puts = [s.status for s in proxy.seen if s.method == "PUT" and "/blobs/uploads/" in s.path]
    assert 401 in puts and puts[-1] == 201, puts
    # what the registry holds is complete and right: a fresh pull (direct, no delay) gets the same image
    image = asyncio.run(
        pull(ImageStore(tmp_path / "check"), f"{reg.host}/slowpush/app:1", credentials=Credentials("alice", "secret"))
    )
    assert image.digest == digest
    assert (image.layer_dirs[0] / "bin" / "busybox").read_bytes() == Path("/bin/busybox").read_bytes()


def push_image_with_token(reg: TokenRegistry, repo: str, tag: str) -> str:
    """Push the three-layer busybox image through zlayer itself (alice may push)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        store = ImageStore(Path(tmp) / "s")
        ref = f"{reg.host}/{repo}:{tag}"
        import_archive(store, oci_archive(Path(tmp) / "i.tar", multi_layer_image()), tag=ref)
        return asyncio.run(push(store, ref, credentials=Credentials("alice", "secret")))


@pytest.mark.parametrize("form", ["auth", "username"])
def test_credentials_from_flags_and_docker_config(
    tmp_path: Path, images_token_registry: TokenRegistry, form: str
) -> None:
    reg = images_token_registry
    pushed = push_image_with_token(reg, "cfg/app", "1")
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_CONFIG", "ZLAYER_REGISTRY_USERNAME")}
    env.pop("ZLAYER_REGISTRY_PASSWORD", None)
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    env["HOME"] = str(home)
    ref = f"{reg.host}/cfg/app:1"

    refused = zl(tmp_path / "d0", "pull", "-q", ref, env=env)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "401" in refused.stderr and "cfg/app" in refused.stderr and "token service" in refused.stderr
    assert "without credentials" in refused.stderr and "docker login" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) <= 2, refused.stderr

    flags = zl(tmp_path / "d1", "pull", "-q", "-u", "alice", "-p", "secret", ref, env=env)
    assert flags.returncode == 0, flags.stderr
    assert pushed in flags.stdout

    entry = (
        {"auth": base64.b64encode(b"reader:readonly").decode()}
        if form == "auth"
        else {"username": "reader", "password": "readonly"}
    )
    (home / ".docker" / "config.json").write_text(json.dumps({"auths": {reg.host: entry}}))
    before = len(reg.issuer.issued)
    from_file = zl(tmp_path / "d2", "pull", "-q", ref, env=env)
    assert from_file.returncode == 0, from_file.stderr
    assert pushed in from_file.stdout
    assert any(t["user"] == "reader" for t in reg.issuer.issued[before:]), "config.json credentials were not used"
    # flags win over the config file
    before = len(reg.issuer.issued)
    assert zl(tmp_path / "d3", "pull", "-q", "-u", "alice", "-p", "secret", ref, env=env).returncode == 0
    assert {t["user"] for t in reg.issuer.issued[before:]} == {"alice"}

    # push: the reader of config.json may not, alice by flags may
    target = f"{reg.host}/cfg/copy:1"
    refused = zl(tmp_path / "d2", "image", "push", ref, target, env=env)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "cfg/copy" in refused.stderr and "401" in refused.stderr
    pushed_copy = zl(tmp_path / "d2", "image", "push", "-u", "alice", "-p", "secret", ref, target, env=env)
    assert pushed_copy.returncode == 0, pushed_copy.stderr
    assert pushed in pushed_copy.stdout


HELPER = """#!/bin/sh
# a docker-credential-helpers program: the server on stdin, its credentials as JSON on stdout
read -r server
echo "$server" >> "$0.asked"
case "$server" in
  {host}) echo '{{"ServerURL": "{host}", "Username": "reader", "Secret": "readonly"}}' ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


def test_credentials_from_docker_credential_helpers(tmp_path: Path, images_token_registry: TokenRegistry) -> None:
    """``credHelpers`` and ``credsStore`` in config.json run ``docker-credential-NAME get`` as Docker does."""
    reg = images_token_registry
    pushed = push_image_with_token(reg, "helper/app", "1")
    bindir, home = tmp_path / "bin", tmp_path / "home"
    bindir.mkdir()
    (home / ".docker").mkdir(parents=True)
    helper = bindir / "docker-credential-zltest"
    helper.write_text(HELPER.format(host=reg.host))
    helper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_CONFIG", "ZLAYER_REGISTRY_"))}
    env.update(HOME=str(home), PATH=f"{bindir}:{env['PATH']}")
    config = home / ".docker" / "config.json"
    ref = f"{reg.host}/helper/app:1"

    for n, doc in enumerate(
        [
            {"credHelpers": {reg.host: "zltest"}, "auths": {reg.host: {"username": "nobody", "password": "x"}}},
            {"credsStore": "zltest"},
        ]
    ):
        config.write_text(json.dumps(doc))
        before = len(reg.issuer.issued)
        got = zl(tmp_path / f"d{n}", "pull", "-q", ref, env=env)
        assert got.returncode == 0, got.stderr
        assert pushed in got.stdout
        assert {t["user"] for t in reg.issuer.issued[before:]} == {"reader"}, "the helper's credentials were not used"
    assert Path(f"{helper}.asked").read_text().split() == [reg.host, reg.host]

    # a helper that knows nothing of this registry: anonymous, so the registry's 401 is what the user reads
    config.write_text(json.dumps({"credHelpers": {reg.host: "zltest"}}))
    helper.write_text(HELPER.format(host="elsewhere.example"))
    refused = zl(tmp_path / "d2", "pull", "-q", ref, env=env)
    assert refused.returncode != 0 and "401" in refused.stderr and "Traceback" not in refused.stderr

    # a helper that is not installed, or answers garbage: one line naming it
    config.write_text(json.dumps({"credsStore": "absent"}))
    missing = zl(tmp_path / "d3", "pull", "-q", ref, env=env)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "docker-credential-absent" in missing.stderr and "not on PATH" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    helper.write_text("#!/bin/sh\necho 'not json'\n")
    config.write_text(json.dumps({"credsStore": "zltest"}))
    garbled = zl(tmp_path / "d4", "pull", "-q", ref, env=env)
    assert garbled.returncode != 0 and "Traceback" not in garbled.stderr
    assert "docker-credential-zltest" in garbled.stderr and "Username and Secret" in garbled.stderr
