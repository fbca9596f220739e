"""Suite-wide test set-up. Fixture modules live in tests/fixtures/<topic>.py and are all loaded as plugins."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py") if p.stem != "__init__"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests marked `root` exercise real namespaces, mounts and cgroups. CI runs as root, so there they always run;
    # a developer without root sees them skipped with the reason, never silently passing.
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (namespaces, mounts, cgroups); CI runs these as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
