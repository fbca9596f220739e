"""Turn submitted YAML into the deployment the agent runs: name, spec mapping and one ServiceView per service.

The spec package (``zlayer.spec``) does the full validation with field paths; when it is importable it is used, and
its model is kept so the runtime receives the typed service spec. Without it a structural check runs here that still
reports every problem with its field path, so a bad spec never reaches the agent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from zlayer.agent.specview import ServiceView, dependency_order, service_view
from zlayer.errors import SpecError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{2,62}$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, at a field path (``services.web.image.name``)."""

    path: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass
class ParsedDeployment:
    name: str
    yaml: str
    spec: dict[str, Any]
    services: dict[str, ServiceView]
    models: dict[str, Any] = field(default_factory=dict)  # typed ServiceSpec per service when zlayer.spec exists
    order: list[str] = field(default_factory=list)


def _structural(doc: Any) -> list[Problem]:
    problems: list[Problem] = []
    if not isinstance(doc, Mapping):
        return [Problem("", "a deployment spec must be a YAML mapping")]
    if doc.get("version") != "v1":
        problems.append(Problem("version", f'must be "v1" (got {doc.get("version")!r})'))
    name = doc.get("deployment")
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(Problem("deployment", "3-63 letters, digits or '-', starting with a letter or digit"))
    services = doc.get("services") or {}
    if not isinstance(services, Mapping):
        problems.append(Problem("services", "must be a mapping of service name to service"))
        return problems
    for svc, body in services.items():
        at = f"services.{svc}"
        if not isinstance(body, Mapping):
            problems.append(Problem(at, "must be a mapping"))
            continue
        image = body.get("image")
        if not isinstance(image, Mapping):
            problems.append(Problem(f"{at}.image", "required, and must be a mapping with a `name`"))
        elif not image.get("name"):
            problems.append(Problem(f"{at}.image.name", "required"))
        scale = body.get("scale")
        if scale is not None and (not isinstance(scale, Mapping) or "mode" not in scale):
            problems.append(Problem(f"{at}.scale.mode", "required (fixed, adaptive or manual)"))
        rtype = body.get("rtype", "service")
        if rtype not in ("service", "job", "cron"):
            problems.append(Problem(f"{at}.rtype", f"unknown variant {rtype!r}; expected service, job or cron"))
        if rtype == "cron" and not body.get("schedule"):
            problems.append(Problem(f"{at}.schedule", "required for rtype: cron"))
        if body.get("schedule") and rtype != "cron":
            problems.append(Problem(f"{at}.schedule", "only allowed with rtype: cron"))
    return problems


def _with_spec_package(text: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    try:
        from zlayer import spec as spec_pkg
    except ImportError:
        return None
    parse = getattr(spec_pkg, "parse_spec", None)
    if parse is None:
        return None
    model = parse(text)  # raises SpecError with every problem and its path
    data = model.model_dump(mode="json", exclude_none=True) if hasattr(model, "model_dump") else dict(model)
    services = getattr(model, "services", {}) or {}
    return data, dict(services)


def parse_deployment(text: str) -> ParsedDeployment:
    """Parse and check a spec; raises :class:`SpecError` listing every problem with its field path."""
    parsed = _with_spec_package(text)
    if parsed is None:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
            raise SpecError(f"invalid YAML: {getattr(e, 'problem', e)}", where=where) from e
        problems = _structural(doc)
        if problems:
            raise SpecError(f"invalid spec: {len(problems)} problem(s)", problems=problems)
        data, models = dict(doc), dict[str, Any]()
    else:
        data, models = parsed
    services = {name: service_view(name, body) for name, body in (data.get("services") or {}).items()}
    order = dependency_order(services)
    return ParsedDeployment(str(data["deployment"]), text, data, services, models, order)


__all__ = ["ParsedDeployment", "Problem", "parse_deployment"]
