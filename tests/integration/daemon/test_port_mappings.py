"""``port_mappings`` on a real node: a fixed host port and an ephemeral one (``host_port`` unset, as Docker's
``-p 8080``) both reach the replica; the port the node picked is reported by the container's inspect and by
``GET /api/v1/containers/{id}/port`` (Docker's shape)."""

from __future__ import annotations

import pytest

from tests.fixtures.daemon_node import Node, unique

pytestmark = [pytest.mark.root, pytest.mark.slow]

HTTPD = "exec /bin/busybox httpd -f -p 8080 -h /www"


def test_fixed_and_ephemeral_host_ports_reach_the_replica(daemon_node: Node, daemon_deployments: list[str]) -> None:
    node = daemon_node
    name, fixed = unique("ports"), node.free_port()
    daemon_deployments.append(name)
    node.deploy(f"""version: v1
deployment: {name}
services:
  web:
    image: {{name: "zlayer-svc/httpd:v1", pull_policy: never}}
    command: {{entrypoint: ["/bin/sh", "-c"], args: [{HTTPD!r}]}}
    stop_grace_period: 1s
    port_mappings:
      - {{container_port: 8080, host_port: {fixed}}}
      - {{container_port: 8080}}
    scale: {{mode: fixed, replicas: 1}}
    health: {{start_grace: 0s, interval: 1s, timeout: 1s, retries: 2, check: {{type: tcp, port: 8080}}}}
""")
    node.expect(name)
    [rep] = node.containers(name, "web")
    info = node.api("GET", f"/api/v1/containers/{rep['id']}")
    host_ports = sorted(p["host_port"] for p in info["ports"])
    assert fixed in host_ports and len(host_ports) == 2, info["ports"]
    ephemeral = next(p for p in host_ports if p != fixed)
    assert ephemeral > 0
    assert node.api("GET", f"/api/v1/containers/{rep['id']}/port") == {
        "Ports": {"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(p)} for p in [fixed, ephemeral]]}
    }
    gateway = info["ipv4"].rsplit(".", 1)[0] + ".1"  # the node's own address on its bridge
    for port in (fixed, ephemeral):
        status, body = node.in_ns(lambda port=port: _get(f"http://{gateway}:{port}/"))
        assert (status, body) == (200, "v1\n"), (port, status, body)


def _get(url: str) -> tuple[int, str]:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except OSError as e:
        return 0, repr(e)
