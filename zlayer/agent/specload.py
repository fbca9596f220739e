"""Turn submitted YAML into the deployment the agent runs: name, spec mapping and one ServiceView per service.

The spec package (``zlayer.spec``) does the full validation with field paths; its model is kept so the runtime
receives the typed service spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zlayer.agent.specview import ServiceView, dependency_order, service_view


@dataclass
class ParsedDeployment:
    name: str
    yaml: str
    spec: dict[str, Any]
    services: dict[str, ServiceView]
    models: dict[str, Any] = field(default_factory=dict)  # typed ServiceSpec per service when zlayer.spec exists
    order: list[str] = field(default_factory=list)


def parse_deployment(text: str) -> ParsedDeployment:
    """Parse and check a spec; raises :class:`SpecError` listing every problem with its field path."""
    from zlayer.spec.loader import parse_spec

    model = parse_spec(text)
    data = model.model_dump(mode="json", exclude_none=True)
    services = {name: service_view(name, body) for name, body in (data.get("services") or {}).items()}
    order = dependency_order(services)
    return ParsedDeployment(str(data["deployment"]), text, data, services, dict(model.services), order)


__all__ = ["ParsedDeployment", "parse_deployment"]
