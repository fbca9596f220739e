"""Issue 16: authorization is decided from one route table, so a route added without a rule fails here."""

from __future__ import annotations

from tests.fixtures.api_routes import app_routes
from zlayer.api import create_app
from zlayer.api.auth import RULES
from zlayer.security.rbac import KINDS


def test_every_route_of_the_app_has_a_rule_and_every_rule_a_route() -> None:
    routes = {(r.method, r.path) for r in app_routes(create_app(None))}  # type: ignore[arg-type]
    missing = sorted(routes - set(RULES))
    assert not missing, f"routes without an authorization rule in zlayer/api/auth.py RULES: {missing}"
    stale = sorted(set(RULES) - routes)
    assert not stale, f"rules for routes the app does not have: {stale}"
    for (method, path), rule in RULES.items():
        assert rule.need in ("public", "authenticated", "read", "execute", "write", "admin", "peer"), (method, path)
        assert rule.kind in KINDS, (method, path, rule.kind)
        assert rule.id is None or rule.id.startswith("@") or "{" + rule.id + "}" in path, (method, path, rule.id)
        if method in ("POST", "PUT", "PATCH", "DELETE", "WEBSOCKET"):
            assert rule.need != "read", f"{method} {path} changes something but only needs read"
