"""What every route needs, handed to the app once by the daemon (``app.state.ctx``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from zlayer.agent.jobs import JobManager
from zlayer.agent.manager import ServiceManager
from zlayer.runtime.protocol import Runtime
from zlayer.state import Store


@dataclass
class ApiContext:
    store: Store
    runtime: Runtime
    manager: ServiceManager
    jobs: JobManager
    runtime_name: str = "linux"
    images: Any = None  # zlayer.images.ImageStore when available
    metrics: Any = None
    token: str = ""
    ready: bool = False
    started: float = field(default_factory=time.monotonic)


def ctx(request: Request) -> ApiContext:
    """FastAPI dependency: the daemon's context."""
    got: ApiContext = request.app.state.ctx
    return got
