"""The proxy's live state through the daemon's API (``/api/v1/proxy/routes|backends|streams``), as ZLayer serves it,
and its per-route series on the daemon's ``--metrics-bind``: a deployed HTTP endpoint and a TCP endpoint show up
with their replicas as backends, and go away with the deployment."""

from __future__ import annotations

import pytest

from tests.fixtures.daemon_node import Node, unique

pytestmark = [pytest.mark.root, pytest.mark.slow]

HTTPD = "exec /bin/busybox httpd -f -p 8080 -h /www"


def spec(name: str, http_port: int, tcp_port: int) -> str:
    return f"""version: v1
deployment: {name}
services:
  web:
    image: {{name: "zlayer-svc/httpd:v1", pull_policy: never}}
    command: {{entrypoint: ["/bin/sh", "-c"], args: [{HTTPD!r}]}}
    stop_grace_period: 1s
    endpoints:
      - {{name: http, protocol: http, port: {http_port}, target_port: 8080, expose: public, path: /}}
      - {{name: raw, protocol: tcp, port: {tcp_port}, target_port: 8080, expose: public}}
    labels: {{zlayer.proxy.strategy.http: least_connections}}
    scale: {{mode: fixed, replicas: 2}}
    health: {{start_grace: 0s, interval: 1s, timeout: 1s, retries: 2, check: {{type: tcp, port: 8080}}}}
"""


def metric(text: str, name: str, *labels: str) -> float:
    """The value of the first ``name{...}`` sample whose labels contain all of ``labels``."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(lb in line for lb in labels):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} sample with {labels}")


def test_routes_backends_and_streams_show_the_live_deployment(daemon_node: Node, daemon_deployments: list[str]) -> None:
    node = daemon_node
    name, http_port, tcp_port = unique("pxapi"), node.free_port(), node.free_port()
    daemon_deployments.append(name)
    node.deploy(spec(name, http_port, tcp_port))
    node.expect(name)
    assert node.get(http_port)[0] == 200

    routes = node.api("GET", "/api/v1/proxy/routes")
    mine = [r for r in routes["routes"] if r["service"] == "web" and r["endpoint"] == "http"]
    assert len(mine) == 1 and routes["total"] == len(routes["routes"]), routes
    route = mine[0]
    assert route["path_prefix"] == "/" and route["protocol"] == "http" and route["target_port"] == 8080
    assert len(route["backends"]) == 2 and all(b.endswith(":8080") for b in route["backends"]), route

    groups = node.api("GET", "/api/v1/proxy/backends")
    web = [g for g in groups["groups"] if g["service"] == "web#http"]  # one group per endpoint: service#endpoint
    assert web and groups["total_groups"] == len(groups["groups"]), groups
    assert web[0]["healthy_count"] == web[0]["total_count"] == 2, web
    assert web[0]["strategy"] == "least_connections"  # the label chose it for this endpoint
    raw_group = [g for g in groups["groups"] if g["service"] == "web#raw"]
    assert raw_group and raw_group[0]["strategy"] == "round_robin"
    assert sorted(b["address"] for b in web[0]["backends"]) == sorted(route["backends"])

    streams = node.api("GET", "/api/v1/proxy/streams")
    raw = [s for s in streams["streams"] if s["service"] == "web"]
    assert [(s["protocol"], s["port"], s["backend_count"]) for s in raw] == [("tcp", tcp_port, 2)], streams
    assert streams["tcp_count"] >= 1 and streams["total"] == len(streams["streams"])
    assert node.connect_ok("127.0.0.1", tcp_port)
    for _ in range(5):
        assert node.get(http_port)[0] == 200
    # a request is counted once the proxy has finished it, a moment after the client has its answer
    metrics = node.wait_for(
        lambda: (
            (m := node.get(node.metrics_port, "/metrics")[1])
            and metric(m, "zlayer_proxy_requests_total", 'route="web#http"') >= 6
            and m
        ),
        5,
        "six requests counted",
    )
    assert metric(metrics, "zlayer_proxy_responses_total", 'route="web#http"', 'class="2xx"') >= 6
    assert 'zlayer_service_rps{service="web"}' in metrics
    assert "zlayer_proxy_request_duration_seconds_bucket{" in metrics
    tls = node.api("GET", "/api/v1/proxy/tls")
    assert tls["total"] == len(tls["certificates"]) and isinstance(tls["acme_available"], bool)

    node.delete(name)
    daemon_deployments.remove(name)
    routes = node.api("GET", "/api/v1/proxy/routes")
    assert not [r for r in routes["routes"] if r["service"] == "web" and r["endpoint"] == "http"], routes
    streams = node.api("GET", "/api/v1/proxy/streams")
    assert not [s for s in streams["streams"] if s["service"] == "web"], streams


def test_same_service_name_in_two_deployments_keeps_two_endpoints(
    daemon_node: Node, daemon_deployments: list[str]
) -> None:
    node = daemon_node
    one, two = unique("pxone"), unique("pxtwo")
    p1, p2 = node.free_port(), node.free_port()
    daemon_deployments.extend([one, two])
    for name, port, tag in ((one, p1, "v1"), (two, p2, "v2")):
        node.deploy(f"""version: v1
deployment: {name}
services:
  web:
    image: {{name: "zlayer-svc/httpd:{tag}", pull_policy: never}}
    command: {{entrypoint: ["/bin/sh", "-c"], args: [{HTTPD!r}]}}
    stop_grace_period: 1s
    endpoints: [{{name: http, protocol: http, port: {port}, target_port: 8080, expose: public}}]
    scale: {{mode: fixed, replicas: 1}}
    health: {{start_grace: 0s, interval: 1s, timeout: 1s, retries: 2, check: {{type: tcp, port: 8080}}}}
""")
        node.expect(name)
    assert node.get(p1) == (200, "v1\n") and node.get(p2) == (200, "v2\n")
    services = sorted(r["service"] for r in node.api("GET", "/api/v1/proxy/routes")["routes"])
    assert "web" in services and f"web.{two}" in services, services
    node.delete(one)
    daemon_deployments.remove(one)
    assert node.get(p2) == (200, "v2\n")
    assert node.get(p1)[0] != 200
