"""A live daemon answers hostile request bodies with a clear 4xx and keeps serving: nesting 50,000 levels deep (as
JSON and as YAML inside the spec), bodies over the size limit, a spec that is not valid Unicode, a 5,000-digit
number, a NUL byte in a name; and hostile names in the path of every route that takes one, and request heads far
over the limit. Before the limits, the deep YAML spec killed the daemon (C stack exhaustion in the YAML composer)."""

from __future__ import annotations

import http.client
import json
import re
import urllib.parse
from typing import Any

import pytest

from tests.fixtures.api_routes import app_routes
from tests.fixtures.daemon import httpd_service
from zlayer.api.app import create_app
from zlayer.errors import shown

DEEP = 50_000


def post(d: Any, body: bytes, path: str = "/api/v1/deployments", ctype: str | None = "application/json") -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    headers = {"Authorization": f"Bearer {d.token}"}
    if ctype is not None:
        headers["Content-Type"] = ctype
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def spec_body(text: str) -> bytes:
    return json.dumps({"spec": text}).encode()


def still_serving(d: Any) -> None:
    """The same daemon process answers and deploys after the hostile request."""
    assert d.proc.poll() is None, d.read_log()
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    conn.request("GET", "/health/live")
    assert conn.getresponse().status == 200
    conn.close()


HOSTILE = {
    "json-array-50000-deep": (b"[" * DEEP + b"]" * DEEP, None, "recursion limit exceeded"),
    "json-object-50000-deep-unclosed": (b'{"spec": ' + b'{"a": ' * DEEP, None, "recursion limit exceeded"),
    "json-deep-without-content-type": (b"[" * DEEP, "", "recursion limit exceeded"),
    "yaml-flow-50000-deep": (spec_body("[" * DEEP), None, "recursion limit exceeded"),
    "yaml-block-50000-deep": (spec_body("- " * DEEP + "x\n"), None, "recursion limit exceeded"),
    "yaml-nested-under-a-service": (
        spec_body("version: v1\ndeployment: deep\nservices:\n  web:\n    labels: {a: " + "[" * DEEP + "}\n"),
        None,
        "recursion limit exceeded",
    ),
    "body-not-utf8": (b'{"spec": "version: v1\xff"}', None, "request body: not UTF-8 text (byte 21: 0xff)"),
    "spec-with-lone-surrogate": (b'{"spec": "version: v1\\ndeployment: \\ud800x\\n"}', None, "lone surrogate"),
    "spec-over-size-limit": (spec_body("#" * (5 << 20)), None, "spec too large"),
    "body-over-size-limit": (b'{"spec": "' + b"x" * (17 << 20) + b'"}', None, "request body too large"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_body_is_a_clear_client_error_and_the_daemon_keeps_serving(daemon_process: Any, case: str) -> None:
    d = daemon_process()
    body, ctype, words = HOSTILE[case]
    status, answer = post(d, body, ctype=ctype if ctype is not None else "application/json")
    assert status in (400, 413), answer
    assert words in answer["message"], answer
    assert "Traceback" not in d.read_log()
    still_serving(d)


def test_values_in_errors_are_shown_safely(daemon_process: Any) -> None:
    d = daemon_process()
    big = "9" * 5000
    service = httpd_service(1).replace("replicas: 1", f"replicas: {big}") + f"    stop_grace_period: {big}s\n"
    status, answer = post(d, spec_body(f"version: v1\ndeployment: abc\nservices:\n  web:\n{service}"))
    text = json.dumps(answer)
    assert status == 400 and answer["code"] == "invalid_spec", answer
    assert "set_int_max_str_digits" not in text and "4300" not in text, text
    assert {p["path"] for p in answer["problems"]} == {"services.web.scale.replicas", "services.web.stop_grace_period"}
    assert all(len(p["message"]) < 200 for p in answer["problems"]), answer  # the value is cut short
    status, answer = post(d, spec_body('version: v1\ndeployment: "pro\\0be"\nservices: {}\n'))
    assert status == 400 and "(got 'pro\\x00be')" in answer["problems"][0]["message"], answer
    still_serving(d)


# Path parameters a client could send to name a thing: climbing out (raw, encoded, doubly encoded), a NUL, a
# control character, a name far past any limit, and a glob. Each is sent to every route that takes a name.
HOSTILE_NAMES = ["..", "../../../../etc/passwd", "%2e%2e", "%252e%252e%252fetc", "a\x00b", "\u202e", "x" * 8000,
                 "*", "web-rep-1/../../../../etc"]  # fmt: skip


def request(d: Any, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    body = b"{}" if method in ("POST", "PUT") else None
    sent = {"Authorization": f"Bearer {d.token}", "Content-Type": "application/json", **(headers or {})}
    try:
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_hostile_names_on_every_route_are_clear_answers_and_touch_nothing(daemon_process: Any) -> None:
    """Every route that takes a name, sent every hostile name (in the path, raw and percent-encoded): a clear 4xx,
    never a 500 or a dead daemon, and the deployment that runs meanwhile is untouched."""
    d = daemon_process()
    spec = f"version: v1\ndeployment: keep\nservices:\n  web:\n{httpd_service(18391)}"
    status, answer = post(d, spec_body(spec))
    assert status in (200, 201, 202), answer
    before = request(d, "GET", "/api/v1/deployments/keep")
    routes = [r for r in app_routes(create_app(None)) if "{" in r.path and r.method != "WEBSOCKET"]
    assert len(routes) > 15
    bad = []
    for route in routes:
        for name in HOSTILE_NAMES:
            quoted = urllib.parse.quote(name, safe="" if name != ".." else ".")
            path = re.sub(r"\{\w+\}", quoted, route.path)
            status, raw = request(d, route.method, path)
            # (an answer to HEAD has no body to carry the error's code: its status says it)
            if status >= 500 or (status >= 400 and route.method != "HEAD" and b'"code"' not in raw):
                bad.append((route.method, path[:120], status, raw[:300]))
            assert d.proc.poll() is None, (route.method, path[:120], d.read_log()[-3000:])
    assert bad == [], bad
    assert request(d, "GET", "/api/v1/deployments/keep")[0] == before[0] == 200
    assert b'"keep"' in request(d, "GET", "/api/v1/deployments")[1]
    assert "Traceback" not in d.read_log()
    still_serving(d)


def test_a_huge_or_endless_request_head_is_refused_and_the_daemon_keeps_serving(daemon_process: Any) -> None:
    d = daemon_process()
    for headers in ({"X-Big": "a" * (1 << 20)}, {f"X-H{i}": "v" for i in range(100_000)}):
        try:
            status, _ = request(d, "GET", "/api/v1/deployments", headers)
        except (ConnectionError, http.client.HTTPException):
            status = 0  # the server may close a head it will not read
        assert status in (0, 400, 413, 431), (status, len(headers))
        assert d.proc.poll() is None, d.read_log()
    still_serving(d)


@pytest.mark.parametrize(
    ("service", "volume"), [("../../x", "web"), ("web", "../../../escaped"), ("web", "/etc"), ("a\x00b", "web")]
)
def test_names_that_become_paths_on_the_node_are_refused(daemon_process: Any, service: str, volume: str) -> None:
    """A service's name names its containers' directories and a named volume's its directory under the data dir:
    '..', '/' or a NUL in them would create, chmod and mount host directories outside it."""
    d = daemon_process()
    storage = [{"type": "named", "name": volume, "target": "/data"}]
    services = {service: {"image": "busybox:latest", "storage": storage}}
    spec = {"version": "v1", "deployment": "paths", "services": services}
    status, answer = post(d, spec_body(json.dumps(spec)))
    assert status == 400 and answer["code"] == "invalid_spec", answer
    bad = service if service != "web" else volume
    assert any(shown(bad) in p["message"] for p in answer["problems"]), answer
    assert not (d.data_dir.parent / "escaped").exists() and not (d.data_dir.parent / "x-rep-1").exists()
    still_serving(d)


def test_a_nul_byte_or_an_env_name_with_equals_in_a_service_is_refused_where_it_stands(daemon_process: Any) -> None:
    """Strings of a service become argv, environment and paths in C, where a NUL ends them without a word
    (entrypoint '/bin/sh\\0x' ran /bin/sh), and an env name 'A=B' set A to 'B=...'."""
    d = daemon_process()
    storage = [{"type": "bind", "source": "/tmp\x00/x", "target": "/d"}]
    command = {"entrypoint": ["/bin/sh\x00x"], "args": ["a\x00b"]}
    env = {"A=B": "x", "K": "v\x00w"}
    web = {"image": {"name": "busybox:latest"}, "command": command, "env": env, "storage": storage}
    status, answer = post(d, spec_body(json.dumps({"version": "v1", "deployment": "nuls", "services": {"web": web}})))
    assert status == 400 and answer["code"] == "invalid_spec", answer
    paths = {p["path"] for p in answer["problems"]}
    assert paths == {"services.web.command.entrypoint[0]", "services.web.command.args[0]", "services.web.env.A=B",
                     "services.web.env.K", "services.web.storage[0].source"}, answer  # fmt: skip
    assert any(p["message"].startswith("'/bin/sh\\x00x' holds a NUL byte") for p in answer["problems"]), answer
    still_serving(d)
