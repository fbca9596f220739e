"""Traces an operator collects: with ZLayer's OTEL_* variables the daemon exports, over OTLP to a receiver this test
runs (gRPC and HTTP/protobuf), a span per API request and a deploy's steps under it — image pull, container create,
start and the wait for health — with ZLayer's attributes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.fixtures.daemon_node import service_image

pytestmark = [pytest.mark.root, pytest.mark.slow]

SPEC = """version: v1
deployment: {name}
services:
  app:
    image: {{name: 'zlayer-svc/trace:v1', pull_policy: never}}
    command: {{entrypoint: ['/bin/sh', '-c'], args: ['exec /bin/busybox sleep 600']}}
    stop_grace_period: 1s
    scale: {{mode: fixed, replicas: 1}}
    health: {{start_grace: 0s, interval: 1s, timeout: 1s, retries: 1, check: {{type: command, command: 'true'}}}}
"""


class Spans:
    """What a receiver got: every span as (name, attributes, trace id, span id, parent id) and the resources."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.resources: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def add(self, req: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self.lock:
            for rs in req.resource_spans:
                self.resources.append({a.key: a.value.string_value for a in rs.resource.attributes})
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        attrs = {a.key: (a.value.string_value or a.value.int_value) for a in sp.attributes}
                        self.spans.append({"name": sp.name, "attrs": attrs, "trace": sp.trace_id.hex(),
                                           "id": sp.span_id.hex(), "parent": sp.parent_span_id.hex()})  # fmt: skip

    def wait_for(self, names: set[str], timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if names <= {s["name"] for s in self.spans}:
                    return list(self.spans)
            time.sleep(0.2)
        raise AssertionError(f"spans never came: {names - {s['name'] for s in self.spans}}; got {self.spans}")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_receiver() -> Iterator[tuple[str, Spans]]:
    got = Spans()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            assert self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
            req = trace_service_pb2.ExportTraceServiceRequest()
            req.ParseFromString(body)
            got.add(req)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", got
    server.shutdown()


@pytest.fixture
def grpc_receiver() -> Iterator[tuple[str, Spans]]:
    got = Spans()

    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            got.add(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}", got
    server.stop(0)


def _deploy_and_collect(tmp_path: Path, otel: dict[str, str], got: Spans) -> list[dict[str, Any]]:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(ZLAYER_NODE_NETWORK="off", PYTHONPATH=str(Path(__file__).resolve().parents[3]), **otel)
    zl = [sys.executable, "-m", "zlayer", "--data-dir", str(data)]
    tar = service_image(tmp_path / "img.tar", "trace\n")
    subprocess.run([*zl, "import", str(tar), "-t", "zlayer-svc/trace:v1"], env=env, check=True, capture_output=True)
    serve = [*zl, "serve", "--bind", "none", "--dns-port", str(_port())]
    proc = subprocess.Popen(serve, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (data / "daemon.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        spec = tmp_path / "trace.zlayer.yml"
        spec.write_text(SPEC.format(name="traced"))
        r = subprocess.run([*zl, "deploy", str(spec)], env={**env, "ZLAYER_NO_AUTOSTART": "1"}, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        subprocess.run([*zl, "down", "traced"], env={**env, "ZLAYER_NO_AUTOSTART": "1"}, capture_output=True,
                       timeout=300)  # fmt: skip
        proc.terminate()  # the last batch is flushed on the way out
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    return got.wait_for({"deploy", "image.pull", "container.create", "container.start", "container.health",
                         "POST /api/v1/deployments"})  # fmt: skip


def _check(spans: list[dict[str, Any]], got: Spans) -> None:
    by_name = {s["name"]: s for s in spans}
    post, deploy = by_name["POST /api/v1/deployments"], by_name["deploy"]
    assert post["attrs"]["http.route"] == "/api/v1/deployments" and post["attrs"]["http.response.status_code"] in (
        200, 201, 202)  # fmt: skip
    # the deploy hangs under the request that started it (through FastAPI's own endpoint span); its steps under
    # the deploy, in one trace
    parents = {sp["id"]: sp["parent"] for sp in spans}

    def ancestors(span_id: str) -> list[str]:
        chain = []
        while parents.get(span_id):
            span_id = parents[span_id]
            chain.append(span_id)
        return chain

    assert post["id"] in ancestors(deploy["id"]) and deploy["attrs"]["zlayer.deployment"] == "traced"
    for step in ("image.pull", "container.create", "container.start", "container.health"):
        assert deploy["id"] in ancestors(by_name[step]["id"]) and by_name[step]["trace"] == post["trace"], step
    create = by_name["container.create"]
    assert create["attrs"]["container.image.name"] == "zlayer-svc/trace:v1" and create["attrs"]["container.runtime"]
    assert create["attrs"]["zlayer.service"] == "app" and create["attrs"]["container.id"]
    assert {"service.name": "zlayer-test", "deployment.environment": "ci"}.items() <= got.resources[0].items()


def test_otlp_grpc(tmp_path: Path, grpc_receiver: tuple[str, Spans]) -> None:
    endpoint, got = grpc_receiver
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "zlayer-test", "DEPLOYMENT_ENVIRONMENT": "ci",
            "OTEL_EXPORTER_OTLP_INSECURE": "true"}  # fmt: skip
    _check(_deploy_and_collect(tmp_path, otel, got), got)


def test_otlp_http_protobuf(tmp_path: Path, http_receiver: tuple[str, Spans]) -> None:
    endpoint, got = http_receiver
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_SERVICE_NAME": "zlayer-test", "DEPLOYMENT_ENVIRONMENT": "ci"}  # fmt: skip
    _check(_deploy_and_collect(tmp_path, otel, got), got)


def test_a_bad_protocol_is_refused_before_the_daemon_starts(tmp_path: Path) -> None:
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "udp"}
    r = subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(tmp_path / "d"), "serve", "--bind", "none"],
                       env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode != 0 and "OTEL_EXPORTER_OTLP_PROTOCOL='udp'" in r.stderr and "grpc, http/protobuf" in r.stderr
    assert "Traceback" not in r.stderr
