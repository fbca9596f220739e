"""A deployment that asks for a port something else holds is refused at deploy, with the holder named (issue 11,
item 8): another deployment's endpoint or port mapping, the daemon's own API or metrics listener, another program.
Before, both deployments showed "running" while one of them got all the traffic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon_live import LiveNode, web_spec
from tests.fixtures.daemon_node import unique

pytestmark = [pytest.mark.root, pytest.mark.slow]


def refused(node: LiveNode, spec: str) -> str:
    """Deploy ``spec`` expecting a 409; returns the error's ``where: message``. The deployment is not stored."""
    status, body = node.request("POST", "/api/v1/deployments", {"spec": spec})
    assert status == 409, (status, body)
    assert body["code"] == "conflict", body
    name = spec.split("deployment: ", 1)[1].split("\n", 1)[0]
    assert node.request("GET", f"/api/v1/deployments/{name}")[0] == 404
    return f"{body.get('where')}: {body['message']}"


def holding(node: LiveNode, names: list[str], prefix: str) -> tuple[str, str, int]:
    """A running deployment with a public HTTP endpoint: (its name, a name for a second one, the port)."""
    first, second, port = unique(f"{prefix}first"), unique(f"{prefix}second"), node.free_port()
    names += [first, second]
    node.deploy(web_spec(first, 1, port=port))
    node.expect(first)
    return first, second, port


def mapped(port: int) -> str:
    return f"    port_mappings: [{{container_port: 8080, host_port: {port}}}]\n"


def test_an_endpoint_port_of_another_deployment_is_refused_and_a_redeploy_is_not(
    daemon_live: LiveNode, daemon_live_names: list[str]
) -> None:
    node = daemon_live
    first, second, port = holding(node, daemon_live_names, "ep")
    assert refused(node, web_spec(second, 1, port=port)) == (
        f"services.web.endpoints[0].port: tcp port {port} on every address is already taken by "
        f"deployment '{first}' (service 'web', endpoint 'http')"
    )
    # an internal endpoint (127.0.0.1) meets the public one (every address) as well
    assert f"deployment '{first}'" in refused(node, web_spec(second, 1, port=port, expose="internal"))
    assert node.get(port) == (200, "v1\n")  # the first keeps its port
    # the same deployment again, with the same endpoint: no conflict with itself
    node.deploy(web_spec(first, 1, port=port))
    node.expect(first)
    assert node.get(port) == (200, "v1\n")


def test_an_external_endpoint_holds_its_port_as_a_service_endpoint_does(
    daemon_live: LiveNode, daemon_live_names: list[str]
) -> None:
    node, legacy, web = daemon_live, unique("legacy"), unique("web")
    daemon_live_names += [legacy, web]
    port = node.free_port()
    node.deploy(f"version: v1\ndeployment: {legacy}\nservices: {{}}\nexternals:\n  db:\n"
                f"    backends: ['127.0.0.1:5432']\n"
                f"    endpoints: [{{name: pg, protocol: tcp, port: {port}, expose: public}}]\n")  # fmt: skip
    node.expect(legacy)
    assert refused(node, web_spec(web, 1, port=port)).endswith(f"deployment '{legacy}' (external 'db', endpoint 'pg')")


def test_two_services_of_one_deployment_on_one_port_are_refused(daemon_live: LiveNode) -> None:
    node, name, port = daemon_live, unique("twice"), daemon_live.free_port()
    api = web_spec(name, 1, port=port).split("services:\n", 1)[1].replace("  web:\n", "  api:\n")
    assert refused(node, web_spec(name, 1, port=port) + api).endswith(
        f"is already taken by deployment '{name}' (service 'web', endpoint 'http')"
    )


def test_port_mappings_meet_other_port_mappings_and_endpoints(
    daemon_live: LiveNode, daemon_live_names: list[str]
) -> None:
    node, first, second = daemon_live, unique("pmfirst"), unique("pmsecond")
    daemon_live_names += [first, second]
    host_port, endpoint = node.free_port(), node.free_port()
    node.deploy(web_spec(first, 1, port=endpoint, extra=mapped(host_port)))
    node.expect(first)
    assert refused(node, web_spec(second, 1, extra=mapped(host_port))) == (
        f"services.web.port_mappings[0].host_port: tcp port {host_port} on every address is already taken by "
        f"deployment '{first}' (service 'web', port_mappings[0])"
    )
    assert refused(node, web_spec(second, 1, extra=mapped(endpoint))).endswith(
        f"deployment '{first}' (service 'web', endpoint 'http')"
    )


def test_the_daemons_own_listeners_are_refused(daemon_live: LiveNode) -> None:
    node = daemon_live
    api = refused(node, web_spec(unique("api"), 1, port=node.api_port))
    assert api.endswith(f"already taken by the zlayer API (--bind 127.0.0.1:{node.api_port})"), api
    metrics = refused(node, web_spec(unique("metrics"), 1, extra=mapped(node.metrics_port)))
    assert metrics.endswith(f"the metrics listener (--metrics-bind 127.0.0.1:{node.metrics_port})"), metrics
    # the API and the metrics still answer
    assert node.tcp("GET", "/health/live")[0] == 200
    assert node.metrics()


def test_a_port_another_program_listens_on_is_refused_naming_it(daemon_live: LiveNode) -> None:
    node, port = daemon_live, daemon_live.free_port()
    code = (
        f"import socket,sys\ns=socket.socket();s.bind(('0.0.0.0',{port}));s.listen()\n"
        "sys.stdout.write('ready\\n');sys.stdout.flush();sys.stdin.read()"
    )
    holder = subprocess.Popen(["nsenter", f"--net=/run/netns/{node.ns}", sys.executable, "-c", code],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        why = refused(node, web_spec(unique("busy"), 1, port=port))
        assert f"is already taken by another program on this host (pid {holder.pid}, python" in why, why
    finally:
        holder.kill()
        holder.wait()


def test_the_cli_prints_the_refusal_and_exits_non_zero(
    daemon_live: LiveNode, daemon_live_names: list[str], tmp_path: Path
) -> None:
    node = daemon_live
    first, second, port = holding(node, daemon_live_names, "cli")
    spec = tmp_path / "second.zlayer.yml"
    spec.write_text(web_spec(second, 1, port=port))
    r: Any = subprocess.run([sys.executable, "-m", "zlayer", "--data-dir", str(node.data), "deploy", str(spec)],
                            env={**node.env, "ZLAYER_NO_AUTOSTART": "1"}, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    assert f"tcp port {port} on every address is already taken by deployment '{first}'" in r.stderr, r.stderr
    assert node.request("GET", f"/api/v1/deployments/{second}")[0] == 404
