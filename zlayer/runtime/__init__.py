"""Workload drivers (see ARCHITECTURE.md): the Runtime protocol every driver implements, its data types, and the
registry that picks a service's driver."""

from zlayer.runtime.drivers import Drivers
from zlayer.runtime.protocol import (
    ContainerId,
    ContainerInfo,
    ContainerState,
    ContainerStats,
    ContainerUsage,
    ExecResult,
    ExecSession,
    LogLine,
    ProcessInfo,
    Runtime,
)

__all__ = [
    "ContainerId",
    "ContainerInfo",
    "ContainerState",
    "ContainerStats",
    "ContainerUsage",
    "Drivers",
    "ExecResult",
    "ExecSession",
    "LogLine",
    "ProcessInfo",
    "Runtime",
]
