# ruff: noqa: F401, F403, F405
"""The deployment spec (``*.zlayer.yml``): models, loading with positions, validation, dumping and JSON Schema.

Everything is imported lazily so ``import zlayer.spec`` is cheap; the first use of a model or of
:func:`load_spec` pays for pydantic and PyYAML.

    >>> spec = load_spec("hello.zlayer.yml")          # raises zlayer.errors.SpecError listing every problem
    >>> spec.services["web"].endpoints[0].port
    8080
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # (typing is imported for the type checker only: `zlayer validate` never loads it)
if TYPE_CHECKING:
    from typing import Any

    from zlayer.spec.api import dump_spec, spec_json_schema, spec_to_dict
    from zlayer.spec.discovery import discover_spec_path
    from zlayer.spec.loader import load_spec, parse_deployable, parse_spec, read_spec_text
    from zlayer.spec.models import *
    from zlayer.spec.problem import Problem
    from zlayer.spec.scalars import (
        CronSchedule,
        format_duration,
        memory_to_bytes,
        parse_cron,
        parse_duration,
        parse_image_ref,
        parse_memory,
    )

_WHERE = {
    "load_spec": "zlayer.spec.loader",
    "parse_spec": "zlayer.spec.loader",
    "parse_deployable": "zlayer.spec.loader",
    "read_spec_text": "zlayer.spec.loader",
    "Problem": "zlayer.spec.problem",
    "dump_spec": "zlayer.spec.api",
    "spec_to_dict": "zlayer.spec.api",
    "spec_json_schema": "zlayer.spec.api",
    "parse_duration": "zlayer.spec.scalars",
    "format_duration": "zlayer.spec.scalars",
    "parse_memory": "zlayer.spec.scalars",
    "memory_to_bytes": "zlayer.spec.scalars",
    "parse_cron": "zlayer.spec.scalars",
    "CronSchedule": "zlayer.spec.scalars",
    "discover_spec_path": "zlayer.spec.discovery",
    "parse_image_ref": "zlayer.spec.scalars",
}


def duration_seconds(text: str) -> float:
    """``"30s"`` → 30.0 (humantime syntax; raises ``ValueError``)."""
    from zlayer.spec.scalars import parse_duration

    return parse_duration(text)


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        models = importlib.import_module("zlayer.spec.models")
        if name in models.__all__:
            return getattr(models, name)
        raise AttributeError(f"module 'zlayer.spec' has no attribute {name!r}")
    return getattr(importlib.import_module(mod), name)


__all__ = [*_WHERE, "duration_seconds", "DeploymentSpec", "ServiceSpec", "EndpointSpec", "ScaleSpec", "HealthSpec"]
