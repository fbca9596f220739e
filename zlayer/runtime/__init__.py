"""Container runtimes (see ARCHITECTURE.md): the Runtime protocol every backend implements, and its data types."""

from zlayer.runtime.protocol import (
    ContainerId,
    ContainerInfo,
    ContainerState,
    ContainerStats,
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
    "ExecResult",
    "ExecSession",
    "LogLine",
    "ProcessInfo",
    "Runtime",
]
