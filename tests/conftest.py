"""Suite-wide test set-up. Fixture modules live in tests/fixtures/<topic>.py and are all loaded as plugins."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py") if p.stem != "__init__"
)

# A suite started in the background by a non-interactive shell inherits SIGINT ignored, and an ignored signal stays
# ignored across exec: the Ctrl-C tests' `zlayer up`, `logs -f` and `build` would never see their SIGINT. A handler
# (unlike SIG_IGN) is reset to the default in every child the tests start.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests marked `root` exercise real namespaces, mounts and cgroups. CI runs as root, so there they always run;
    # a developer without root sees them skipped with the reason, never silently passing.
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (namespaces, mounts, cgroups); CI runs these as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
