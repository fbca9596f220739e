"""ZLayer's own example specs are accepted or rejected exactly as ZLayer's validator decides (spec-and-cli.md §9)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from zlayer.errors import SpecError
from zlayer.spec import dump_spec, load_spec, parse_spec, spec_json_schema

HERE = Path(__file__).parent / "examples"
VALID = sorted((HERE / "valid").iterdir())
INVALID = sorted((HERE / "invalid").iterdir())
REPO_HELLO = Path(__file__).parents[3] / "examples" / "hello.zlayer.yml"

# Why ZLayer rejects each invalid example: (field path, message fragment) of at least one reported problem.
INVALID_WHY = {
    "full-service.yaml": ("services.cleanup.rtype", "rtype: cron requires a schedule field"),
    "python__hello.zlayer.yaml": ("services.hello.command", "expected a mapping"),
    "containers__postgres-db__deployment.yaml": ("services.database.volumes", "unknown field `volumes`"),
    "containers__redis-cache__deployment.yaml": ("", "another document"),
    "containers__multi-service__deployment.yaml": ("services.cleanup.schedule", "invalid cron schedule '0 3 * * *'"),
    "wasm__deployment.yaml": ("services.rust-hello.runtime", "unknown field `runtime`"),
}


RUST_TESTS = HERE / "rust-tests"
VERDICTS = json.loads((RUST_TESTS / "verdicts.json").read_text())


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_specs_from_zlayer_rust_tests(name: str) -> None:
    """Inline specs of ZLayer's own Rust tests (types.rs, API and agent tests) get the verdict those tests assert."""
    path = RUST_TESTS / name
    if VERDICTS[name]["verdict"] == "ok":
        spec = load_spec(path)
        assert parse_spec(dump_spec(spec)) == spec
    else:
        with pytest.raises(SpecError):
            load_spec(path)


@pytest.mark.parametrize("path", [*VALID, REPO_HELLO], ids=lambda p: p.name)
def test_valid_examples_load(path: Path) -> None:
    spec = load_spec(path)
    assert spec.version == "v1"
    assert spec.services


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_examples_rejected_with_reason(path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    want_path, fragment = INVALID_WHY[path.name]
    assert any(p.path == want_path and fragment in p.message for p in info.value.problems), info.value.problems
    for p in info.value.problems:
        assert p.file == str(path) and p.line >= 1 and p.col >= 1


@pytest.mark.parametrize("path", [*VALID, REPO_HELLO], ids=lambda p: p.name)
@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_round_trip_is_identity(path: Path, fmt: str) -> None:
    spec = load_spec(path)
    text = dump_spec(spec, fmt)
    again = parse_spec(text, f"<dump {fmt}>")
    assert again == spec
    assert dump_spec(again, fmt) == text


@pytest.fixture(scope="module")
def spec_validator() -> object:
    import jsonschema

    schema = spec_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", [*VALID, REPO_HELLO], ids=lambda p: p.name)
def test_schema_accepts_valid_examples(spec_validator: object, path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    errors = list(spec_validator.iter_errors(doc))  # type: ignore[attr-defined]
    assert errors == []


@pytest.mark.parametrize(
    "name", ["python__hello.zlayer.yaml", "containers__postgres-db__deployment.yaml", "wasm__deployment.yaml"]
)
def test_schema_flags_structural_errors(spec_validator: object, name: str) -> None:
    doc = yaml.safe_load((HERE / "invalid" / name).read_text())
    assert list(spec_validator.iter_errors(doc))  # type: ignore[attr-defined]


def test_dump_fills_defaults() -> None:
    spec = parse_spec("version: v1\ndeployment: abc\nservices:\n  s:\n    image: {name: hello-world:latest}\n")
    svc = spec.services["s"]
    assert svc.scale.mode == "adaptive" and (svc.scale.min, svc.scale.max, svc.scale.cooldown) == (1, 10, 30.0)
    assert svc.health.start_grace == 5.0 and svc.health.check.type == "tcp" and svc.health.retries == 3
    assert svc.network.overlays.service.isolated is True and svc.network.overlays.global_.isolated is False
    assert svc.image.pull_policy == "if_not_present" and svc.network_mode == "default"
    out = yaml.safe_load(dump_spec(spec))
    assert out["services"]["s"]["scale"] == {"mode": "adaptive", "min": 1, "max": 10, "cooldown": "30s", "targets": {}}
