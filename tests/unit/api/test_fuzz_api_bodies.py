"""Fuzzing the API's JSON bodies against a live daemon (a `zlayer serve` process, over TCP with its token): every
route that takes a body, with fuzzed path parameters, bodies, content types and raw bytes. Whatever arrives, the
answer is a success or a clear 4xx error in the API's JSON form — never a 500, a dropped connection or a dead
daemon. Bounded: a few hundred requests per property on one daemon.

No deployment exists, so the write routes that run things (exec, scale) meet only unknown names."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.fixtures.fuzz import BOUNDED, SPEC_TEXT

ROUTES = [  # (method, path with {} for the fuzzed parameter, field names of the body model)
    ("POST", "/api/v1/deployments", ["spec"]),
    ("DELETE", "/api/v1/deployments/{}", []),
    ("POST", "/api/v1/deployments/{}/services/web/scale", ["replicas"]),
    ("POST", "/api/v1/deployments/app/services/{}/exec", ["command", "replica"]),
    ("POST", "/api/v1/containers/{}/exec", ["command", "replica"]),
    ("POST", "/api/v1/images/pull", ["reference"]),
    ("POST", "/api/v1/jobs/{}/trigger", []),
    ("POST", "/api/v1/jobs/{}/cancel", []),
    ("PUT", "/api/v1/cron/{}/enable", []),
    ("POST", "/api/v1/cron/{}/trigger", []),
]
NASTY = st.sampled_from(["", "\x00", "\ud800", "\u202e", "9" * 5000, "[" * 50_000, "-1", "1e999", "../..", "%00",
                         "a" * 10_000, "version: v1\ndeployment: " + "[" * 50_000])  # fmt: skip
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30), NASTY,
                    st.integers(min_value=10**300, max_value=10**1000))  # fmt: skip
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
CTYPES = st.sampled_from([None, "application/json", "application/json; charset=utf-8", "application/vnd.x+json",
                          "text/plain", "application/octet-stream", "APPLICATION/JSON"])  # fmt: skip


def body_for(fields: list[str]) -> st.SearchStrategy[bytes]:
    values = {f: (SPEC_TEXT | JSON) if f == "spec" else JSON for f in fields}
    shaped = st.fixed_dictionaries({}, optional=values) if fields else JSON
    as_json = (shaped | JSON).map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass"))
    deep = st.integers(100, 60_000).map(lambda n: b'{"spec": ' * (n % 3) + b"[" * n)
    return as_json | deep | st.binary(max_size=200) | NASTY.map(lambda s: s.encode("utf-8", "surrogatepass"))


# Path parameters stay under the HTTP server's 16 KiB request head (h11 refuses a longer one before the app runs).
PARAM = st.text(min_size=1, max_size=20) | st.sampled_from(
    ["\x00", "\ud800", "\u202e", "9" * 4000, "..", "%00", "[" * 2000]
)
REQUEST = st.sampled_from(ROUTES).flatmap(
    lambda r: st.tuples(st.just(r[0]), st.just(r[1]), PARAM, body_for(r[2]), CTYPES)
)


def send(d: Any, method: str, path: str, body: bytes, ctype: str | None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    headers = {"Authorization": f"Bearer {d.token}"}
    if ctype is not None:
        headers["Content-Type"] = ctype
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@BOUNDED
@given(request=REQUEST)
def test_any_body_to_any_route_is_a_clear_answer(
    daemon_process: Any, request: tuple[str, str, str, bytes, Any]
) -> None:
    d = getattr(daemon_process, "fuzzed", None) or daemon_process("fuzz")
    daemon_process.fuzzed = d  # one daemon for every example
    method, template, param, body, ctype = request
    path = template.format(urllib.parse.quote(param.encode("utf-8", "surrogatepass"), safe=""))
    status, raw = send(d, method, path, body, ctype)
    assert status < 500, (status, raw[:500])
    if status >= 400:
        answer = json.loads(raw)
        assert answer["code"] and answer["message"], answer
        assert "Traceback" not in answer["message"] and "sys.set_int_max_str_digits" not in answer["message"]
    assert d.proc.poll() is None, d.read_log()


@BOUNDED
@given(spec=SPEC_TEXT, ctype=CTYPES)
def test_any_spec_text_submitted_is_a_clear_answer(daemon_process: Any, spec: str, ctype: str | None) -> None:
    d = getattr(daemon_process, "fuzzed", None) or daemon_process("fuzz")
    daemon_process.fuzzed = d
    body = json.dumps({"spec": spec}).encode("utf-8", "surrogatepass")
    status, raw = send(d, "POST", "/api/v1/deployments", body, ctype)
    assert status < 500, (status, raw[:500])
    answer = json.loads(raw)
    if status >= 400:
        assert answer["code"] and answer["message"] and "sys.set_int_max_str_digits" not in raw.decode(), answer
    else:  # a valid spec got through: take it down again so nothing runs on
        assert send(d, "DELETE", f"/api/v1/deployments/{urllib.parse.quote(answer['name'])}", b"", None)[0] == 204
    assert d.proc.poll() is None, d.read_log()


QUERIES = [
    "/api/v1/deployments/app/events?follow=false&after={}",
    "/api/v1/jobs/app/executions?limit={}",
    "/api/v1/deployments/app/services/web/logs?lines={}",
    "/api/v1/containers/app-web-rep-1/logs?tail={}",
]
NUMBERS = st.integers() | st.integers(min_value=2**31, max_value=2**200) | st.integers(max_value=-(2**31))


@BOUNDED
@given(
    template=st.sampled_from(QUERIES), number=NUMBERS | st.text(max_size=10) | st.sampled_from(["9" * 5000, "1e999"])
)
def test_any_number_in_a_query_is_a_clear_answer(daemon_process: Any, template: str, number: object) -> None:
    d = getattr(daemon_process, "fuzzed", None) or daemon_process("fuzz")
    daemon_process.fuzzed = d
    value = str(number) if not isinstance(number, str) else number
    status, raw = send(d, "GET", template.format(urllib.parse.quote(value.encode("utf-8", "surrogatepass"))), b"", None)
    assert status < 500, (status, raw[:500])
    assert d.proc.poll() is None, d.read_log()
