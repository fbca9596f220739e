"""JSON Schema of ``*.zlayer.yml`` derived from the models, with the forms the models accept besides the canonical
ones (``cap_add``, ``wasm_http``, ``host_network``, README-style ``env``/``init`` lists) added back in."""

from __future__ import annotations

from typing import Any

from zlayer.spec.models import DeploymentSpec


def build_schema() -> dict[str, Any]:
    schema: dict[str, Any] = DeploymentSpec.model_json_schema(by_alias=True, mode="validation")
    defs = schema.get("$defs", {})
    svc = defs["ServiceSpec"]["properties"]
    svc["cap_add"] = dict(svc["capabilities"])
    svc["wasm_http"] = dict(svc["wasm"])
    svc.setdefault("host_network", {"type": "boolean"})
    svc["env"] = {
        "anyOf": [
            svc["env"],
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "value": {"type": ["string", "number", "boolean"]}},
                    "required": ["name"],
                    "additionalProperties": False,
                },
            },
        ],
        "description": "Environment: a mapping NAME: value (values may be $E:VAR or $S:secret).",
    }
    svc["init"] = {
        "anyOf": [
            {"$ref": "#/$defs/InitSpec"},
            {
                "type": "array",
                "items": {"type": "object", "properties": {"action": {"type": "string"}}, "required": ["action"]},
            },
        ]
    }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://zlayer.dev/schema/zlayer-spec.json"
    schema["title"] = "ZLayer deployment spec (*.zlayer.yml)"
    return schema
