"""The node agent: the service manager and its parts (converge, lifecycle, supervisor, health, publish, readopt,
events), jobs and cron, and the hooks through which it tells the node about replicas."""

from __future__ import annotations

from zlayer.agent.hooks import AgentMetrics, Backend, ImageDigests, JobHook, NetworkHook, PortHook, ProxyHook
from zlayer.agent.jobs import JobManager
from zlayer.agent.manager import ServiceManager
from zlayer.agent.replica import Replica

__all__ = [
    "AgentMetrics",
    "Backend",
    "ImageDigests",
    "JobHook",
    "JobManager",
    "NetworkHook",
    "PortHook",
    "ProxyHook",
    "Replica",
    "ServiceManager",
]
