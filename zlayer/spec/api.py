"""Dumping a validated spec (defaults filled in) and the JSON Schema of the spec for editors."""

from __future__ import annotations

import json
from typing import Any

from zlayer.spec.models import DeploymentSpec


def spec_to_dict(spec: DeploymentSpec) -> dict[str, Any]:
    """The normalised spec as plain JSON data: every default filled in, unset optional fields left out."""
    data: dict[str, Any] = spec.model_dump(mode="json", exclude_none=True)
    return data


def dump_spec(spec: DeploymentSpec, format: str = "yaml") -> str:
    """Serialise ``spec`` as ``yaml`` or ``json``; loading the output gives an equal spec."""
    data = spec_to_dict(spec)
    if format == "json":
        return json.dumps(data, indent=2) + "\n"
    if format != "yaml":
        raise ValueError(f"unknown format {format!r} (yaml or json)")
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    out: str = yaml.dump(data, Dumper=dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return out


def spec_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of ``*.zlayer.yml`` for YAML language servers and ``jsonschema``."""
    from zlayer.spec.schema import build_schema

    return build_schema()
