"""The REST API and the metrics of a real node (issue 5, items 2 and 8, and the bad-input lines): the OpenAPI
document the daemon serves, answers shaped as ZLayer's document says (checked against the reference's schemas),
JSON errors with a stable code and field path, an invalid spec that changes nothing, and Prometheus series that
move as the node changes."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.daemon_live import LiveNode, web_spec
from tests.fixtures.daemon_node import unique
from tests.fixtures.images import Entry, busybox_entries, oci_archive

pytestmark = [pytest.mark.root, pytest.mark.slow]

REFERENCE = Path(__file__).resolve().parents[3].parent / "shared" / "reference" / "zlayer-openapi.yaml"
JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    if not REFERENCE.exists():
        pytest.fail(f"ZLayer's OpenAPI document (the API contract) is missing: {REFERENCE}")
    doc: dict[str, Any] = yaml.safe_load(REFERENCE.read_text())
    return doc


def _resolve(ref_doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = ref_doc["components"]["schemas"][name]
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return _resolve(ref_doc, schema["allOf"][0])
    return schema


def conforms(ref_doc: dict[str, Any], schema: dict[str, Any], value: Any, where: str = "$", depth: int = 3) -> None:
    """``value`` has every required property of the reference schema with the right JSON type (recursively)."""
    schema = _resolve(ref_doc, schema)
    if value is None:
        typ = schema.get("type")
        assert "null" in (typ if isinstance(typ, list) else [typ]) or schema.get("nullable") or "oneOf" in schema, (
            f"{where} is null, the reference says {typ}"
        )
        return
    typ = schema.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), None)
    if typ in JSON_TYPES:
        assert isinstance(value, JSON_TYPES[typ]) and not (typ in ("integer", "number") and isinstance(value, bool)), (
            f"{where}: {value!r} is not {typ}"
        )
    if depth <= 0:
        return
    if typ == "array" and "items" in schema:
        for i, item in enumerate(value[:3]):
            conforms(ref_doc, schema["items"], item, f"{where}[{i}]", depth - 1)
    if typ == "object" or "properties" in schema:
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing required {key!r} (has {sorted(value)})"
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                conforms(ref_doc, sub, value[key], f"{where}.{key}", depth - 1)


def response_schema(ref_doc: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any]:
    resp = ref_doc["paths"][path][method]["responses"][str(status)]
    schema: dict[str, Any] = resp["content"]["application/json"]["schema"]
    return schema


def test_openapi_served_and_answers_have_zlayers_shapes(
    daemon_live: LiveNode, daemon_live_names: list[str], reference: dict[str, Any]
) -> None:
    node, name = daemon_live, unique("shape")
    daemon_live_names.append(name)
    served = node.api("GET", "/api-docs/openapi.json")
    assert served["openapi"].startswith("3.") and served["info"]["title"] == "ZLayer API"
    for path, item in reference["paths"].items():
        if path.startswith(("/api/v1/deployments", "/api/v1/containers/{id}/logs", "/api/v1/cron", "/health")):
            for method in item:
                if method in ("get", "post", "put", "delete") and path in served["paths"]:
                    assert method in served["paths"][path], f"{method.upper()} {path} is not served"
    assert node.api("GET", "/swagger-ui").startswith("\n") or "swagger" in node.api("GET", "/swagger-ui").lower()

    port = node.free_port()
    created = node.deploy(web_spec(name, 2, port))
    conforms(reference, response_schema(reference, "/api/v1/deployments", "post", 201), created)
    node.expect(name)

    def check(path: str, ref_path: str, method: str = "get", status: int = 200, body: Any = None) -> Any:
        got_status, data = node.request(method.upper(), path, body)
        assert got_status == status, (path, got_status, data)
        conforms(reference, response_schema(reference, ref_path, method, status), data, path)
        return data

    check("/health/ready", "/health/ready")
    deps = check("/api/v1/deployments", "/api/v1/deployments")
    assert name in [d["name"] for d in deps]
    d = check(f"/api/v1/deployments/{name}", "/api/v1/deployments/{name}")
    assert d["status"] == "running" and d["service_health"][0]["replicas_running"] == 2
    check(f"/api/v1/deployments/{name}/spec", "/api/v1/deployments/{name}/spec")
    svcs = check(f"/api/v1/deployments/{name}/services", "/api/v1/deployments/{deployment}/services")
    assert [(s["name"], s["replicas"], s["desired_replicas"]) for s in svcs] == [("web", 2, 2)]
    assert svcs[0]["endpoints"][0]["port"] == port
    svc = check(f"/api/v1/deployments/{name}/services/web", "/api/v1/deployments/{deployment}/services/{service}")
    assert svc["replicas"] == 2
    cts = check("/api/v1/containers", "/api/v1/containers")
    mine = sorted(c["id"] for c in cts if c.get("deployment") == name)
    assert mine == ["web-rep-1", "web-rep-2"]
    one = check("/api/v1/containers/web-rep-1", "/api/v1/containers/{id}")
    assert one["state"] == "running" and one["pid"] > 0
    stats = check("/api/v1/containers/web-rep-1/stats", "/api/v1/containers/{id}/stats")
    assert stats["memory_bytes"] > 0 and stats["cpu_usage_usec"] >= 0
    images = check("/api/v1/images", "/api/v1/images")
    assert any("zlayer-svc/httpd:v1" in (i.get("reference") or str(i)) for i in images), images
    scaled = check(
        f"/api/v1/deployments/{name}/services/web/scale",
        "/api/v1/deployments/{deployment}/services/{service}/scale",
        "post",
        200,
        {"replicas": 3},
    )
    assert scaled["desired_replicas"] == 3 and scaled["replicas"] == 3
    node.api("POST", "/api/v1/containers/web-rep-2/exec", {"command": ["/bin/sh", "-c", "echo logged >/proc/1/fd/1"]})
    status, logs = node.request("GET", f"/api/v1/deployments/{name}/services/web/logs?lines=5&instance=2")
    assert status == 200 and "logged" in logs, logs
    ex = node.api("POST", "/api/v1/containers/web-rep-3/exec", {"command": ["/bin/busybox", "hostname"]})
    assert ex == {"exit_code": 0, "stdout": "web-rep-3\n", "stderr": "", "oom_killed": False}


def test_errors_are_json_with_code_and_field_path_and_an_invalid_spec_changes_nothing(
    daemon_live: LiveNode, daemon_live_names: list[str]
) -> None:
    node, name = daemon_live, unique("bad")
    daemon_live_names.append(name)
    node.deploy(web_spec(name, 1))
    node.expect(name)
    before = node.deployment(name)
    [rep] = node.containers(name, "web")

    bad = (
        f"version: v1\ndeployment: {name}\nservices:\n  web:\n"
        "    image: {name: ''}\n"
        "    scale: {mode: fixed, replicas: -2}\n"
        "    endpoints: [{name: http, protocol: gopher, port: 99999}]\n"
        "    health: {check: {type: tcp}}\n"
        "  'Bad Name!':\n    image: {name: 'x:1'}\n"
    )
    status, err = node.request("POST", "/api/v1/deployments", {"spec": bad})
    assert status == 400 and err["code"] == "invalid_spec" and err["error"] == "bad_request", err  # ZLayer's `error`
    paths = [p["path"] for p in err["problems"]]
    assert len(err["problems"]) >= 4, err
    for want in ("services.web.image", "services.web.scale", "services.web.endpoints[0]"):
        assert any(p.startswith(want) for p in paths), (want, paths)
    assert all(p["message"] for p in err["problems"])
    # nothing changed: same revision, same replica process
    after = node.deployment(name)
    assert (after["status"], after.get("revision")) == (before["status"], before.get("revision"))
    [same] = node.containers(name, "web")
    assert same["pid"] == rep["pid"]
    # a YAML syntax error says where
    status, err = node.request("POST", "/api/v1/deployments", {"spec": "version: v1\nservices: [\n"})
    assert status == 400 and err["code"] == "invalid_spec" and err["problems"][0]["line"] == 3, err
    assert ":3:1: malformed YAML" in err["message"]
    # request validation: the field path of the body
    status, err = node.request("POST", f"/api/v1/deployments/{name}/services/web/scale", {"replicas": "many"})
    assert status == 400 and err["code"] == "invalid_request" and err["where"] == "replicas", err
    status, err = node.request("POST", "/api/v1/deployments", {})
    assert status == 400 and err["where"] == "spec", err
    # unknown things are 404 with a stable code, unknown methods 405
    for path in ("/api/v1/deployments/nosuch", "/api/v1/containers/nosuch-rep-1",
                 f"/api/v1/deployments/{name}/services/nosuch"):  # fmt: skip
        status, err = node.request("GET", path)
        assert status == 404 and err["code"] == err["error"] == "not_found" and err["message"], (path, err)
    status, err = node.request("PUT", "/api/v1/deployments")
    assert status == 405 and err["code"] == "method_not_allowed"


def test_metrics_follow_the_node(daemon_live: LiveNode, daemon_live_names: list[str]) -> None:
    node, name = daemon_live, unique("metr")
    daemon_live_names.append(name)

    def m(key: str) -> float:
        return node.metrics().get(key, 0.0)

    running0 = m('zlayer_containers{state="running"}')
    deploys0 = m('zlayer_deploy_duration_seconds_count{result="success"}')
    api_key = 'zlayer_api_request_duration_seconds_count{method="GET",route="/api/v1/deployments/{name}",status="200"}'
    api0 = m(api_key)
    node.deploy(web_spec(name, 2))
    node.expect(name)  # polls GET /api/v1/deployments/{name}
    assert m('zlayer_containers{state="running"}') == running0 + 2
    assert m('zlayer_deploy_duration_seconds_count{result="success"}') == deploys0 + 1
    assert m(api_key) > api0
    assert m('zlayer_deploy_duration_seconds_sum{result="success"}') > 0
    healthy = 'zlayer_health_checks_total{result="healthy",service="web"}'
    h0 = m(healthy)
    node.wait_for(lambda: m(healthy) >= h0 + 2, 15, "health checks counted")

    # a replica's process dies: a restart is counted
    restarts = 'zlayer_container_restarts_total{service="web"}'
    r0 = m(restarts)
    [rep] = [c for c in node.containers(name, "web") if c["id"] == "web-rep-1"]
    os.kill(rep["pid"], signal.SIGKILL)
    node.wait_for(lambda: m(restarts) == r0 + 1, 30, "the restart counted")
    node.wait_for(
        lambda: [c for c in node.containers(name, "web") if c["id"] == "web-rep-1" and c["state"] == "running"],
        30,
        "web-rep-1 running again",
    )
    node.wait_for(lambda: m('zlayer_containers{state="running"}') == running0 + 2, 15, "2 running again")
    node.delete(name)
    t0 = time.monotonic()
    node.wait_for(lambda: m('zlayer_containers{state="running"}') == running0, 15, "running back to before")
    assert time.monotonic() - t0 < 15


def test_images_answer_with_the_image_id_that_import_and_image_ls_show(daemon_live: LiveNode, tmp_path: Path) -> None:
    archive = oci_archive(tmp_path / "id.tar", [busybox_entries([Entry("etc/id-check", data=b"api")])])
    out = daemon_live.zl("import", str(archive), "-t", "idcheck/api:1")
    assert out.returncode == 0, out.stderr
    found = re.search(r"image ID (sha256:[0-9a-f]{64})", out.stdout)
    assert found, out.stdout
    listed = {i["reference"]: i for i in daemon_live.api("GET", "/api/v1/images")}
    assert listed["docker.io/idcheck/api:1"]["id"] == found.group(1)
    assert listed["docker.io/idcheck/api:1"]["digest"] != found.group(1)  # the manifest's digest
    cli = {i["reference"]: i["id"] for i in json.loads(daemon_live.zl("image", "ls", "-o", "json").stdout)}
    assert cli["docker.io/idcheck/api:1"] == found.group(1)
    assert daemon_live.zl("image", "rm", found.group(1)[7:19]).returncode == 0
