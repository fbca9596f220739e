"""The node agent: service manager, supervisor, health checks, init actions, dependencies, jobs and cron."""

from __future__ import annotations

from zlayer.agent.hooks import Backend, NetworkHook, ProxyHook
from zlayer.agent.jobs import JobManager
from zlayer.agent.manager import Replica, ServiceManager
from zlayer.agent.specload import ParsedDeployment, parse_deployment
from zlayer.agent.specview import ServiceView, service_view

__all__ = [
    "Backend",
    "JobManager",
    "NetworkHook",
    "ParsedDeployment",
    "ProxyHook",
    "Replica",
    "ServiceManager",
    "ServiceView",
    "parse_deployment",
    "service_view",
]
