"""Every validation rule: an invalid spec per rule, with its message, its line:col and its field path."""

from __future__ import annotations

import textwrap

import pytest

from zlayer.errors import SpecError
from zlayer.spec import parse_spec
from zlayer.spec.scalars import format_duration, parse_cron, parse_duration, parse_image_ref, parse_memory

HEAD = "version: v1\ndeployment: demo\nservices:\n  web:\n    image:\n      name: nginx:latest\n"
# Lines 1-6 are HEAD; service fields start at line 7, column 5.


def svc(extra: str) -> str:
    return HEAD + textwrap.indent(textwrap.dedent(extra).strip("\n") + "\n", "    ")


CASES = [
    # (id, yaml, path, message fragment, line, col)
    ("version", HEAD.replace("v1", "v2", 1), "version", "version must be 'v1', found 'v2'", 1, 10),
    ("deploy-short", HEAD.replace("demo", "ab"), "deployment", "deployment name must be 3-63 characters", 2, 13),
    ("deploy-first", HEAD.replace("demo", "-demo"), "deployment", "must start with alphanumeric character", 2, 13),
    ("deploy-chars", HEAD.replace("demo", "my_app"), "deployment", "can only contain alphanumeric characters", 2, 13),
    ("missing-version", HEAD.replace("version: v1\n", ""), "version", "missing field `version`", 1, 1),
    ("top-unknown", HEAD + "volumes: {}\n", "volumes", "unknown field `volumes`", 7, 1),
    ("svc-typo", svc("endpoint: []"), "services.web.endpoint", "did you mean 'endpoints'?", 7, 5),
    (
        "image-string",
        HEAD.replace("    image:\n      name: nginx:latest\n", "    image: nginx\n"),
        "services.web.image",
        "expected a mapping",
        5,
        12,
    ),
    (
        "image-ref",
        HEAD.replace("nginx:latest", "Nginx:latest"),
        "services.web.image.name",
        "invalid image reference",
        6,
        13,
    ),
    (
        "image-missing",
        HEAD.replace("    image:\n      name: nginx:latest\n", "    rtype: job\n"),
        "services.web.image",
        "missing field `image`",
        5,
        5,
    ),
    (
        "pull-policy",
        svc("").replace("nginx:latest\n", "nginx:latest\n      pull_policy: sometimes\n"),
        "services.web.image.pull_policy",
        "unknown variant `sometimes`",
        7,
        20,
    ),
    ("cpu", svc("resources: {cpu: 0}"), "services.web.resources.cpu", "CPU limit must be > 0, found 0", 7, 22),
    (
        "memory-suffix",
        svc("resources: {memory: 512}"),
        "services.web.resources.memory",
        "invalid memory format: '512' (use Ki, Mi, Gi, or Ti suffix)",
        7,
        25,
    ),
    (
        "memory-number",
        svc("resources: {memory: 0Mi}"),
        "services.web.resources.memory",
        "invalid memory format: '0Mi'",
        7,
        25,
    ),
    (
        "port-zero",
        svc("endpoints:\n  - {name: http, protocol: http, port: 0}"),
        "services.web.endpoints[0].port",
        "port must be between 1-65535",
        8,
        44,
    ),
    (
        "port-range",
        svc("endpoints:\n  - {name: http, protocol: http, port: 70000}"),
        "services.web.endpoints[0].port",
        "expected u16",
        8,
        44,
    ),
    (
        "endpoint-name",
        svc("endpoints:\n  - {name: '', protocol: http, port: 80}"),
        "services.web.endpoints[0].name",
        "endpoint name cannot be empty",
        8,
        16,
    ),
    (
        "protocol",
        svc("endpoints:\n  - {name: a, protocol: ftp, port: 80}"),
        "services.web.endpoints[0].protocol",
        "unknown variant `ftp`",
        8,
        29,
    ),
    (
        "dup-endpoint",
        svc("endpoints:\n  - {name: a, protocol: http, port: 80}\n  - {name: a, protocol: tcp, port: 81}"),
        "services.web.endpoints[1].name",
        "duplicate endpoint 'a'",
        9,
        16,
    ),
    (
        "scale-range",
        svc("scale: {mode: adaptive, min: 5, max: 3}"),
        "services.web.scale.min",
        "scale min (5) cannot be greater than max (3)",
        7,
        34,
    ),
    ("scale-mode", svc("scale: {mode: elastic}"), "services.web.scale.mode", "unknown variant `elastic`", 7, 19),
    ("scale-no-mode", svc("scale: {replicas: 2}"), "services.web.scale.mode", "missing field `mode`", 7, 12),
    (
        "scale-extra",
        svc("scale: {mode: fixed, replicas: 2, min: 1}"),
        "services.web.scale.min",
        "unknown field `min`",
        7,
        39,
    ),
    (
        "role",
        svc("replica_groups:\n  - {role: Primary, count: 1}"),
        "services.web.replica_groups[0].role",
        "role 'Primary'",
        8,
        16,
    ),
    (
        "count",
        svc("replica_groups:\n  - {role: primary, count: 0}"),
        "services.web.replica_groups[0].count",
        "count must be at least 1",
        8,
        32,
    ),
    (
        "depends",
        svc("depends:\n  - service: db"),
        "services.web.depends[0].service",
        "dependency references unknown service 'db'",
        8,
        18,
    ),
    (
        "depends-timeout",
        svc("depends:\n  - {service: web, timeout: 30}"),
        "services.web.depends[0].timeout",
        "time unit needed",
        8,
        33,
    ),
    (
        "cron-5",
        svc("rtype: cron\nschedule: '0 3 * * *'"),
        "services.web.schedule",
        "invalid cron schedule '0 3 * * *'",
        8,
        15,
    ),
    ("cron-no-sched", svc("rtype: cron"), "services.web.rtype", "rtype: cron requires a schedule field", 7, 12),
    (
        "sched-not-cron",
        svc("schedule: '0 0 * * * *'"),
        "services.web.schedule",
        "schedule field is only valid for rtype: cron",
        7,
        15,
    ),
    (
        "tunnel-port",
        HEAD + "tunnels:\n  t:\n    {from: a, to: b, local_port: 0, remote_port: 80}\n",
        "tunnels.t.local_port",
        "invalid tunnel local_port port: 0",
        9,
        34,
    ),
    (
        "tunnel-proto",
        HEAD + "tunnels:\n  t: {from: a, to: b, local_port: 1, remote_port: 2, protocol: sctp}\n",
        "tunnels.t.protocol",
        "unknown variant `sctp`",
        8,
        64,
    ),
    (
        "tunnel-ttl",
        svc("endpoints:\n  - name: a\n    protocol: http\n    port: 80\n    tunnel: {access: {max_ttl: '30'}}"),
        "services.web.endpoints[0].tunnel.access.max_ttl",
        "invalid tunnel max_ttl '30'",
        11,
        36,
    ),
    ("wasm-nonwasm", svc("wasm: {}"), "services.web.wasm", "service_type is not a WASM type", 7, 11),
    (
        "wasm-memory",
        svc("service_type: wasm_http\nwasm: {max_memory: 64MB}"),
        "services.web.wasm.max_memory",
        "invalid memory format: '64MB'",
        8,
        24,
    ),
    (
        "wasm-instances",
        svc("service_type: wasm_http\nwasm: {min_instances: 5, max_instances: 2}"),
        "services.web.wasm.min_instances",
        "wasm min_instances (5) > max_instances (2)",
        8,
        27,
    ),
    (
        "wasm-cap",
        svc("service_type: wasm_http\nwasm:\n  capabilities: {metrics: false, sockets: true}"),
        "services.web.wasm.capabilities.sockets",
        "capability 'sockets' is not available for WASM service type 'WasmHttp'",
        9,
        47,
    ),
    (
        "wasm-http-ep",
        svc("service_type: wasm_http\nwasm: {}\nendpoints:\n  - {name: a, protocol: tcp, port: 9}"),
        "services.web.endpoints",
        "wasm_http service type should have at least one HTTP endpoint",
        10,
        7,
    ),
    (
        "wasm-preopen",
        svc("service_type: wasm_plugin\nwasm:\n  preopens: [{source: '', target: /d}]"),
        "services.web.wasm.preopens[0].source",
        "wasm preopen[0].source cannot be empty",
        9,
        27,
    ),
    (
        "externals",
        HEAD + "externals:\n  legacy:\n    backends: []\n",
        "externals.legacy.backends",
        "at least one backend address is required",
        9,
        15,
    ),
    ("bool-yes", svc("privileged: yes"), "services.web.privileged", "expected a boolean", 7, 17),
    (
        "storage-int",
        svc("storage:\n  - {type: named, name: data, target: /d, size: 10}"),
        "services.web.storage[0].size",
        "invalid type: integer `10`, expected a string",
        8,
        53,
    ),
    (
        "storage-readonly",
        svc("storage:\n  - {type: bind, source: /a, target: /b, read_only: true}"),
        "services.web.storage[0].read_only",
        "did you mean 'readonly'?",
        8,
        46,
    ),
    (
        "storage-type",
        svc("storage:\n  - {type: nfs, target: /b}"),
        "services.web.storage[0].type",
        "unknown variant `nfs`",
        8,
        16,
    ),
    (
        "health-exec",
        svc("health:\n  check: {type: exec, command: x}"),
        "services.web.health.check.type",
        "unknown variant `exec`",
        8,
        21,
    ),
    ("health-no-check", svc("health: {retries: 2}"), "services.web.health.check", "missing field `check`", 7, 13),
    (
        "health-dur",
        svc("health:\n  interval: 1.5h\n  check: {type: tcp, port: 80}"),
        "services.web.health.interval",
        "invalid duration '1.5h'",
        8,
        17,
    ),
    (
        "network-mode",
        svc("network_mode: overlay"),
        "services.web.network_mode",
        "unknown network mode 'overlay'",
        7,
        19,
    ),
    (
        "network-mode-container",
        svc("network_mode: 'container:'"),
        "services.web.network_mode",
        "requires a container id",
        7,
        19,
    ),
    (
        "platform-os",
        svc("platform: {os: darwin, arch: arm64}"),
        "services.web.platform.os",
        "unknown variant `darwin`",
        7,
        20,
    ),
    (
        "restart-kind",
        svc("restart_policy: {kind: on-failure}"),
        "services.web.restart_policy.kind",
        "unknown variant `on-failure`",
        7,
        28,
    ),
    ("node-mode", svc("node_mode: spread"), "services.web.node_mode", "unknown variant `spread`", 7, 16),
    ("command-list", svc("command: [sh, -c, x]"), "services.web.command", "expected a mapping", 7, 14),
    (
        "ulimit-unknown",
        svc("ulimits:\n  nofile: {soft: 1, max: 2}"),
        "services.web.ulimits.nofile.max",
        "unknown field `max`",
        8,
        25,
    ),
    ("env-map-value", svc("env:\n  A: [1, 2]"), "services.web.env.A", "expected a string", 8, 10),
    ("dup-key", svc("rtype: job\nrtype: service"), "services.web.rtype", "duplicate field `rtype`", 8, 5),
]


@pytest.mark.parametrize(
    ("yaml_text", "path", "fragment", "line", "col"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rule(yaml_text: str, path: str, fragment: str, line: int, col: int) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(yaml_text, "t.zlayer.yml")
    probs = info.value.problems
    hits = [p for p in probs if p.path == path and fragment in p.message]
    assert hits, f"no problem at {path} containing {fragment!r}; got {[str(p) for p in probs]}"
    assert (hits[0].line, hits[0].col) == (line, col), str(hits[0])
    assert str(hits[0]).startswith(f"t.zlayer.yml:{line}:{col}: {path}: ")


def test_all_problems_reported_at_once() -> None:
    text = svc(
        """
        endpoint: []
        resources: {cpu: -1, memory: 1GB}
        scale: {mode: adaptive, min: 5, max: 3}
        depends: [{service: db}]
        """
    ).replace("version: v1", "version: v9")
    with pytest.raises(SpecError) as info:
        parse_spec(text, "multi.zlayer.yml")
    paths = [p.path for p in info.value.problems]
    assert paths == [
        "version",
        "services.web.endpoint",
        "services.web.resources.cpu",
        "services.web.resources.memory",
        "services.web.scale.min",
        "services.web.depends[0].service",
    ]
    body = info.value.to_json()
    assert body["code"] == "invalid_spec" and len(body["problems"]) == 6
    assert body["problems"][0] == {
        "file": "multi.zlayer.yml",
        "line": 1,
        "col": 10,
        "path": "version",
        "message": "version must be 'v1', found 'v9'",
    }


def test_malformed_yaml_position() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec("version: v1\ndeployment: [abc\n", "bad.yml")
    (p,) = info.value.problems
    assert p.line == 3 and "malformed YAML" in p.message


@pytest.mark.parametrize("text", ["", "   \n# only a comment\n"])
def test_empty(text: str) -> None:
    with pytest.raises(SpecError, match="empty"):
        parse_spec(text)


def test_not_a_mapping() -> None:
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        parse_spec("- a\n- b\n")


# --- accepted forms and semantics -------------------------------------------------------------------------------


def test_raw_scalar_text_for_strings() -> None:
    spec = parse_spec(svc("env:\n  PORT: 8080\n  FLAG: yes\n  VER: 1.10\n  Q: '007'\nlabels: {a: true}"))
    assert spec.services["web"].env == {"PORT": "8080", "FLAG": "yes", "VER": "1.10", "Q": "007"}
    assert spec.services["web"].labels == {"a": "true"}


def test_readme_env_list_and_init_list() -> None:
    spec = parse_spec(
        svc(
            """
            env:
              - name: LOG_LEVEL
                value: info
            init:
              - action: init.wait_tcp
                host: db
                port: 5432
            """
        )
    )
    s = spec.services["web"]
    assert s.env == {"LOG_LEVEL": "info"}
    (step,) = s.init.steps
    assert step.uses == "init.wait_tcp" and step.with_ == {"host": "db", "port": 5432}


def test_aliases_and_legacy_host_network() -> None:
    s = parse_spec(svc("cap_add: [NET_ADMIN]\nhost_network: true")).services["web"]
    assert s.capabilities == ["NET_ADMIN"] and s.network_mode == "host"
    s = parse_spec(svc("host_network: true\nnetwork_mode: none")).services["web"]
    assert s.network_mode == "none"
    s = parse_spec(svc("service_type: wasm_http\nwasm_http: {min_instances: 1}")).services["web"]
    assert s.wasm is not None and s.wasm.min_instances == 1


def test_network_mode_forms() -> None:
    for given, want in [
        ("bridge:custom", "bridge:custom"),
        ("{bridge: {name: x}}", "bridge:x"),
        ("{container: {id: abc}}", "container:abc"),
        ("none", "none"),
    ]:
        assert parse_spec(svc(f"network_mode: {given}")).services["web"].network_mode == want


def test_default_traps() -> None:
    s = parse_spec(
        svc("network: {overlays: {}}\nhealth: {check: {type: tcp, port: 0}}\nscale: {mode: adaptive, min: 1, max: 2}")
    )
    web = s.services["web"]
    assert not web.network.overlays.service.enabled and not web.network.overlays.global_.enabled
    assert web.health.start_grace is None
    assert web.scale.cooldown is None  # type: ignore[union-attr]
    web2 = parse_spec(svc("network: {overlays: {service: {}}}")).services["web"]
    assert web2.network.overlays.service.enabled and web2.network.overlays.service.encrypted


def test_lenient_blocks_ignore_unknown_keys() -> None:
    spec = parse_spec(
        svc(
            "platform: {os: linux, arch: amd64, osVersion: '10', extra: 1}\nlogs: {foo: bar}\n"
            "port_mappings: [{container_port: 80, zzz: 1}]\noverlay: {mode: shared, x: 1}"
        )
        + "api: {enabled: false, whatever: 1}\n"
    )
    web = spec.services["web"]
    assert web.platform is not None and web.platform.os_version == "10"
    assert web.port_mappings[0].host_ip == "0.0.0.0" and spec.api.enabled is False


def test_ulimit_fill_rules() -> None:
    u = (
        parse_spec(svc("ulimits:\n  a: {soft: 5}\n  b: {hard: 7}\n  c: {}\n  d: {soft: 1, hard: 0}"))
        .services["web"]
        .ulimits
    )
    assert (u["a"].soft, u["a"].hard, u["b"].soft, u["c"].hard, u["d"].hard) == (5, 5, 7, 0, 0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("1h 30m", 5400), ("500ms", 0.5), ("2d", 172800), ("1w", 604800)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["30", "-1h", "1.5h", "", "abc", "5 parsecs"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_memory() -> None:
    assert parse_memory("512Mi") == 512 << 20 and parse_memory("2Ti") == 2 << 40
    for bad in ["512MB", "1GB", "512", "512m", "Mi", "Gi", "-512Mi", "0Mi", "abcMi"]:
        with pytest.raises(ValueError, match="invalid memory format"):
            parse_memory(bad)


def test_cron() -> None:
    for ok in [
        "0 0 0 * * * *",
        "0 */5 * * * * *",
        "0 0 12 * * MON-FRI *",
        "0 30 2 1 * * *",
        "*/10 * * * * * *",
        "0 0 3 * * *",
        "0 0 0 1 JAN-MAR ? 2030",
    ]:
        parse_cron(ok)
    for bad in ["", "not a cron", "0 0 * * *", "60 0 0 * * * *", "0 0 25 * * *", "0 0 0 * * FOO"]:
        with pytest.raises(ValueError):
            parse_cron(bad)


def test_image_refs() -> None:
    for ok in [
        "nginx",
        "nginx:1.25",
        "docker.io/library/nginx:latest",
        "localhost:5000/a/b:c",
        "ghcr.io/org/app@sha256:" + "a" * 64,
        "zlayer-demo/httpd:latest",
    ]:
        parse_image_ref(ok)
    assert parse_image_ref("localhost:5000/a:b")["registry"] == "localhost:5000"
    for bad in ["", "Nginx", "nginx:", "a//b", "nginx:bad tag", "MyOrg/app"]:
        with pytest.raises(ValueError, match="invalid image reference"):
            parse_image_ref(bad)
