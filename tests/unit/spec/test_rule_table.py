# ruff: noqa: E501  (the rule table is data: one case per line reads best)
"""One invalid spec per ZLayer rule (types.rs / validate.rs, stages 1-7): the problem's message, its field path and
its YAML line:col. Messages are ZLayer's texts (spec-and-cli.md §1); the position is the offending node, or the
mapping that lacks a required key. Plus several problems in one document, and the accepted edge cases that a
stricter parser would wrongly refuse."""

from __future__ import annotations

import pytest

from zlayer.errors import SpecError
from zlayer.spec import parse_spec

HEAD = "version: v1\ndeployment: demo\nservices:\n  web:\n    image:\n      name: nginx:1.27\n"


def svc(extra: str) -> str:
    """A spec whose service ``web`` gets ``extra`` (indented 4 spaces) after its image."""
    return HEAD + "".join(f"    {line}\n" for line in extra.strip("\n").splitlines())


def pos(text: str, anchor: str) -> tuple[int, int]:
    i = text.index(anchor)
    line = text.count("\n", 0, i) + 1
    return line, i - (text.rfind("\n", 0, i) + 1) + 1


def problems(text: str) -> list[object]:
    with pytest.raises(SpecError) as exc:
        parse_spec(text, source="t.zlayer.yml")
    assert exc.value.problems, str(exc.value)
    return exc.value.problems


# (id, spec text, field path, message fragment, anchor of the expected position)
CASES = [
    # stage 1: types, required keys, enums, unknown keys, scalar formats
    ("unknown-top-level", HEAD + "networks: {}\n", "networks", "unknown field `networks`", "networks"),
    ("misspelt-top-level", HEAD.replace("services:", "servics:"), "servics", "did you mean 'services'", "servics"),
    ("misspelt-service-key", svc("endpoint: []"), "services.web.endpoint", "did you mean 'endpoints'", "endpoint:"),
    ("image-string-form", HEAD.replace("    image:\n      name: nginx:1.27\n", "    image: nginx\n"),
     "services.web.image", "expected", "nginx\n"),
    ("image-missing", "version: v1\ndeployment: demo\nservices:\n  web:\n    rtype: job\n",
     "services.web.image", "missing field `image`", "rtype"),
    ("image-bad-reference", HEAD.replace("nginx:1.27", "Bad Image!"), "services.web.image.name", "", "Bad Image!"),
    ("rtype-enum", svc("rtype: daemon"), "services.web.rtype", "unknown variant `daemon`", "daemon"),
    ("pull-policy-enum", HEAD.replace("      name: nginx:1.27\n", "      name: nginx:1.27\n      pull_policy: sometimes\n"),
     "services.web.image.pull_policy", "unknown variant `sometimes`", "sometimes"),
    ("command-list-form", svc("command: [sh, -c, x]"), "services.web.command", "sequence", "[sh"),
    ("scale-mode-missing", svc("scale:\n  replicas: 2"), "services.web.scale", "mode", "replicas"),
    ("scale-extra-key", svc("scale:\n  mode: fixed\n  replicas: 2\n  min: 1"), "services.web.scale.min",
     "unknown field `min`", "min"),
    ("duration-bare-number", svc("depends:\n  - service: web\n    timeout: 30"), "services.web.depends[0].timeout",
     "", "30"),
    ("duration-fraction", svc("stop_grace_period: 1.5h"), "services.web.stop_grace_period", "", "1.5h"),
    ("port-out-of-range", svc("endpoints:\n  - name: h\n    protocol: http\n    port: 70000"),
     "services.web.endpoints[0].port", "", "70000"),
    ("bool-yes-rejected", svc("privileged: yes"), "services.web.privileged", "", "yes"),
    ("int-for-str-in-tagged-storage", svc("storage:\n  - type: named\n    name: data\n    target: /d\n    size: 10"),
     "services.web.storage[0].size", "", "10"),
    ("storage-read_only-key", svc("storage:\n  - type: bind\n    source: /a\n    target: /b\n    read_only: true"),
     "services.web.storage[0].read_only", "unknown field `read_only`", "read_only"),
    ("health-check-required", svc("health:\n  retries: 3"), "services.web.health.check", "missing field `check`",
     "retries"),
    ("health-exec-type", svc("health:\n  check:\n    type: exec\n    command: x"), "services.web.health.check.type",
     "unknown variant `exec`", "exec"),
    ("network-mode-unknown", svc("network_mode: weird"), "services.web.network_mode", "", "weird"),
    ("network-mode-empty-container", svc("network_mode: 'container:'"), "services.web.network_mode", "",
     "'container:'"),
    ("platform-darwin", svc("platform:\n  os: darwin\n  arch: arm64"), "services.web.platform.os",
     "unknown variant `darwin`", "darwin"),
    ("tunnel-protocol", HEAD + "tunnels:\n  t:\n    from: a\n    to: b\n    local_port: 1\n    remote_port: 2\n"
     "    protocol: sctp\n", "tunnels.t.protocol", "unknown variant `sctp`", "sctp"),
    ("ulimit-unknown-key", svc("ulimits:\n  nofile:\n    soft: 1\n    max: 2"), "services.web.ulimits.nofile.max",
     "unknown field `max`", "max"),
    # stage 2: validator derive
    ("version", HEAD.replace("version: v1", "version: v2"), "version", "version must be 'v1', found 'v2'", "v2"),
    ("deployment-length", HEAD.replace("deployment: demo", "deployment: ab"), "deployment",
     "deployment name must be 3-63 characters", "ab\n"),
    ("deployment-first-char", HEAD.replace("deployment: demo", "deployment: -abc"), "deployment",
     "deployment name must start with alphanumeric character", "-abc"),
    ("deployment-charset", HEAD.replace("deployment: demo", "deployment: my_app"), "deployment",
     "deployment name can only contain alphanumeric characters and hyphens", "my_app"),
    ("cpu-zero", svc("resources:\n  cpu: 0"), "services.web.resources.cpu", "CPU limit must be > 0, found 0", "0\n"),
    ("memory-no-suffix", svc("resources:\n  memory: 512"), "services.web.resources.memory",
     "invalid memory format: '512' (use Ki, Mi, Gi, or Ti suffix)", "512"),
    ("memory-zero", svc("resources:\n  memory: 0Mi"), "services.web.resources.memory", "invalid memory format: '0Mi'",
     "0Mi"),
    ("endpoint-port-zero", svc("endpoints:\n  - name: h\n    protocol: http\n    port: 0"),
     "services.web.endpoints[0].port", "port must be between 1-65535", "0\n"),
    ("endpoint-name-empty", svc("endpoints:\n  - name: ''\n    protocol: http\n    port: 80"),
     "services.web.endpoints[0].name", "endpoint name cannot be empty", "''"),
    ("scale-min-gt-max", svc("scale:\n  mode: adaptive\n  min: 5\n  max: 3"), "services.web.scale.min",
     "scale min (5) cannot be greater than max (3)", "5\n"),
    ("cron-five-fields", svc("rtype: cron\nschedule: '0 3 * * *'"), "services.web.schedule",
     "invalid cron schedule '0 3 * * *'", "'0 3"),
    ("cron-bad-second", svc("rtype: cron\nschedule: '60 0 0 * * * *'"), "services.web.schedule",
     "invalid cron schedule '60 0 0 * * * *'", "'60"),
    ("replica-role-regex", svc("replica_groups:\n  - role: Primary\n    count: 1"),
     "services.web.replica_groups[0].role", "", "Primary"),
    ("replica-count-zero", svc("replica_groups:\n  - role: primary\n    count: 0"),
     "services.web.replica_groups[0].count", "", "0\n"),
    ("externals-no-backends", HEAD + "externals:\n  legacy:\n    backends: []\n", "externals.legacy.backends",
     "at least one backend address is required", "[]"),
    ("externals-endpoint-port", HEAD + "externals:\n  legacy:\n    backends: ['10.0.0.1:80']\n    endpoints:\n"
     "      - name: h\n        protocol: http\n        port: 0\n", "externals.legacy.endpoints[0].port",
     "port must be between 1-65535", "0\n"),
    # stages 3-7
    ("unknown-dependency", svc("depends:\n  - service: db"), "services.web.depends",
     "dependency references unknown service 'db'", "db"),
    ("duplicate-endpoint", svc("endpoints:\n  - {name: h, protocol: http, port: 80}\n  - {name: h, protocol: tcp, port: 81}"),
     "services.web.endpoints", "duplicate endpoint 'h'", "h, protocol: tcp"),
    ("schedule-without-cron", svc("schedule: '0 0 * * * *'"), "services.web.schedule",
     "schedule field is only valid for rtype: cron", "'0 0"),
    # ZLayer reports CronRequiresSchedule at services.<svc>.schedule; zlayer names the rtype that needs it (both
    # tests/unit/spec files agree on the position of the `rtype: cron` value)
    ("cron-without-schedule", svc("rtype: cron"), "services.web.", "rtype: cron requires a schedule field", "cron"),
    ("tunnel-local-port-zero", HEAD + "tunnels:\n  t:\n    from: a\n    to: b\n    local_port: 0\n    remote_port: 2\n",
     "tunnels.t.local_port", "invalid tunnel local_port port: 0", "0\n"),
    ("tunnel-remote-port-zero", HEAD + "tunnels:\n  t:\n    from: a\n    to: b\n    local_port: 1\n    remote_port: 0\n",
     "tunnels.t.remote_port", "invalid tunnel remote_port port: 0", "0\n"),
    ("endpoint-tunnel-ttl", svc("endpoints:\n  - name: h\n    protocol: http\n    port: 80\n    tunnel:\n"
     "      access:\n        max_ttl: '30'"), "services.web.endpoints[0].tunnel.access.max_ttl",
     "invalid tunnel max_ttl '30'", "'30'"),
    ("wasm-on-standard", svc("wasm:\n  min_instances: 1"), "services.web.wasm",
     "wasm config provided but service_type is not a WASM type", "min_instances"),
    ("wasm-memory", svc("service_type: wasm_plugin\nwasm:\n  max_memory: 1GB"), "services.web.wasm.max_memory",
     "invalid memory format", "1GB"),
    ("wasm-instances", svc("service_type: wasm_plugin\nwasm:\n  min_instances: 5\n  max_instances: 2"),
     "services.web.wasm", "wasm min_instances (5) > max_instances (2)", "5\n"),
    ("wasm-capability-grant", svc("service_type: wasm_http\nwasm:\n  capabilities:\n    sockets: true\n    metrics: false"),
     "services.web.wasm.capabilities", "capability 'sockets' is not available for WASM service type 'WasmHttp'",
     "true"),
    ("wasm-http-endpoint", svc("service_type: wasm_http\nwasm: {}\nendpoints:\n  - {name: t, protocol: tcp, port: 9000}"),
     "services.web.endpoints", "wasm_http service type should have at least one HTTP endpoint", "- {name: t"),
    ("wasm-preopen-empty", svc("service_type: wasm_plugin\nwasm:\n  preopens:\n    - source: ''\n      target: /data"),
     "services.web.wasm.preopens[0].source", "wasm preopen[0].source cannot be empty", "''"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "path", "fragment", "anchor"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_reports_message_path_and_position(text: str, path: str, fragment: str, anchor: str) -> None:
    found = problems(text)
    matching = [p for p in found if getattr(p, "path", "").startswith(path) and fragment in getattr(p, "message", "")]
    assert matching, f"expected {path}: ...{fragment}...; got:\n" + "\n".join(map(str, found))
    p = matching[0]
    assert (p.line, p.col) == pos(text, anchor), str(p)  # type: ignore[attr-defined]
    rendered = str(p)
    assert rendered.startswith(f"t.zlayer.yml:{p.line}:{p.col}: {p.path}: "), rendered  # type: ignore[attr-defined]
    assert p.to_json()["path"] == p.path  # type: ignore[attr-defined]


def test_every_problem_of_a_document_is_reported_at_once() -> None:
    text = (
        "version: v2\ndeployment: x\nservices:\n  web:\n    image:\n      name: nginx\n    scale:\n"
        "      mode: adaptive\n      min: 5\n      max: 3\n    endpoints:\n      - name: h\n        protocol: htp\n"
        "        port: 0\n    depends:\n      - service: db\n  job:\n    rtype: cron\n    image:\n      name: busybox\n"
        "    schedul: '0 0 * * * *'\n"
    )
    found = problems(text)
    paths = {p.path for p in found}  # type: ignore[attr-defined]
    for expected in ("version", "deployment", "services.web.scale.min", "services.web.endpoints[0].protocol",
                     "services.job.schedul"):  # fmt: skip
        assert expected in paths, "\n".join(map(str, found))
    assert any("did you mean 'schedule'" in p.message for p in found)  # type: ignore[attr-defined]
    lines = [p.line for p in found]  # type: ignore[attr-defined]
    assert lines == sorted(lines)


ACCEPTED = {
    "raw-scalars-for-str": (svc("env:\n  PORT: 8080\n  FLAG: yes\n  OFF: off\n  F: 1.50"),
                            lambda s: s.services["web"].env == {"PORT": "8080", "FLAG": "yes", "OFF": "off", "F": "1.50"}),
    "cap_add-alias": (svc("cap_add: [NET_ADMIN]"), lambda s: s.services["web"].capabilities == ["NET_ADMIN"]),
    "host_network-legacy": (svc("host_network: true"), lambda s: str(s.services["web"].network_mode) in ("host", "Host")
                            or getattr(s.services["web"].network_mode, "mode", None) == "host"),
    "cron-six-fields": (svc("rtype: cron\nschedule: '0 0 3 * * *'"), lambda s: s.services["web"].schedule == "0 0 3 * * *"),
    "cron-seven-fields-names": (svc("rtype: cron\nschedule: '0 0 12 * * MON-FRI *'"), lambda s: True),
    "empty-services": ("version: v1\ndeployment: abc\nservices: {}\n", lambda s: s.services == {}),
    "uppercase-deployment-trailing-dash": (HEAD.replace("deployment: demo", "deployment: My-App-"),
                                           lambda s: s.deployment == "My-App-"),
    "adaptive-without-targets-or-cooldown": (svc("scale:\n  mode: adaptive\n  min: 0\n  max: 5"),
                                             lambda s: s.services["web"].scale.cooldown is None),
    "default-scale": (HEAD, lambda s: (s.services["web"].scale.mode, s.services["web"].scale.min,
                                       s.services["web"].scale.max, s.services["web"].scale.cooldown) == ("adaptive", 1, 10, 30.0)),
    "fixed-zero-replicas": (svc("scale:\n  mode: fixed\n  replicas: 0"), lambda s: s.services["web"].scale.replicas == 0),
    "humantime-forms": (svc("stop_grace_period: 1h 30m"), lambda s: s.services["web"].stop_grace_period == 5400.0),
    "ulimit-fill": (svc("ulimits:\n  nofile:\n    soft: 100"), lambda s: (s.services["web"].ulimits["nofile"].soft,
                                                                         s.services["web"].ulimits["nofile"].hard) == (100, 100)),
    "api-unknown-keys-allowed": (HEAD + "api:\n  whatever: 1\n", lambda s: s.api.bind == "0.0.0.0:3669"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_zlayer_accepts(case: str) -> None:
    text, check = ACCEPTED[case]
    spec = parse_spec(text, source="ok.zlayer.yml")
    assert check(spec)  # type: ignore[no-untyped-call]


def test_overlay_default_trap() -> None:
    omitted = parse_spec(HEAD).services["web"].network.overlays
    empty = parse_spec(svc("network:\n  overlays: {}")).services["web"].network.overlays
    assert (omitted.service.enabled, omitted.service.encrypted, omitted.service.isolated) == (True, True, True)
    assert omitted.global_.enabled if hasattr(omitted, "global_") else omitted.model_dump()["global"]["enabled"]
    assert not any(empty.model_dump(by_alias=True)["service"].values())
    assert not any(empty.model_dump(by_alias=True)["global"].values())


def test_health_start_grace_trap() -> None:
    assert parse_spec(HEAD).services["web"].health.start_grace == 5.0
    given = parse_spec(svc("health:\n  check:\n    type: tcp\n    port: 80")).services["web"].health
    assert given.start_grace is None and given.retries == 3


# serde_yaml 0.9.34 (ZLayer's Cargo.lock): a String field takes any scalar's raw text, `~` and `null` included, and
# an empty plain value where a map, struct or sequence is expected is an empty one (de.rs deserialize_str /
# deserialize_map / deserialize_seq); Option fields take `~`, `null` and empty as None.
def test_null_and_empty_scalars_follow_serde_yaml() -> None:
    spec = parse_spec("version: v1\ndeployment: demo\nservices:\n", source="t")
    assert spec.services == {}
    web = parse_spec(HEAD + "    env:\n    endpoints:\n    hostname:\n").services["web"]
    assert (web.env, web.endpoints, web.hostname) == ({}, [], None)
    env = parse_spec(svc("env:\n  A: ~\n  B:\n  C: null")).services["web"].env
    assert env == {"A": "~", "B": "", "C": "null"}


def test_empty_struct_value_reports_its_missing_field() -> None:
    found = problems("version: v1\ndeployment: demo\nservices:\n  web:\n    image:\n")
    assert any(p.path.startswith("services.web.image") and "missing field `name`" in p.message for p in found), (  # type: ignore[attr-defined]
        "\n".join(map(str, found))
    )


# cron 0.15 (ZLayer's Cargo.lock) parses the shorthands @yearly, @monthly, @weekly, @daily and @hourly (surrounding
# blanks allowed) before the 6/7-field form; @annually is not one of them.
@pytest.mark.parametrize("expr", ["@yearly", "@monthly", "@weekly", "@daily", " @hourly "])
def test_cron_shorthands_are_accepted(expr: str) -> None:
    spec = parse_spec(svc(f"rtype: cron\nschedule: '{expr}'"), source="t")
    assert spec.services["web"].schedule == expr


def test_cron_annually_is_rejected() -> None:
    found = problems(svc("rtype: cron\nschedule: '@annually'"))
    assert any(p.path == "services.web.schedule" and "invalid cron schedule '@annually'" in p.message for p in found)  # type: ignore[attr-defined]


# serde_yaml::from_str deserializes straight into the structs (no serde_yaml::Value in between, so no "duplicate
# entry" check): a repeated struct key is serde's `duplicate field`, an alias next to its field too, and a repeated
# key of a map field (env, labels, services) silently keeps the last value.
def test_repeated_struct_key_is_a_duplicate_field() -> None:
    found = problems(svc("privileged: true\nprivileged: false"))
    assert any("duplicate field `privileged`" in p.message for p in found), "\n".join(map(str, found))  # type: ignore[attr-defined]


def test_alias_next_to_its_field_is_a_duplicate_field() -> None:
    found = problems(svc("capabilities: [A]\ncap_add: [B]"))
    assert any("duplicate field `capabilities`" in p.message for p in found), "\n".join(map(str, found))  # type: ignore[attr-defined]
    assert not any("did you mean 'cap_add'" in p.message for p in found)  # type: ignore[attr-defined]


def test_repeated_map_key_keeps_the_last_value() -> None:
    web = parse_spec(svc("env:\n  A: '1'\n  A: '2'"), source="t").services["web"]
    assert web.env == {"A": "2"}


# serde_yaml's integer rule (de.rs parse_unsigned_int / digits_but_not_number): 0x/0o/0b prefixes and a leading +
# are numbers, but leading zeros followed by digits are a string (YAML 1.2), so `port: 080` is not a port.
def test_leading_zero_digits_are_not_an_integer() -> None:
    text = svc("endpoints:\n  - {name: h, protocol: http, port: 080}")
    found = problems(text)
    p = next(p for p in found if p.path == "services.web.endpoints[0].port")  # type: ignore[attr-defined]
    assert 'invalid type: string "080", expected u16' in p.message  # type: ignore[attr-defined]
    assert (p.line, p.col) == pos(text, "080")  # type: ignore[attr-defined]
    ok = parse_spec(
        svc("endpoints:\n  - {name: h, protocol: http, port: 0x50}\n  - {name: i, protocol: tcp, port: +81}")
    )
    assert [e.port for e in ok.services["web"].endpoints] == [80, 81]
