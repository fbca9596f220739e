"""Issue 16 item 6: OIDC sign-in with a provider from ZLayer's ZLAYER_OIDC_<NAME>_* variables, against an OIDC
provider the test runs locally (tests/fixtures/oidc.py): discovery, the authorization-code flow with PKCE, state
and nonce used once, the ID token verified against the provider's JWKS, the identity mapped to one local account;
a replayed callback, a token signed with another key and a token with another nonce are refused with 401."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.fixtures.daemon import DaemonProcess, kill_host_containers
from tests.fixtures.oidc import OidcProvider


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
    conn.request("GET", u.path + (f"?{u.query}" if u.query else ""), headers=headers or {})
    resp = conn.getresponse()
    raw = resp.read()
    heads = {k.lower(): v for k, v in resp.getheaders()}
    cookies = [v for k, v in resp.getheaders() if k.lower() == "set-cookie"]
    heads["set-cookie"] = "; ".join(c.split(";")[0] for c in cookies)
    try:
        return resp.status, heads, json.loads(raw) if raw else None
    except ValueError:
        return resp.status, heads, raw.decode(errors="replace")


def test_oidc_sign_in_against_a_local_provider(tmp_path: Path, oidc_provider: OidcProvider) -> None:
    env = {"ZLAYER_RUNTIME_FACTORY": "tests.fixtures.daemon:host_runtime_factory", "PYTHONPATH": str(Path.cwd()),
           "ZLAYER_NODE_NETWORK": "off"}  # fmt: skip
    d = DaemonProcess(tmp_path / "d", env)
    api = f"http://127.0.0.1:{d.port}"
    d.env.update({"ZLAYER_OIDC_LOCAL_ISSUER": oidc_provider.issuer, "ZLAYER_OIDC_LOCAL_CLIENT_ID": "zlayer",
                  "ZLAYER_OIDC_LOCAL_CLIENT_SECRET": "client-s3cret", "ZLAYER_OIDC_LOCAL_DISPLAY_NAME": "Local IdP",
                  "ZLAYER_OIDC_LOCAL_REDIRECT_URL": f"{api}/auth/oidc/local/callback"})  # fmt: skip
    d.start()
    try:
        assert _get(f"{api}/auth/oidc/providers")[2] == [{"name": "local", "display_name": "Local IdP"}]
        assert _get(f"{api}/auth/oidc/nope/start")[0] == 404

        def sign_in() -> tuple[str, int, Any, dict[str, str]]:
            status, heads, _ = _get(f"{api}/auth/oidc/local/start")
            assert status == 302, (status, heads)
            asked = parse_qs(urlparse(heads["location"]).query)
            assert asked["code_challenge_method"] == ["S256"] and asked["scope"] == ["openid email profile"]
            assert asked["state"][0] and asked["nonce"][0] and asked["code_challenge"][0]
            status, heads, _ = _get(heads["location"])  # the provider signs the person in and sends them back
            assert status == 302 and heads["location"].startswith(f"{api}/auth/oidc/local/callback?"), heads
            callback = heads["location"]
            status, heads, body = _get(callback)
            return callback, status, body, heads

        callback, status, body, heads = sign_in()
        assert status == 200, body
        assert body["provider"] == "local" and body["user"]["email"] == "alice@example.com"
        assert body["user"]["role"] == "user" and "zlayer_session=" in heads["set-cookie"]
        assert "code_verifier" in oidc_provider.token_requests[-1]  # PKCE
        me = _get(f"{api}/auth/me", {"Authorization": f"Bearer {body['token']}"})[2]
        assert me["id"] == body["user"]["id"] and me["display_name"] == "Alice"
        status, _, again = _get(callback)  # the state was used: a replayed callback is refused
        assert status == 401, again
        assert sign_in()[2]["user"]["id"] == body["user"]["id"]  # the same person maps to the same account

        oidc_provider.sign_with_other_key = True
        _, status, refused, _ = sign_in()
        assert status == 401 and "does not verify" in refused["message"], refused
        oidc_provider.sign_with_other_key, oidc_provider.wrong_nonce = False, True
        _, status, refused, _ = sign_in()
        assert status == 401 and "does not verify" in refused["message"], refused
        status, _, refused = _get(f"{api}/auth/oidc/local/callback?code=x&state=made-up")
        assert status == 401, refused
        users = _get(f"{api}/api/v1/users", {"Authorization": f"Bearer {d.token}"})[2]
        assert [u["email"] for u in users] == ["alice@example.com"]
    finally:
        d.terminate()
        kill_host_containers(tmp_path)
